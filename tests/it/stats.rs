//! `GET /v1/stats` and `GET /v1/stats/series` over the real server: the queue now and what
//! ended, by outcome, with latency percentiles; a tenant sees its own jobs only; the figures
//! the database keeps for them stay equal to a count of the jobs through every way a job moves,
//! a prune and a restart included; and the job listing's outcome and time filters.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::auth::{As, create_token};
use crate::util::{Server, sh};

/// Sums `ended` over the steps of a series.
fn ended(series: &Value) -> std::collections::BTreeMap<String, i64> {
    let mut sum = std::collections::BTreeMap::new();
    for step in series["steps"].as_array().expect("steps") {
        for (outcome, n) in step["ended"].as_object().expect("ended") {
            *sum.entry(outcome.clone()).or_default() += n.as_i64().expect("a count");
        }
    }
    sum
}

#[tokio::test]
async fn the_overview_counts_jobs_by_status_and_says_how_long_the_oldest_queued_has_waited() {
    let server = Server::start_with(&["--workers", "0"]).await;
    let (status, empty) = server.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["jobs"]["queued"], 0);
    assert_eq!(empty["oldest_queued_at"], Value::Null);
    assert_eq!(empty["workers"], json!({"total": 0, "busy": 0}));
    assert_eq!(empty["sandbox"], "full");

    let first = server.submit(sh("true")).await;
    server.submit(sh("true")).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let (_, stats) = server.get("/v1/stats").await;
    assert_eq!(stats["jobs"]["queued"], 2, "{stats}");
    assert_eq!(
        stats["jobs"]["succeeded"], 0,
        "every status is listed: {stats}"
    );
    let (_, job) = server.get(&format!("/v1/jobs/{first}")).await;
    assert_eq!(stats["oldest_queued_at"], job["created_at"], "{stats}");
    assert!(
        stats["oldest_queued_ms"].as_i64().expect("an age") >= 50,
        "{stats}"
    );
}

