//! The sandbox levels a host can offer, as `/readyz` reports them and as jobs experience them.

use serde_json::json;

use crate::util::{Server, UID_SPAN, job_processes};

#[tokio::test]
async fn the_full_level_is_the_default_and_reports_every_namespace() {
    let server = Server::start().await;
    let (_, ready) = server.get("/readyz").await;
    let sandbox = &ready["sandbox"];
    assert_eq!(sandbox["level"], "full", "{ready}");
    assert_eq!(sandbox["seccomp"], true);
    let namespaces = sandbox["namespaces"].as_array().unwrap();
    for ns in ["user", "pid", "mount", "network", "ipc", "uts", "cgroup"] {
        assert!(namespaces.contains(&json!(ns)), "{sandbox}");
    }
    let id = server
        .submit(json!({"runtime": "sh", "code": "id -u; id -g"}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(
        job["stdout"], "1000\n1000\n",
        "uid 1000 inside its user namespace"
    );
}

#[tokio::test]
async fn the_namespaces_level_runs_jobs_as_unprivileged_host_uids_without_a_user_namespace() {
    let server = Server::start_with(&["--sandbox", "namespaces"]).await;
    let (_, ready) = server.get("/readyz").await;
    assert_eq!(ready["sandbox"]["level"], "namespaces", "{ready}");
    assert!(
        !ready["sandbox"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!("user"))
    );

    let id = server
        .submit(json!({"runtime": "python", "code": "import os; print(os.getuid(), os.getpid())"}))
        .await;
    let job = server.finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let stdout = job["stdout"].as_str().unwrap();
    let (uid, pid) = stdout.trim().split_once(' ').unwrap();
    let uid: u32 = uid.parse().unwrap();
    assert!(
        (server.uid_base + 1..server.uid_base + UID_SPAN).contains(&uid),
        "{uid}"
    );
    assert_eq!(pid, "2", "its own pid namespace");

    let escape = json!({
        "runtime": "sh",
        "code": "setsid sleep 60 & sleep 60",
        "limits": {"wall_ms": 300},
    });
    let id = server.submit(escape).await;
    let job = server.finished(&id).await;
    assert_eq!(job["outcome"], "wall_time_limit", "{job}");
    let uids = server.job_uids();
    assert_eq!(job_processes(uids), Vec::<i32>::new());
}
