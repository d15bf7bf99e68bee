//! kiln started by an ordinary user, as a newcomer who types `kiln serve` without sudo does
//! (issue 16, P1). The sandbox maps a range of host uids, which only root may do: `kiln serve`
//! refuses at once and says what to do, rather than starting and failing every job, and
//! `kiln doctor` says the same. `--sandbox none` still works for development.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::skip;

/// The uid and gid the tests run kiln as: `nobody` on every Linux.
const NOBODY: u32 = 65534;

/// A scratch directory `nobody` may write to, or `None` (after a skip) where this host cannot
/// switch to `nobody`: not root, or no `setpriv` (util-linux).
fn nobodys_dir(test: &str) -> Option<tempfile::TempDir> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "not root: cannot run kiln as another user");
        return None;
    }
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !setpriv.is_ok_and(|out| out.status.success()) {
        skip(test, "no setpriv (util-linux) to run kiln as nobody");
        return None;
    }
    let dir = tempfile::TempDir::new().expect("temp dir");
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    Some(dir)
}

/// `kiln ARGS` as `nobody`, in `dir`, with its own work root there.
fn as_nobody(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            env!("CARGO_BIN_EXE_kiln"),
        ])
        .args(args)
        .arg("--work-root")
        .arg(dir.join("work"))
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("KILN_DB")
        .env_remove("KILN_URL");
    command
}

/// Waits for `child` at most `limit`, killing it after; its exit status and the time it took.
fn wait_at_most(
    child: &mut std::process::Child,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("wait") {
            return (Some(status), start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, start.elapsed())
}

#[test]
fn serve_as_an_ordinary_user_exits_at_once_saying_to_run_as_root_or_pass_sandbox_none() {
    let test = "serve_as_an_ordinary_user_exits_at_once_saying_to_run_as_root_or_pass_sandbox_none";
    let Some(dir) = nobodys_dir(test) else {
        return;
    };
    let mut child = as_nobody(dir.path(), &["serve", "--listen", "127.0.0.1:0"])
        .args(["--db", "kiln.db", "--sandbox-uid-base", "3900000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln as nobody");
    let (status, took) = wait_at_most(&mut child, Duration::from_secs(10));
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let status = status.unwrap_or_else(|| panic!("still serving after {took:?}: {stderr}"));
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        took < Duration::from_secs(3),
        "it refused only after {took:?}"
    );
    for expected in [
        "the sandbox self-test failed",
        "run kiln as root, or pass --sandbox none for development",
    ] {
        assert!(stderr.contains(expected), "{expected:?} in\n{stderr}");
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it never said it listened"
    );
    assert!(
        !dir.path().join("kiln.db").exists(),
        "nothing is created for a server that cannot run jobs"
    );
}

#[test]
fn the_doctor_of_an_ordinary_user_fails_the_sandbox_as_serve_would() {
    let test = "the_doctor_of_an_ordinary_user_fails_the_sandbox_as_serve_would";
    let Some(dir) = nobodys_dir(test) else {
        return;
    };
    let out = as_nobody(dir.path(), &["doctor", "--sandbox-uid-base", "3900020000"])
        .output()
        .expect("run kiln doctor as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let sandbox: Vec<&str> = stdout
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some("sandbox"))
        .collect();
    assert!(
        sandbox
            .iter()
            .any(|line| line.starts_with("FAIL  sandbox   cannot run jobs")),
        "{stdout}"
    );
    assert!(
        !sandbox.iter().any(|line| line.starts_with("ok")),
        "no check contradicts it: {stdout}"
    );
    assert!(
        stdout.contains("fix: run kiln as root, or pass --sandbox none for development"),
        "{stdout}"
    );
}

#[test]
fn an_ordinary_user_may_serve_without_the_sandbox_for_development() {
    let test = "an_ordinary_user_may_serve_without_the_sandbox_for_development";
    let Some(dir) = nobodys_dir(test) else {
        return;
    };
    let mut child = as_nobody(dir.path(), &["serve", "--listen", "127.0.0.1:0"])
        .args(["--db", "kiln.db", "--sandbox", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kiln as nobody");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read its first line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("kiln listening on http://"), "{line:?}");
}