#[tokio::test]
async fn the_series_counts_what_ended_by_outcome_with_wait_and_run_percentiles() {
    let server = Server::start().await;
    for code in ["true", "true", "exit 3", "sleep 0.4"] {
        let id = server.submit(sh(code)).await;
        server.finished(&id).await;
    }
    let (status, series) = server.get("/v1/stats/series?window=600").await;
    assert_eq!(status, StatusCode::OK, "{series}");
    assert_eq!(series["step"], 60);
    let steps = series["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 10, "every step, empty ones too");
    assert_eq!(
        ended(&series),
        [("nonzero_exit".to_owned(), 1), ("success".to_owned(), 3)].into(),
        "{series}"
    );
    let run_p99 = steps
        .iter()
        .filter_map(|s| s["run_ms"]["p99"].as_f64())
        .fold(0.0, f64::max);
    assert!(
        (300.0..=700.0).contains(&run_p99),
        "the 0.4 s job's bucket (300 to 500 ms, or the next): {series}"
    );
    let last = steps.last().expect("a step");
    let now = now_ms();
    let at = humantime::parse_rfc3339(last["at"].as_str().expect("at")).expect("a time");
    let at = at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    assert!(
        (now - 60_000..=now).contains(&at),
        "the last step holds this minute: {last}"
    );

    for bad in [
        "window=90",
        "window=0",
        "step=90",
        "step=0",
        "window=604800&step=60",
        "every=1",
    ] {
        let (status, body) = server.get(&format!("/v1/stats/series?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{bad}: {body}");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

#[tokio::test]
async fn a_tenant_sees_only_its_own_figures_and_an_admin_everyones() {
    let dir = TempDir::new().expect("temp dir");
    let acme = create_token(dir.path(), "acme", false);
    let globex = create_token(dir.path(), "globex", false);
    let admin = create_token(dir.path(), "ops", true);
    let server = Server::start_in(dir, &[]).await;
    let (acme, globex, admin) = (
        As::new(&server, Some(&acme)),
        As::new(&server, Some(&globex)),
        As::new(&server, Some(&admin)),
    );
    for _ in 0..2 {
        let id = acme.submit(sh("true")).await;
        acme.finished(&id).await;
    }
    let id = globex.submit(sh("exit 1")).await;
    globex.finished(&id).await;

    let (_, mine) = acme.get("/v1/stats").await;
    assert_eq!(
        (
            mine["jobs"]["succeeded"].clone(),
            mine["jobs"]["failed"].clone()
        ),
        (json!(2), json!(0)),
        "{mine}"
    );
    let (_, all) = admin.get("/v1/stats").await;
    assert_eq!(
        (
            all["jobs"]["succeeded"].clone(),
            all["jobs"]["failed"].clone()
        ),
        (json!(2), json!(1)),
        "{all}"
    );
    let (_, series) = globex.get("/v1/stats/series").await;
    assert_eq!(
        ended(&series),
        [("nonzero_exit".to_owned(), 1)].into(),
        "{series}"
    );
    let (_, series) = admin.get("/v1/stats/series").await;
    assert_eq!(ended(&series).values().sum::<i64>(), 3, "{series}");
    let anonymous = reqwest::get(format!("{}/v1/stats", server.url))
        .await
        .expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

/// Rows of (tenant, status, jobs).
type Counted = Vec<(String, String, i64)>;

/// What `job_counts` holds, and what counting the jobs gives, each as sorted rows.
fn counts_and_truth(server: &Server) -> (Counted, Counted) {
    let rows = |sql: &str| -> Counted {
        server
            .rows(sql)
            .iter()
            .map(|r| (r[0].text().to_owned(), r[1].text().to_owned(), r[2].int()))
            .collect()
    };
    (
        rows("SELECT tenant, status, jobs FROM job_counts WHERE jobs > 0 ORDER BY 1, 2"),
        rows("SELECT coalesce(tenant, ''), status, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2"),
    )
}

#[tokio::test]
async fn the_kept_figures_equal_a_count_of_the_jobs_through_every_way_a_job_moves() {
    let server = Server::start_with(&["--workers", "1"]).await;
    let slow = server.submit(sh("sleep 30")).await;
    server.running(&slow).await;
    let queued = server.submit(sh("true")).await;
    let (status, _) = server
        .post(&format!("/v1/jobs/{queued}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .post(&format!("/v1/jobs/{slow}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for job in [
        sh("true"),
        sh("exit 2"),
        json!({"runtime": "sh", "code": "sleep 5", "limits": {"wall_ms": 200}}),
    ] {
        let id = server.submit(job).await;
        server.finished(&id).await;
    }
    let (kept, truth) = counts_and_truth(&server);
    assert_eq!(kept, truth);
    assert_eq!(truth.iter().map(|r| r.2).sum::<i64>(), 5);

    let server = server.restart().await;
    let (_, stats) = server.get("/v1/stats").await;
    assert_eq!(
        [
            &stats["jobs"]["cancelled"],
            &stats["jobs"]["succeeded"],
            &stats["jobs"]["failed"],
            &stats["jobs"]["timed_out"]
        ],
        [&json!(2), &json!(1), &json!(1), &json!(1)],
        "{stats}"
    );
    let pruned = server.kiln(&["prune", "--finished-before", "0s", "--yes"]);
    assert!(pruned.status.success(), "{pruned:?}");
    let (kept, truth) = counts_and_truth(&server);
    assert_eq!(
        (kept, truth),
        (vec![], vec![]),
        "pruned jobs leave the counts"
    );
    let (_, series) = server.get("/v1/stats/series").await;
    assert_eq!(
        ended(&series).values().sum::<i64>(),
        5,
        "what ended stays in the history: {series}"
    );
}

#[tokio::test]
async fn the_job_listing_filters_by_outcome_and_by_when_a_job_was_submitted() {
    let server = Server::start().await;
    let early = server.submit(sh("exit 1")).await;
    server.finished(&early).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (_, early_job) = server.get(&format!("/v1/jobs/{early}")).await;
    let late = server.submit(sh("true")).await;
    server.finished(&late).await;
    let (_, late_job) = server.get(&format!("/v1/jobs/{late}")).await;
    let ids = |page: &Value| -> Vec<String> {
        page["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"))
            .iter()
            .map(|j| j["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (_, page) = server.get("/v1/jobs?outcome=nonzero_exit").await;
    assert_eq!(ids(&page), std::slice::from_ref(&early));
    let since = late_job["created_at"].as_str().expect("created_at");
    let (_, page) = server.get(&format!("/v1/jobs?since={since}")).await;
    assert_eq!(
        ids(&page),
        std::slice::from_ref(&late),
        "since is inclusive"
    );
    let (_, page) = server
        .get(&format!("/v1/jobs?until={since}&order=newest"))
        .await;
    assert_eq!(
        ids(&page),
        std::slice::from_ref(&early),
        "until is exclusive"
    );
    let until = early_job["created_at"].as_str().expect("created_at");
    let (_, page) = server
        .get(&format!(
            "/v1/jobs?since={until}&until={since}&status=failed"
        ))
        .await;
    assert_eq!(ids(&page), [early]);
    for bad in [
        "outcome=fine",
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
    ] {
        let (status, body) = server.get(&format!("/v1/jobs?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{bad}: {body}");
    }
}
