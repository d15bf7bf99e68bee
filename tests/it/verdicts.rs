//! Verdicts that say why, over the real server and sandbox: a failing case's detail carries the
//! program's own error line (a Python traceback's exception, otherwise the last line of its
//! stderr), a program over its memory limit is `memory_limit` however it allocated, the memory
//! it only reserves is never held against it, and `kiln status` of a case shows its verdict and
//! exits by it.

use serde_json::{Value, json};

use crate::batches::{all_cases, finished, submit};
use crate::util::Server;

/// Each case's (verdict, detail), by name.
async fn judged(server: &Server, suite: &Value) -> Vec<(String, String, String)> {
    let accepted = submit(server, suite).await;
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    finished(server, &id).await;
    all_cases(server, &id, 100)
        .await
        .iter()
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
            (text("name"), text("verdict"), text("detail"))
        })
        .collect()
}

fn case<'a>(cases: &'a [(String, String, String)], name: &str) -> (&'a str, &'a str) {
    let found = cases.iter().find(|(n, _, _)| n == name);
    let (_, verdict, detail) = found.unwrap_or_else(|| panic!("no case {name:?} in {cases:?}"));
    (verdict, detail)
}

#[tokio::test]
async fn a_failing_case_says_why_in_the_program_s_own_words() {
    let server = Server::start().await;
    let suite = json!({
        "runtime": "python",
        "cases": [
            {"name": "assertion", "code":
                "def add(a, b):\n    return a - b\n\nassert add(1, 2) == 3, 'expected 3'\n"},
            {"name": "chained", "code":
                "try:\n    {}['k']\nexcept KeyError:\n    raise ValueError('no k\\nat all')\n"},
            {"name": "printed first", "code":
                "import sys\nprint('working', file=sys.stderr)\nraise SystemExit('gave up: no input')\n"},
            {"name": "sh", "runtime": "sh", "code": "echo step one >&2\nfrobnicate --now\n"},
            {"name": "c assert", "runtime": "c", "code":
                "#include <assert.h>\nint main(void) { assert(1 + 1 == 3); return 0; }\n"},
            {"name": "c segfault", "runtime": "c", "code":
                "int main(void) { volatile int *p = 0; return *p; }\n"},
            {"name": "silent", "runtime": "sh", "code": "exit 4"},
        ],
    });
    let cases = judged(&server, &suite).await;
    assert_eq!(
        case(&cases, "assertion"),
        ("runtime_error", "exit code 1: AssertionError: expected 3")
    );
    assert_eq!(
        case(&cases, "chained"),
        ("runtime_error", "exit code 1: ValueError: no k")
    );
    assert_eq!(
        case(&cases, "printed first"),
        ("runtime_error", "exit code 1: gave up: no input")
    );
    assert_eq!(
        case(&cases, "sh"),
        (
            "runtime_error",
            "exit code 127: main.sh: 2: frobnicate: not found"
        )
    );
    let (verdict, detail) = case(&cases, "c assert");
    assert_eq!(verdict, "runtime_error");
    assert!(
        detail.starts_with("killed by signal 6 (SIGABRT): ")
            && detail.ends_with("Assertion `1 + 1 == 3' failed."),
        "{detail}"
    );
    assert_eq!(
        case(&cases, "c segfault"),
        ("runtime_error", "killed by signal 11 (SIGSEGV)")
    );
    assert_eq!(case(&cases, "silent"), ("runtime_error", "exit code 4"));
}

#[tokio::test]
async fn over_its_memory_limit_is_memory_limit_however_the_program_allocates() {
    let server = Server::start().await;
    let limits = json!({"memory_mb": 128, "wall_ms": 20_000});
    let suite = json!({
        "runtime": "python",
        "limits": limits,
        "cases": [
            // 8 GB in one allocation, then filled: the kernel grants it, the cgroup kills it.
            {"name": "one allocation", "code": "x = [0] * 10**9\nprint(len(x))\n"},
            // More than any host has: refused outright, the runtime's MemoryError ends it.
            {"name": "refused allocation", "code": "x = bytearray(1 << 46)\nprint(len(x))\n"},
            // The same 8 GB as a bytes object touched page by page.
            {"name": "gradual", "code": "x = b'x' * (8 << 30)\nprint(len(x))\n"},
            // Address space reserved and never touched, as the JVM and Go do: not memory used.
            {"name": "reserved", "code":
                "import mmap\nm = mmap.mmap(-1, 8 << 30, flags=mmap.MAP_PRIVATE)\n\
                 m[0:2] = b'ok'\nprint(m[0:2].decode())\n",
             "expected_output": "ok"},
            {"name": "within", "code": "x = bytearray(64 << 20)\nprint('fits')\n",
             "expected_output": "fits"},
        ],
    });
    let cases = judged(&server, &suite).await;
    assert_eq!(
        case(&cases, "one allocation").0,
        "memory_limit",
        "{cases:?}"
    );
    assert_eq!(
        case(&cases, "refused allocation"),
        ("memory_limit", "memory limit: MemoryError"),
    );
    assert_eq!(case(&cases, "gradual").0, "memory_limit", "{cases:?}");
    assert_eq!(case(&cases, "reserved"), ("passed", ""));
    assert_eq!(case(&cases, "within"), ("passed", ""));
}

#[tokio::test]
async fn kiln_status_of_a_case_shows_its_verdict_and_exits_by_it() {
    let server = Server::start().await;
    let suite = json!({
        "runtime": "python",
        "code": "print(input())",
        "cases": [
            {"name": "right", "stdin": "1", "expected_output": "1"},
            {"name": "wrong", "stdin": "2", "expected_output": "3"},
        ],
    });
    let accepted = submit(&server, &suite).await;
    let id = accepted["id"].as_str().unwrap_or_default();
    finished(&server, id).await;
    let job_of = |name: &str| {
        accepted["cases"]
            .as_array()
            .and_then(|cases| cases.iter().find(|c| c["name"] == name))
            .and_then(|c| c["job_id"].as_str())
            .unwrap_or_default()
            .to_owned()
    };

    let right = server.kiln(&["status", &job_of("right")]);
    let line = String::from_utf8_lossy(&right.stdout);
    assert_eq!(right.status.code(), Some(0), "{line}");
    assert!(line.contains("case \"right\"  passed"), "{line}");

    // The program exited 0, yet the case failed: the exit code says the case.
    let wrong = server.kiln(&["status", &job_of("wrong")]);
    let line = String::from_utf8_lossy(&wrong.stdout);
    assert_eq!(wrong.status.code(), Some(1), "{line}");
    assert!(
        line.contains("succeeded (success)")
            && line.contains(
                "case \"wrong\"  wrong_answer: line 1, column 1: expected \"3\", got \"2\""
            ),
        "{line}"
    );
}
