//! Running jobs: limits, cancellation, and many jobs at once.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::util::{Server, assert_valid_history, job_processes, processes_of_uids, sh};

#[tokio::test]
async fn a_job_over_its_wall_limit_ends_timed_out_and_leaves_no_process_behind() {
    let server = Server::start().await;
    let id = server
        .submit(json!({
            "runtime": "sh",
            "code": "sleep 60 & setsid sleep 60 & (sleep 60 &) ; echo started; sleep 60",
            "limits": {"wall_ms": 500},
        }))
        .await;
    let running = server.running(&id).await;
    assert_eq!(running["status"], "running");
    let started = Instant::now();
    let job = server.finished(&id).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "killed promptly"
    );
    assert_eq!(job["status"], "timed_out", "{job}");
    assert_eq!(job["outcome"], "wall_time_limit");
    assert_eq!(job["stdout"], "started\n");
    let uids = server.job_uids();
    assert_eq!(
        job_processes(uids),
        Vec::<i32>::new(),
        "processes survived their job"
    );
}

#[tokio::test]
async fn a_cpu_bound_job_over_its_cpu_limit_ends_timed_out() {
    let server = Server::start().await;
    let id = server
        .submit(json!({
            "runtime": "sh",
            "code": "while :; do :; done",
            "limits": {"cpu_ms": 1000, "wall_ms": 20000},
        }))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "timed_out", "{job}");
    assert_eq!(job["outcome"], "cpu_time_limit");
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_output_flood_ends_at_the_cap_without_growing_the_server() {
    let server = Server::start().await;
    let warm = server.submit(sh("true")).await;
    server.finished(&warm).await;
    let before = rss_kb(server.pid());
    let cap = 65_536;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let flood = json!({"runtime": "sh", "code": "yes kiln", "limits": {"output_bytes": cap}});
        ids.push(server.submit(flood).await);
    }
    for id in ids {
        let job = server.finished(&id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["outcome"], "output_limit");
        assert_eq!(job["stdout_truncated"], true);
        assert_eq!(job["stdout"].as_str().unwrap().len(), cap as usize);
    }
    let after = rss_kb(server.pid());
    assert!(
        after < before + 32 * 1024,
        "server RSS grew from {before} kB to {after} kB"
    );
}

#[tokio::test]
async fn cancelling_a_queued_job_ends_it_at_once_without_running_it() {
    let server = Server::start_with(&["--workers", "1"]).await;
    let blocker = server.submit(sh("sleep 30")).await;
    server.running(&blocker).await;
    let queued = server.submit(sh("echo should-not-run")).await;
    let (status, job) = server
        .post(&format!("/v1/jobs/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["attempt"], 0, "never started");
    let types: Vec<_> = server
        .events(&queued)
        .await
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(types, vec![json!("job.queued"), json!("job.cancelled")]);
    server
        .post(&format!("/v1/jobs/{blocker}/cancel"), &json!({}))
        .await;
}

#[tokio::test]
async fn cancelling_a_running_job_kills_its_processes() {
    let server = Server::start().await;
    let id = server.submit(sh("echo $$ > pid; sleep 60")).await;
    server.running(&id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, job) = server
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["outcome"], "cancelled");
    // The worker is free again once the run is over: its processes are dead by then.
    loop {
        let ready = server.get("/readyz").await.1;
        if ready["running"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the run was not stopped: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(job_processes(server.job_uids()), Vec::<i32>::new());
    // Nothing of the run is left in the work root either.
    let work = server.dir.path().join("work");
    let runs_left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| !name.to_string_lossy().starts_with('.'))
        .collect();
    assert!(runs_left.is_empty(), "{runs_left:?}");
    assert_valid_history(&server.events(&id).await);
}

#[tokio::test]
async fn a_cancelled_job_keeps_the_output_and_usage_its_run_produced() {
    let server = Server::start().await;
    let code = "for i in 1 2 3 4 5 6 7; do echo line $i; done; echo oops >&2; sleep 60";
    let id = server.submit(sh(code)).await;
    server.running(&id).await;
    // Until the lines are surely written: the run is seconds from its wall limit still.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, answered) = server
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answered}");
    let (_, stored) = server.get(&format!("/v1/jobs/{id}")).await;
    let lines: String = (1..=7).map(|i| format!("line {i}\n")).collect();
    for job in [&answered, &stored] {
        assert_eq!(job["status"], "cancelled", "{job}");
        assert_eq!(job["outcome"], "cancelled", "{job}");
        assert_eq!(job["stdout"], lines.as_str(), "{job}");
        assert_eq!(job["stderr"], "oops\n", "{job}");
        assert!(job["wall_ms"].as_u64().is_some_and(|ms| ms >= 500), "{job}");
        assert!(job["cpu_ms"].is_u64(), "{job}");
        assert!(job["memory_kb"].as_u64().is_some_and(|kb| kb > 0), "{job}");
        assert_eq!(job["signal"], 9, "killed: {job}");
    }
    // Nothing was added to the history: the cancel wrote the job's end.
    let events = server.events(&id).await;
    assert_valid_history(&events);
    assert_eq!(events.last().expect("events")["type"], "job.cancelled");
}

#[tokio::test]
async fn cancelling_a_finished_job_is_a_conflict() {
    let server = Server::start().await;
    let id = server.submit(sh("true")).await;
    server.finished(&id).await;
    let (status, body) = server
        .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "already_finished");
}

