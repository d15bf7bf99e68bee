//! The Python client, `clients/python`, is held to its standards by the README's test command:
//! a venv under the target directory gets the client (editable) with its test extras from PyPI,
//! then ruff, `mypy --strict` and its pytest suite run, the suite against this build's real
//! `kiln` binary (`KILN_BIN`), and the package builds into a wheel. The Python side of the
//! client's benchmark, `benches/pyclient.py`, is linted and type-checked with it. A host that
//! cannot make the venv (no python3, no `venv` module, no PyPI) skips, which
//! `KILN_TEST_STRICT=1` turns into a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::util::skip;

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
/// The Python side of `benches/pyclient.rs`, from [`CLIENT`].
const BENCH: &str = "../../benches/pyclient.py";

/// Where the venv, the linters' caches and the wheel go: under `target/`, never in the source.
fn scratch() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-client")
}

/// The venv's `bin/`, made and installed once per test run; why not, if the host cannot.
fn venv() -> Result<&'static Path, String> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = scratch().join("venv");
        if !dir.join("bin/python").exists() {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&dir)
                .output()
                .map_err(|err| format!("cannot run python3: {err}"))?;
            if !made.status.success() {
                return Err(format!(
                    "python3 -m venv failed (is python3-venv installed?): {}",
                    String::from_utf8_lossy(&made.stderr)
                ));
            }
        }
        let bin = dir.join("bin");
        let installed = Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--editable"])
            .arg(format!("{CLIENT}[test]"))
            .output()
            .map_err(|err| format!("cannot run the venv's pip: {err}"))?;
        if !installed.status.success() {
            return Err(format!(
                "pip could not install the client and its test extras: {}",
                String::from_utf8_lossy(&installed.stderr)
            ));
        }
        Ok(bin)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// Runs a tool of the venv in the client's directory, its caches kept out of the source tree.
fn run(bin: &Path, tool: &str, args: &[&str]) -> Output {
    let caches = scratch();
    Command::new(bin.join(tool))
        .args(args)
        .current_dir(CLIENT)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("RUFF_CACHE_DIR", caches.join("ruff-cache"))
        .env("MYPY_CACHE_DIR", caches.join("mypy-cache"))
        .env("KILN_BIN", env!("CARGO_BIN_EXE_kiln"))
        .env_remove("KILN_URL")
        .env_remove("KILN_TOKEN")
        .output()
        .unwrap_or_else(|err| panic!("run {tool}: {err}"))
}

fn assert_ran(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn venv_or_skip(test: &str) -> Option<&'static Path> {
    match venv() {
        Ok(bin) => Some(bin),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

#[test]
fn the_python_client_is_ruff_clean_and_mypy_strict_clean() {
    let Some(bin) = venv_or_skip("the_python_client_is_ruff_clean_and_mypy_strict_clean") else {
        return;
    };
    // The benchmark's Python side is held to the client's own rules, hence its config.
    assert_ran(
        "ruff check",
        &run(
            bin,
            "ruff",
            &["check", "--config", "pyproject.toml", ".", BENCH],
        ),
    );
    assert_ran(
        "ruff format",
        &run(
            bin,
            "ruff",
            &[
                "format",
                "--check",
                "--config",
                "pyproject.toml",
                ".",
                BENCH,
            ],
        ),
    );
    assert_ran(
        "mypy --strict",
        &run(bin, "mypy", &["--strict", "src", "tests", BENCH]),
    );
}

#[test]
fn the_python_clients_tests_pass_against_the_real_server() {
    let Some(bin) = venv_or_skip("the_python_clients_tests_pass_against_the_real_server") else {
        return;
    };
    let out = {
        let _servers = crate::util::HOST_MOUNTS.blocking_read();
        run(bin, "pytest", &["-p", "no:cacheprovider", "-q", "-rfE"])
    };
    assert_ran("pytest", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // pytest exits 0 with every test skipped too: none of these may be.
    assert!(
        stdout.contains(" passed") && !stdout.contains("skipped"),
        "{stdout}"
    );
}

#[test]
fn the_python_client_builds_a_wheel_with_its_type_marker_and_script() {
    let Some(bin) =
        venv_or_skip("the_python_client_builds_a_wheel_with_its_type_marker_and_script")
    else {
        return;
    };
    let wheels = scratch().join("wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    let wheels = wheels.to_str().expect("a UTF-8 path");
    assert_ran(
        "pip wheel",
        &run(
            bin,
            "pip",
            &["wheel", "--quiet", "--no-deps", "-w", wheels, "."],
        ),
    );
    let wheel = std::fs::read_dir(wheels)
        .expect("the wheel directory")
        .map(|entry| entry.expect("an entry").path())
        .find(|path| path.extension().is_some_and(|e| e == "whl"))
        .expect("a .whl file");
    let name = wheel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(name.starts_with("kiln_client-0.1.0-py3-none-any"), "{name}");
    let listing = run(
        bin,
        "python",
        &[
            "-c",
            "import sys, zipfile; w = zipfile.ZipFile(sys.argv[1]); \
             print('\\n'.join(w.namelist())); \
             print(next(w.read(n).decode() for n in w.namelist() if n.endswith('entry_points.txt')))",
            wheel.to_str().expect("a UTF-8 path"),
        ],
    );
    assert_ran("listing the wheel", &listing);
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "kiln/__init__.py",
        "kiln/py.typed",
        "kiln/aio.py",
        "kiln/content.py",
        "kiln/evaluate.py",
    ] {
        assert!(listing.lines().any(|l| l == file), "{file} in\n{listing}");
    }
    assert!(
        listing.contains("kiln-evaluate = kiln.evaluate:main"),
        "{listing}"
    );
    assert!(!listing.contains("tests/"), "{listing}");
}
