//! The command-line client against a real server: what scripts rely on (output, exit codes).

use crate::util::Server;

#[tokio::test]
async fn submit_wait_prints_the_output_and_exits_by_the_jobs_success() {
    let server = Server::start().await;
    std::fs::write(
        server.dir.path().join("hello.py"),
        "print('hello from cli')",
    )
    .unwrap();
    std::fs::write(server.dir.path().join("fail.sh"), "echo nope >&2; exit 4").unwrap();

    let ok = server.kiln(&["submit", "hello.py", "--wait"]);
    assert!(ok.status.success(), "{ok:?}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("succeeded") && stdout.contains("hello from cli"),
        "{stdout}"
    );

    let failed = server.kiln(&["submit", "fail.sh", "--wait"]);
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("nope"));
}

#[tokio::test]
async fn submit_prints_the_id_for_scripts_and_status_events_and_cancel_use_it() {
    let server = Server::start().await;
    std::fs::write(server.dir.path().join("slow.sh"), "sleep 30").unwrap();
    let submitted = server.kiln(&["submit", "slow.sh"]);
    assert!(submitted.status.success(), "{submitted:?}");
    let id = String::from_utf8(submitted.stdout)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(id.len(), 36, "just the id: {id:?}");

    let cancelled = server.kiln(&["cancel", &id]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    let status = server.kiln(&["--json", "status", &id]);
    assert_eq!(
        status.status.code(),
        Some(1),
        "a cancelled job is not a success"
    );
    let job: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(job["status"], "cancelled");

    let events = server.kiln(&["events", &id]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(
        text.contains("job.queued") && text.contains("job.cancelled"),
        "{text}"
    );

    let again = server.kiln(&["cancel", &id]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "409 is an error for the client"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already"),
        "{again:?}"
    );
}