#[tokio::test]
async fn five_hundred_concurrent_jobs_each_end_exactly_once_with_a_valid_history() {
    let server = std::sync::Arc::new(Server::start().await);
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..500 {
        let server = std::sync::Arc::clone(&server);
        submits.spawn(async move {
            let code = if i % 10 == 0 {
                "exit 1".to_owned()
            } else {
                format!("echo {i}")
            };
            (i, server.submit(sh(&code)).await)
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = submits.join_next().await {
        ids.push(joined.unwrap());
    }
    assert_eq!(ids.len(), 500);
    for (i, id) in &ids {
        let job = server.finished(id).await;
        let expected = if i % 10 == 0 { "failed" } else { "succeeded" };
        assert_eq!(job["status"], expected, "{job}");
        if i % 10 != 0 {
            assert_eq!(job["stdout"], format!("{i}\n"));
        }
    }
    // One pass over the global feed: every job has exactly one terminal event, in order.
    let mut by_job: std::collections::HashMap<String, Vec<serde_json::Value>> = Default::default();
    let mut after = 0;
    loop {
        let (_, page) = server
            .get(&format!("/v1/events?after={after}&limit=1000"))
            .await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        for e in events {
            by_job
                .entry(e["job_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(e.clone());
        }
        after = page["next_after"].as_i64().unwrap();
    }
    assert_eq!(by_job.len(), 500);
    for events in by_job.values() {
        assert_valid_history(events);
    }
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_within_the_grace_period() {
    let server = Server::start_with(&["--shutdown-grace-secs", "10"]).await;
    let id = server.submit(sh("sleep 1; echo done")).await;
    server.running(&id).await;
    let (status, dir) = server.terminate();
    assert!(status.success(), "clean exit: {status:?}");
    // Read back by a server that runs nothing, so only the stopped one can have finished it.
    let reader = Server::start_in(dir, &["--workers", "0"]).await;
    let (_, job) = reader.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(
        (&job["status"], &job["stdout"]),
        (&json!("succeeded"), &json!("done\n"))
    );
}

#[tokio::test]
async fn sigterm_requeues_jobs_that_outlast_the_grace_period() {
    let server = Server::start_with(&["--shutdown-grace-secs", "0"]).await;
    let id = server.submit(sh("sleep 60")).await;
    server.running(&id).await;
    let (status, dir) = server.terminate();
    assert!(status.success(), "clean exit: {status:?}");
    let reader = Server::start_in(dir, &["--workers", "0"]).await;
    let (_, job) = reader.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(
        job["status"], "queued",
        "requeued for the next start: {job}"
    );
    let events = reader.events(&id).await;
    assert_eq!(
        events.last().map(|e| &e["type"]),
        Some(&json!("job.retrying"))
    );
}

#[tokio::test]
async fn c_code_is_compiled_in_the_sandbox_then_run_with_its_stdin_and_args() {
    let server = Server::start().await;
    let code = r#"#include <stdio.h>
#include <math.h>
int main(int argc, char **argv) {
    double x;
    if (scanf("%lf", &x) != 1) return 2;
    printf("%.3f %s\n", sqrt(x), argc > 1 ? argv[1] : "-");
    return 0;
}"#;
    let id = server
        .submit(json!({"runtime": "c", "code": code, "stdin": "2", "args": ["arg"]}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"], "1.414 arg\n");
}

#[tokio::test]
async fn c_code_that_does_not_compile_fails_with_the_compilers_message() {
    let server = Server::start().await;
    let id = server
        .submit(json!({"runtime": "c", "code": "int main( { return 0; }"}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["outcome"], "compile_error");
    assert!(job["stderr"].as_str().unwrap().contains("error"), "{job}");
}

#[tokio::test]
async fn a_ready_sandbox_killed_while_it_waits_is_replaced_and_the_next_job_runs_at_once() {
    let server = Server::start().await;
    // The first run has the server keep sandboxes started ahead of the next ones.
    let first = server.submit(sh("true")).await;
    assert_eq!(server.finished(&first).await["status"], "succeeded");
    let inits = server.uid_base..server.uid_base + 1;
    let started = Instant::now();
    let mut ready = processes_of_uids(inits.clone());
    while ready.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no sandbox was kept ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = processes_of_uids(inits.clone());
    }
    for &pid in &ready {
        // SAFETY: signalling a process of this test's own server.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // A signal is delivered when its target next runs: wait until each one has died (a zombie
    // until the server reaps it), as it would have long before a job came in real life.
    let dead = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    };
    while !ready.iter().all(|&pid| dead(pid)) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the killed sandbox did not die"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let next = server.submit(sh("echo ran")).await;
    let job = server.finished(&next).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["stdout"], "ran\n");
    assert_eq!(job["attempt"], 1, "started without a retry: {job}");
}
