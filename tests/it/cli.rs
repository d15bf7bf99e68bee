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
    let list = flags_in_help(&["list", "--help"]);
    assert!(list.iter().any(|f| f == "--before"), "{list:?}");
    assert!(!list.iter().any(|f| f == "--junit"), "{list:?}");
    let cases = flags_in_help(&["batch", "cases", "--help"]);
    assert!(cases.iter().any(|f| f == "--failed"), "{cases:?}");
    for flag in ["--junit", "--wait", "--idempotency-key"] {
        assert!(!cases.iter().any(|f| f == flag), "{flag} in {cases:?}");
    }
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

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Submits a suite of `cases` cases all running `code`, and returns the batch's id and its
/// cases' job ids.
async fn submit_suite(server: &Server, code: &str, cases: usize) -> (String, Vec<String>) {
    let cases: Vec<_> = (0..cases)
        .map(|i| serde_json::json!({"name": format!("case {i}")}))
        .collect();
    let (status, batch) = server
        .post(
            "/v1/batches",
            &serde_json::json!({"runtime": "sh", "code": code, "cases": cases}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{batch}");
    let jobs = batch["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| case["job_id"].as_str().unwrap().to_owned())
        .collect();
    (batch["id"].as_str().unwrap().to_owned(), jobs)
}

#[tokio::test]
async fn status_events_and_cancel_take_a_batch_id() {
    let server = Server::start().await;
    let (id, _) = submit_suite(&server, "sleep 30", 3).await;

    let status = server.kiln(&["status", &id]);
    assert_eq!(status.status.code(), Some(3), "not done: {status:?}");
    assert!(
        text(&status.stdout).starts_with(&format!("batch {id}: 0 of 3 passed")),
        "{status:?}"
    );
    let events = server.kiln(&["events", &id]);
    assert!(events.status.success(), "{events:?}");
    assert!(text(&events.stdout).contains("job.queued"), "{events:?}");

    let cancelled = server.kiln(&["cancel", &id]);
    assert!(cancelled.status.success(), "{cancelled:?}");
    assert!(
        text(&cancelled.stdout).contains("3 cases cancelled"),
        "{cancelled:?}"
    );
    let waited = server.kiln(&["--json", "status", &id, "--wait", "20"]);
    assert_eq!(
        waited.status.code(),
        Some(1),
        "cancelled cases fail: {waited:?}"
    );
    let batch: serde_json::Value = serde_json::from_slice(&waited.stdout).expect("JSON");
    assert_eq!(batch["done"], true, "{batch}");
    assert_eq!(batch["by_status"]["cancelled"], 3, "{batch}");

    let again = server.kiln(&["cancel", &id]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    let unknown = server.kiln(&["status", "01900000-0000-7000-8000-000000000000"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("no job or batch"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn list_shows_jobs_and_batches_newest_first_with_filters_and_the_next_page() {
    let server = Server::start().await;
    let older = server.submit(crate::util::sh("true")).await;
    let newer = server
        .submit(serde_json::json!({"runtime": "bash", "code": "true"}))
        .await;
    let (batch, cases) = submit_suite(&server, "true", 2).await;

    let all = server.kiln(&["list"]);
    assert!(all.status.success(), "{all:?}");
    let ids: Vec<String> = text(&all.stdout)
        .lines()
        .map(|line| line.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "{all:?}");
    assert_eq!(ids[2..], [newer.clone(), older.clone()], "newest first");
    assert!(
        cases.contains(&ids[0]) && cases.contains(&ids[1]),
        "{ids:?}"
    );

    let page = server.kiln(&["list", "--runtime", "sh", "--limit", "1"]);
    assert_eq!(text(&page.stdout).lines().count(), 1, "{page:?}");
    assert!(text(&page.stderr).contains("--before"), "{page:?}");
    let cases_only = server.kiln(&["list", "--batch", &batch]);
    assert_eq!(
        text(&cases_only.stdout)
            .matches(&format!("batch {batch}"))
            .count(),
        2
    );

    let (_, ended) = server.get(&format!("/v1/jobs/{newer}?wait=30")).await;
    assert_eq!(ended["outcome"], "success", "{ended}");
    let succeeded = server.kiln(&["list", "--outcome", "success", "--runtime", "bash"]);
    assert!(text(&succeeded.stdout).starts_with(&newer), "{succeeded:?}");
    assert_eq!(text(&succeeded.stdout).lines().count(), 1, "{succeeded:?}");
    let future = server.kiln(&["list", "--since", "2999-01-01T00:00:00Z"]);
    assert!(future.status.success(), "{future:?}");
    assert_eq!(text(&future.stdout), "", "nothing was submitted after 2999");
    let past = server.kiln(&["list", "--until", "2000-01-01T00:00:00Z"]);
    assert_eq!(text(&past.stdout), "", "nothing was submitted before 2000");
    let bad_time = server.kiln(&["list", "--since", "yesterday"]);
    assert!(!bad_time.status.success(), "{bad_time:?}");
    assert!(text(&bad_time.stderr).contains("since"), "{bad_time:?}");

    let batches = server.kiln(&["list", "batches"]);
    assert!(text(&batches.stdout).starts_with(&batch), "{batches:?}");
    let refused = server.kiln(&["list", "batches", "--status", "failed"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");

    let json = server.kiln(&["list", "--json", "--status", "queued"]);
    let page: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert!(page["jobs"].is_array(), "{page}");
}

#[tokio::test]
async fn batch_cases_and_report_read_a_batch_back() {
    let server = Server::start().await;
    let (status, batch) = server
        .post(
            "/v1/batches",
            &serde_json::json!({"runtime": "sh", "code": "read x; echo $x",
                "cases": [{"name": "same", "stdin": "a\n", "expected_output": "a\n"},
                          {"name": "other", "stdin": "b\n", "expected_output": "c\n"}]}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{batch}");
    let id = batch["id"].as_str().unwrap().to_owned();
    let (_, done) = server.get(&format!("/v1/batches/{id}?wait=30")).await;
    assert_eq!(done["done"], true, "{done}");

    let cases = server.kiln(&["batch", "cases", &id]);
    assert!(cases.status.success(), "{cases:?}");
    let lines: Vec<String> = text(&cases.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "a header and a line per case: {lines:?}");
    assert!(
        lines[1].contains("passed") && lines[1].contains("same"),
        "{lines:?}"
    );
    assert!(
        lines[2].contains("wrong_answer") && lines[2].contains("other"),
        "{lines:?}"
    );
    let failed = server.kiln(&["batch", "cases", &id, "--failed", "--json"]);
    let page: serde_json::Value = serde_json::from_slice(&failed.stdout).expect("JSON");
    assert_eq!(page["cases"].as_array().map(Vec::len), Some(1), "{page}");

    let report = server.kiln(&["batch", "report", &id]);
    assert!(text(&report.stdout).starts_with("<?xml"), "{report:?}");
    let written = server.kiln(&["batch", "report", &id, "--output", "r.xml"]);
    assert!(written.status.success(), "{written:?}");
    assert!(text(&written.stderr).contains("wrote the JUnit report to r.xml"));
    let file = std::fs::read_to_string(server.dir.path().join("r.xml")).unwrap();
    assert_eq!(file, text(&report.stdout));
}

#[tokio::test]
async fn events_follow_prints_the_feed_as_it_happens() {
    use tokio::io::AsyncBufReadExt;

    let server = Server::start().await;
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["events", "--follow", "--json"])
        .env("KILN_URL", &server.url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run kiln events --follow");
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().expect("stdout")).lines();
    // Started before the job: everything about it comes live.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let id = server.submit(crate::util::sh("true")).await;
    let mut seen = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await
    {
        let event: serde_json::Value = serde_json::from_str(&line).expect("a line of JSON");
        if event["job_id"] == id.as_str() {
            seen.push(event["type"].as_str().unwrap_or("?").to_owned());
            if event["type"] == "job.succeeded" {
                break;
            }
        }
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("job.queued"),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("job.succeeded"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn submit_watch_follows_the_job_it_submitted() {
    let server = Server::start().await;
    std::fs::write(
        server.dir.path().join("two.sh"),
        "echo one; sleep 0.3; echo two; exit 3",
    )
    .unwrap();
    let out = server.kiln(&["submit", "two.sh", "--watch"]);
    assert_eq!(out.status.code(), Some(1), "a failed job: {out:?}");
    assert_eq!(text(&out.stdout), "one\ntwo\n");
    assert!(
        text(&out.stderr).contains("failed (nonzero_exit)"),
        "{out:?}"
    );
}

#[tokio::test]
async fn batch_wait_without_a_terminal_prints_progress_lines() {
    let server = Server::start().await;
    std::fs::write(
        server.dir.path().join("suite.json"),
        r#"{"runtime": "sh", "code": "sleep 0.2", "cases": [{}, {}, {}]}"#,
    )
    .unwrap();
    let out = server.kiln(&["batch", "suite.json", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("1/3 cases done"),
        "the first case's end: {stderr}"
    );
    assert!(
        stderr.contains("3/3 cases done, 3 passed, 0 failed"),
        "the end: {stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "no terminal codes in a log: {stderr:?}"
    );

    // On a terminal the bar takes the lines' place.
    let shown = on_a_terminal(&server, "batch suite.json --wait", &[]);
    assert!(shown.contains("3 of 3 passed"), "{shown:?}");
    assert!(
        !shown.contains("cases done"),
        "no lines under a bar: {shown:?}"
    );
}

#[tokio::test]
async fn submit_wait_on_a_terminal_shows_the_jobs_state_on_a_spinner() {
    let server = Server::start().await;
    std::fs::write(
        server.dir.path().join("slow.sh"),
        "echo '30 warming up' >&3; sleep 3; echo done",
    )
    .unwrap();
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let out = std::process::Command::new("script")
        .args([
            "-qfec",
            &format!("{kiln} submit slow.sh --wait"),
            "/dev/null",
        ])
        .env("KILN_URL", &server.url)
        .current_dir(server.dir.path())
        .output()
        .expect("run script");
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("running  30% warming up"), "{shown}");
    assert!(shown.contains("done"), "{shown}");
}

/// `kiln ARGS` in the server's directory with `input` on its standard input.
fn kiln_with_stdin(server: &Server, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_URL", &server.url)
        .current_dir(server.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kiln exits")
}

#[tokio::test]
async fn a_dash_reads_the_program_or_its_input_from_stdin() {
    let server = Server::start().await;
    std::fs::write(server.dir.path().join("rev.sh"), "rev").unwrap();
    let fed = kiln_with_stdin(
        &server,
        &["submit", "rev.sh", "--stdin", "-", "--wait"],
        "abc\n",
    );
    assert!(fed.status.success(), "{fed:?}");
    assert!(text(&fed.stdout).ends_with("cba\n"), "{fed:?}");

    let code = kiln_with_stdin(
        &server,
        &["submit", "-", "--runtime", "sh", "--wait"],
        "echo piped",
    );
    assert!(code.status.success(), "{code:?}");
    assert!(text(&code.stdout).ends_with("piped\n"), "{code:?}");

    let ignored = kiln_with_stdin(&server, &["submit", "rev.sh"], "not sent");
    assert!(ignored.status.success(), "{ignored:?}");
    assert!(
        text(&ignored.stderr).contains("pass --stdin -"),
        "{ignored:?}"
    );
}

#[tokio::test]
async fn submit_sends_files_priority_attempts_and_a_callback() {
    let server = Server::start().await;
    std::fs::write(server.dir.path().join("cat.sh"), "cat data.txt other").unwrap();
    std::fs::write(server.dir.path().join("data.txt"), "one ").unwrap();
    std::fs::write(server.dir.path().join("x.txt"), "two").unwrap();
    let out = server.kiln(&[
        "--json",
        "submit",
        "cat.sh",
        "--file",
        "data.txt",
        "--file",
        "other=x.txt",
        "--priority",
        "-5",
        "--max-attempts",
        "2",
        "--callback-url",
        "http://127.0.0.1:9/hook",
        "--wait",
    ]);
    assert!(out.status.success(), "{out:?}");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(job["stdout"], "one two", "{job}");
    assert_eq!(job["priority"], -5);
    assert_eq!(job["max_attempts"], 2);
    // The webhook is tried after the job's end, in the background.
    let mut tried = false;
    for _ in 0..100 {
        let events = server.events(job["id"].as_str().unwrap()).await;
        tried = events.iter().any(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("webhook."))
        });
        if tried {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(tried, "the callback was tried");
    let twice = server.kiln(&[
        "submit", "cat.sh", "--file", "data.txt", "--file", "data.txt",
    ]);
    assert_eq!(twice.status.code(), Some(2), "{twice:?}");
}

#[tokio::test]
async fn wait_takes_seconds_or_nothing_on_every_command() {
    let server = Server::start().await;
    std::fs::write(server.dir.path().join("slow.sh"), "sleep 4; echo late").unwrap();
    let started = std::time::Instant::now();
    let gave_up = server.kiln(&["submit", "slow.sh", "--wait", "1"]);
    assert_eq!(gave_up.status.code(), Some(3), "not ended yet: {gave_up:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    assert!(text(&gave_up.stdout).contains("running"), "{gave_up:?}");
    let id = text(&gave_up.stderr)
        .split_whitespace()
        .nth(2)
        .expect("the id first")
        .to_owned();
    let waited = server.kiln(&["status", &id, "--wait"]);
    assert!(waited.status.success(), "to the end: {waited:?}");
    assert!(text(&waited.stdout).contains("late"), "{waited:?}");
}

#[tokio::test]
async fn a_bad_url_a_server_that_is_down_and_one_that_is_not_kiln_get_a_hint() {
    let bare = kiln(&["status", "x", "--url", "127.0.0.1:9"]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(
        text(&bare.stderr).contains("did you mean http://127.0.0.1:9"),
        "{bare:?}"
    );

    let down = kiln(&["status", "x", "--url", "http://127.0.0.1:9"]);
    assert_eq!(down.status.code(), Some(2));
    assert!(
        text(&down.stderr).contains("is `kiln serve` running"),
        "{down:?}"
    );

    // Something else on the port: an HTML page for every request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().flatten().take(1) {
            let mut stream = stream;
            let mut buf = [0; 4096];
            let _ = stream.read(&mut buf);
            let page = "<html><body>Not Found</body></html>";
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    let other = kiln(&["status", "x", "--url", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(other.status.code(), Some(2));
    let stderr = text(&other.stderr);
    assert!(
        stderr.contains("does not look like a kiln server"),
        "{stderr}"
    );
    assert!(!stderr.contains("<html>"), "no page dumped: {stderr}");
}

/// `kiln ARGS` on a real pty (`script`), with `env` set; what the terminal showed.
fn on_a_terminal(server: &Server, args: &str, env: &[(&str, &str)]) -> String {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let mut command = std::process::Command::new("script");
    command
        .args(["-qfec", &format!("{kiln} {args}"), "/dev/null"])
        .env("KILN_URL", &server.url)
        .env_remove("NO_COLOR")
        .current_dir(server.dir.path());
    for (name, value) in env {
        command.env(name, value);
    }
    text(&command.output().expect("run script").stdout)
}

#[tokio::test]
async fn verdicts_are_coloured_on_a_terminal_only_and_never_with_no_color() {
    let server = Server::start().await;
    let id = server.submit(crate::util::sh("true")).await;
    server.finished(&id).await;
    let (batch, _) = submit_suite(&server, "exit 1", 1).await;
    server.get(&format!("/v1/batches/{batch}?wait=30")).await;

    let shown = on_a_terminal(&server, &format!("status {id}"), &[]);
    assert!(
        shown.contains("\x1b[32msucceeded"),
        "green on a terminal: {shown:?}"
    );
    let cases = on_a_terminal(&server, &format!("batch cases {batch}"), &[]);
    assert!(cases.contains("\x1b[31mruntime_error"), "red: {cases:?}");
    let plain = on_a_terminal(&server, &format!("status {id}"), &[("NO_COLOR", "1")]);
    assert!(
        plain.contains("succeeded") && !plain.contains('\x1b'),
        "{plain:?}"
    );
    let piped = server.kiln(&["status", &id]);
    assert!(!text(&piped.stdout).contains('\x1b'), "{piped:?}");
}

/// What bash completes `words` (after `kiln`) to, with kiln's completion script loaded.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let all = std::iter::once("kiln")
        .chain(words.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let current = words.last().copied().unwrap_or("");
    let previous = if words.len() > 1 {
        words[words.len() - 2]
    } else {
        "kiln"
    };
    let script = format!(
        "source <({kiln} completions bash) && COMP_WORDS=({all}) && COMP_CWORD={} && \
         _kiln kiln '{current}' '{previous}' && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words.len()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{out:?}");
    text(&out.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn bash_completes_commands_subcommands_and_flags() {
    assert_eq!(bash_completes(&["li"]), ["list"]);
    assert_eq!(bash_completes(&["batch", "ca"]), ["cancel", "cases"]);
    assert_eq!(bash_completes(&["list", "--st"]), ["--status"]);
}

#[test]
fn completions_for_zsh_and_fish_name_every_command() {
    for (shell, marker) in [("zsh", "#compdef kiln"), ("fish", "complete -c kiln")] {
        let out = kiln(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for command in ["submit", "watch", "list", "batch", "completions"] {
            assert!(script.contains(command), "{command} in the {shell} script");
        }
    }
    assert_eq!(kiln(&["completions", "tcsh"]).status.code(), Some(2));
}

/// Every line of `out` parses as JSON.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

#[tokio::test]
async fn json_is_one_document_per_command_and_one_a_line_for_streams() {
    let server = Server::start().await;
    std::fs::write(server.dir.path().join("hi.sh"), "echo hi").unwrap();
    std::fs::write(
        server.dir.path().join("suite.json"),
        r#"{"runtime": "sh", "code": "true", "cases": [{}]}"#,
    )
    .unwrap();
    let submitted = server.kiln(&["--json", "submit", "hi.sh"]);
    let job: serde_json::Value = serde_json::from_slice(&submitted.stdout).expect("JSON");
    let id = job["id"].as_str().expect("id").to_owned();
    let batch = server.kiln(&["--json", "batch", "suite.json", "--wait"]);
    let batch: serde_json::Value = serde_json::from_slice(&batch.stdout).expect("JSON");
    let batch_id = batch["id"].as_str().expect("id").to_owned();
    server.finished(&id).await;

    for args in [
        vec!["status", &id],
        vec!["status", &batch_id],
        vec!["events", &id],
        vec!["events"],
        vec!["list"],
        vec!["list", "batches"],
        vec!["batch", "cases", &batch_id],
        vec!["batch", "report", &batch_id],
    ] {
        let out = server.kiln(&[&["--json"], &args[..]].concat());
        assert!(out.status.success(), "{args:?}: {out:?}");
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&out.stdout);
        assert!(parsed.is_ok(), "{args:?}: one JSON document: {out:?}");
    }
    let watched = server.kiln(&["--json", "watch", &id]);
    let lines = json_lines(&watched);
    assert_eq!(lines.last().map(|l| l["event"].clone()), Some("job".into()));
    assert_eq!(
        lines.last().map(|l| l["data"]["stdout"].clone()),
        Some("hi\n".into())
    );
    let watched = server.kiln(&["--json", "watch", &batch_id]);
    let lines = json_lines(&watched);
    assert_eq!(
        lines.last().map(|l| l["event"].clone()),
        Some("batch".into())
    );
}

#[tokio::test]
async fn watch_prints_the_stored_output_in_full_when_the_live_view_missed_part_of_it() {
    let server = Server::start().await;
    // More than the server keeps of a run's output for late watchers (1 MiB).
    let id = server
        .submit(serde_json::json!({"runtime": "sh",
            "code": "head -c 1500000 /dev/zero | tr '\\0' x; echo; sleep 1.5; echo end",
            "limits": {"output_bytes": 4_000_000}}))
        .await;
    server.running(&id).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let watched = spawn_watch(&server, &id)
        .wait_with_output()
        .await
        .expect("kiln watch");
    let stdout = text(&watched.stdout);
    let stderr = text(&watched.stderr);
    assert_eq!(watched.status.code(), Some(0), "{stderr}");
    let job = server.finished(&id).await;
    let stored = job["stdout"].as_str().expect("stdout");
    assert_eq!(stored.len(), 1_500_000 + 5);
    assert!(
        stderr.contains("the stored stdout in full"),
        "the gap is said: {stderr}"
    );
    assert!(stdout.ends_with(stored), "then all of it");
}

#[tokio::test]
async fn ctrl_c_on_submit_watch_leaves_the_job_running_and_says_how_to_find_it() {
    let server = Server::start().await;
    std::fs::write(server.dir.path().join("slow.sh"), "sleep 30").unwrap();
    let (id, code, stderr) =
        interrupt_after_submitting(&server, &["submit", "slow.sh", "--watch"]).await;
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains(&format!("`kiln cancel {id}`")), "{stderr}");
    let (_, job) = server.get(&format!("/v1/jobs/{id}")).await;
    assert!(
        job["status"] == "running" || job["status"] == "queued",
        "the job goes on: {job}"
    );
}

#[test]
fn the_version_names_the_release_and_the_commit_it_was_built_from() {
    let out = kiln(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    // Where the source is no git checkout, the build names the commit `unknown`.
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |out| String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        );
    let expected = format!("kiln {} (commit {commit})\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

/// `kiln serve ARGS` in `dir`, with `env`, to its end (`--print-config`, or a refusal).
fn serve_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.arg("serve").args(args).current_dir(dir);
    for var in [
        "KILN_CONFIG",
        "KILN_WORKERS",
        "KILN_MAX_WALL_MS",
        "KILN_LEASE_SECS",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.output().expect("run kiln serve")
}

#[test]
fn serve_takes_a_config_file_under_its_environment_and_flags_and_prints_the_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("kiln.toml"),
        "# kiln's settings\nworkers = 3\nlease-secs = 20\nmax-wall-ms = 60000\n\
         webhook-allow-host = [\"hooks.example\", \"10.0.0.0/8\"]\n",
    )
    .expect("write");
    let out = serve_in(
        dir.path(),
        &["--print-config", "--lease-secs", "9"],
        &[("KILN_CONFIG", "kiln.toml"), ("KILN_MAX_WALL_MS", "1234")],
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for line in [
        "# config file: kiln.toml",
        "workers = 3  # config file",
        "lease-secs = 9  # flag",
        "max-wall-ms = 1234  # KILN_MAX_WALL_MS",
        "webhook-allow-host = [\"hooks.example\", \"10.0.0.0/8\"]  # config file",
        "listen = \"127.0.0.1:8000\"  # default",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line:?} in\n{printed}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert_eq!(left.len(), 1, "it printed and made nothing: {left:?}");

    // What it prints is a config file itself, which gives the same settings.
    std::fs::write(dir.path().join("printed.toml"), printed.as_bytes()).expect("write");
    let again = serve_in(
        dir.path(),
        &["--config", "printed.toml", "--print-config"],
        &[],
    );
    let reprinted = String::from_utf8_lossy(&again.stdout);
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split("  #").next().unwrap_or(l).to_owned())
            .collect()
    };
    assert_eq!(values(&reprinted), values(&printed));
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_bad_value_stops_serve_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (text, said) in [
        (
            "workers = 2\nmax-wal-ms = 5\n",
            "bad.toml:2: unknown key `max-wal-ms`",
        ),
        (
            "\nlisten = \"nowhere:80\"\n",
            "bad.toml:2: invalid value 'nowhere:80' for '--listen",
        ),
        (
            "workers = \"many\"\n",
            "bad.toml:1: invalid value 'many' for '--workers",
        ),
        ("workers = 2\nworkers = 3\n", "bad.toml:2: duplicate key"),
    ] {
        std::fs::write(dir.path().join("bad.toml"), text).expect("write");
        let out = serve_in(dir.path(), &["--config", "bad.toml"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains(said), "{said:?} in {stderr}");
    }
    let out = serve_in(dir.path(), &["--config", "missing.toml"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.toml: cannot read it"), "{stderr}");
    assert!(!dir.path().join("kiln.db").exists(), "nothing was served");
}

#[tokio::test]
async fn a_server_started_with_a_config_file_holds_jobs_to_its_limits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("kiln.toml");
    std::fs::write(&file, "max-wall-ms = 1500\n").expect("write");
    let server = Server::start_with(&["--config", file.to_str().expect("utf-8")]).await;
    let job = serde_json::json!({"runtime": "sh", "code": "true", "limits": {"wall_ms": 2000}});
    let (status, body) = server.post("/v1/jobs", &job).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1500")),
        "{body}"
    );
}
