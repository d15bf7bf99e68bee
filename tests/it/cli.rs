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

/// `kiln …` on its own: no server, no `KILN_URL`.
fn kiln(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env_remove("KILN_URL")
        .env_remove("KILN_TOKEN")
        .output()
        .expect("run kiln")
}

/// The flags a `--help` lists, by their long names.
fn flags_in_help(args: &[&str]) -> Vec<String> {
    let out = kiln(args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|word| word.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_commands_help_lists_only_its_own_flags() {
    let client = ["--url", "--json", "--token"];
    let serve = flags_in_help(&["serve", "--help"]);
    assert!(serve.iter().any(|f| f == "--token-rate"), "{serve:?}");
    for flag in client {
        assert!(!serve.iter().any(|f| f == flag), "{flag} in {serve:?}");
    }
    let status = flags_in_help(&["status", "--help"]);
    for flag in client {
        assert!(status.iter().any(|f| f == flag), "{flag} in {status:?}");
    }
    let doctor = flags_in_help(&["doctor", "--help"]);
    assert!(doctor.iter().any(|f| f == "--url"), "{doctor:?}");
    assert!(
        doctor.iter().any(|f| f == "--sandbox-uid-base"),
        "{doctor:?}"
    );
    assert!(!doctor.iter().any(|f| f == "--token"), "{doctor:?}");
    let token = flags_in_help(&["token", "list", "--help"]);
    assert!(token.iter().any(|f| f == "--json"), "{token:?}");
    assert!(!token.iter().any(|f| f == "--url"), "{token:?}");
}

#[tokio::test]
async fn the_client_flags_work_before_the_subcommand_and_after_it() {
    let server = Server::start().await;
    let id = server.submit(crate::util::sh("true")).await;
    server.finished(&id).await;
    let url = server.url.as_str();
    for args in [
        ["--url", url, "--json", "status", &id],
        ["status", &id, "--url", url, "--json"],
        ["--json", "status", "--url", url, &id],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            // Where the flag given is not: the flag wins over the variable.
            .env("KILN_URL", "http://127.0.0.1:9")
            .output()
            .expect("run kiln");
        assert!(out.status.success(), "{args:?}: {out:?}");
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(job["status"], "succeeded", "{args:?}");
    }
}

/// `kiln watch ID` as a child process whose stdout and stderr the test reads.
fn spawn_watch(server: &Server, id: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["watch", id])
        .env("KILN_URL", &server.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run kiln watch")
}

#[tokio::test]
async fn watch_joining_a_running_job_shows_its_output_from_the_start_once() {
    let server = Server::start().await;
    let id = server
        .submit(crate::util::sh(
            "echo first; echo err-first >&2; sleep 1.5; echo second",
        ))
        .await;
    server.running(&id).await;
    // The first lines are written before the watcher connects.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let watched = spawn_watch(&server, &id)
        .wait_with_output()
        .await
        .expect("kiln watch");
    let stdout = String::from_utf8_lossy(&watched.stdout);
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert_eq!(watched.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout, "first\nsecond\n", "nothing lost, nothing twice");
    assert_eq!(stderr.matches("err-first").count(), 1, "{stderr}");
    assert!(!stderr.contains("--- attempt"), "one attempt: {stderr}");
}

#[tokio::test]
async fn watch_marks_where_a_new_attempt_begins_after_a_restart() {
    use tokio::io::AsyncBufReadExt;

    let server = Server::start().await;
    let id = server
        .submit(crate::util::sh("echo start; sleep 2; echo end"))
        .await;
    let mut watch = spawn_watch(&server, &id);
    let mut stdout = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), stdout.next_line())
        .await
        .expect("output within 20 s")
        .expect("read stdout");
    assert_eq!(first.as_deref(), Some("start"));

    // Same node id: the new server rescues the run at once, as attempt 2.
    let _server = server.restart().await;
    let mut rest = Vec::new();
    while let Some(line) = stdout.next_line().await.expect("read stdout") {
        rest.push(line);
    }
    let watched = watch.wait_with_output().await.expect("kiln watch");
    let stderr = String::from_utf8_lossy(&watched.stderr);
    assert_eq!(watched.status.code(), Some(0), "{stderr}");
    assert_eq!(rest, ["start", "end"], "attempt 2's output, once: {stderr}");
    let marker = stderr
        .lines()
        .find(|line| line.starts_with("--- attempt 2 (previous: "))
        .unwrap_or_else(|| panic!("an attempt marker in {stderr}"));
    assert!(marker.ends_with(") ---"), "{marker}");
}

/// Runs `kiln ARGS` in the server's directory, waits for its stderr to name what it submitted,
/// sends it a real SIGINT, and returns the id it named with its exit code and stderr.
async fn interrupt_after_submitting(
    server: &Server,
    args: &[&str],
) -> (String, Option<i32>, String) {
    use tokio::io::AsyncBufReadExt;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_URL", &server.url)
        .current_dir(server.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run kiln");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), stderr.next_line())
        .await
        .expect("a line within 20 s")
        .expect("read stderr")
        .expect("a first line");
    // `kiln: job ID submitted; ...`: the id comes before any waiting.
    let id = first
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("an id in {first:?}"))
        .to_owned();
    assert!(first.contains("submitted"), "{first}");
    let pid = child.id().expect("pid") as i32;
    unsafe { libc::kill(pid, libc::SIGINT) };
    let mut rest = String::new();
    while let Some(line) = stderr.next_line().await.expect("read stderr") {
        rest.push_str(&line);
        rest.push('\n');
    }
    let status = child.wait().await.expect("kiln exits");
    (id, status.code(), rest)
}

#[tokio::test]
async fn ctrl_c_on_submit_wait_names_the_job_and_how_to_watch_or_cancel_it() {
    let server = Server::start().await;
    std::fs::write(server.dir.path().join("slow.sh"), "sleep 30").unwrap();
    let (id, code, stderr) =
        interrupt_after_submitting(&server, &["submit", "slow.sh", "--wait"]).await;
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("`kiln watch {id}`"))
            && stderr.contains(&format!("`kiln cancel {id}`")),
        "{stderr}"
    );
    let (_, job) = server.get(&format!("/v1/jobs/{id}")).await;
    assert!(
        job["status"] == "running" || job["status"] == "queued",
        "the job goes on: {job}"
    );
}

#[tokio::test]
async fn ctrl_c_on_batch_wait_names_the_batch_and_how_to_watch_or_cancel_it() {
    let server = Server::start().await;
    std::fs::write(
        server.dir.path().join("suite.json"),
        r#"{"runtime": "sh", "code": "sleep 30", "cases": [{}, {}]}"#,
    )
    .unwrap();
    let (id, code, stderr) =
        interrupt_after_submitting(&server, &["batch", "suite.json", "--wait"]).await;
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("`kiln watch {id}`"))
            && stderr.contains(&format!("`kiln cancel {id}`")),
        "{stderr}"
    );
    let (_, batch) = server.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(batch["done"], false, "the batch goes on: {batch}");
}
