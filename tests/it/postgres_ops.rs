//! The PostgreSQL store's reads and upkeep beyond a job's life, against a real server (`pg.rs`):
//! the figures behind `GET /v1/stats` read back as SQLite's store reads them, for every tenant
//! and for all, through the `Twins` of `postgres.rs` that run each operation on both stores.

use std::time::Duration;

use kiln::job::time::now_ms;
use kiln::job::{Finish, JobSpec, Outcome, RunResult};
use kiln::store::{Admission, Visibility};

use crate::pg::TestDb;
use crate::postgres::{LEASE, Twins, open, past_lease, spec, success};

fn tenant(name: &str) -> Admission {
    Admission {
        tenant: Some(name.into()),
        ..open()
    }
}

/// A run that exited 1.
fn failure() -> Finish {
    Finish {
        outcome: Outcome::NonzeroExit,
        result: RunResult {
            exit_code: Some(1),
            wall_ms: 40,
            ..RunResult::default()
        },
        error: None,
        judged: None,
    }
}

/// Everyone an overview is read for: an admin, two tenants with jobs, one without.
fn viewers() -> [Visibility; 4] {
    [
        Visibility::All,
        Visibility::Tenant("acme".into()),
        Visibility::Tenant("globex".into()),
        Visibility::Tenant("initech".into()),
    ]
}

#[tokio::test]
async fn the_counts_and_series_of_a_mix_of_jobs_and_tenants_read_back_as_on_sqlite() {
    let Some(db) = TestDb::create("ops_counts_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let once = JobSpec {
        max_attempts: 1,
        ..spec("sleep 60")
    };
    // Every way a job ends, and a job in each of the two statuses before an end, spread over
    // two tenants and none. Each is claimed as the only job queued, so both stores claim it.
    let succeeded = twins.submit(&spec("true"), &acme).await;
    let attempt = twins.claim(succeeded, LEASE).await;
    assert!(twins.finish(succeeded, attempt, success(b"")).await);
    let failed = twins.submit(&spec("false"), &globex).await;
    let attempt = twins.claim(failed, LEASE).await;
    assert!(twins.finish(failed, attempt, failure()).await);
    let open_succeeded = twins.submit(&spec("true"), &open()).await;
    let attempt = twins.claim(open_succeeded, LEASE).await;
    assert!(twins.finish(open_succeeded, attempt, success(b"")).await);
    let cancelled = twins.submit(&spec("sleep 60"), &acme).await;
    twins.cancel(cancelled).await;
    let expired = twins.submit(&once, &globex).await;
    twins.claim(expired, Duration::ZERO).await;
    past_lease().await;
    assert_eq!(twins.rescue_expired().await, 1);
    let running = twins.submit(&spec("sleep 60"), &acme).await;
    twins.claim(running, LEASE).await;
    let queued = twins.submit(&spec("sleep 60"), &globex).await;
    twins.submit(&spec("sleep 60"), &open()).await;

    for who in viewers() {
        let pg = twins.pg.counts(who.clone()).await.unwrap();
        let sqlite = twins.sqlite.counts(who.clone()).await.unwrap();
        assert_eq!(pg.by_status, sqlite.by_status, "{who:?}");
        assert_eq!(
            pg.oldest_queued_at.is_some(),
            sqlite.oldest_queued_at.is_some(),
            "{who:?}"
        );
    }
    let acme_counts = twins.pg.counts(Visibility::Tenant("acme".into())).await;
    let acme_counts = acme_counts.unwrap();
    let figures = |c: &kiln::store::Counts| -> Vec<(String, i64)> {
        c.by_status
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (s.clone(), *n))
            .collect()
    };
    assert_eq!(
        figures(&acme_counts),
        [
            ("cancelled".to_owned(), 1),
            ("running".to_owned(), 1),
            ("succeeded".to_owned(), 1)
        ],
        "a tenant sees its own jobs only"
    );
    assert_eq!(acme_counts.by_status.len(), 7, "every status, 0 for none");
    assert_eq!(acme_counts.oldest_queued_at, None);
    // The oldest queued job of all is globex's, submitted before the open one.
    let queued_at = twins.pg.job(queued.pg).await.unwrap().unwrap().created_at;
    for who in [Visibility::All, Visibility::Tenant("globex".into())] {
        let counts = twins.pg.counts(who).await.unwrap();
        assert_eq!(counts.oldest_queued_at, Some(queued_at));
    }
    let all = twins.pg.counts(Visibility::All).await.unwrap();
    assert_eq!(
        figures(&all),
        [
            ("cancelled".to_owned(), 1),
            ("error".to_owned(), 1),
            ("failed".to_owned(), 1),
            ("queued".to_owned(), 2),
            ("running".to_owned(), 1),
            ("succeeded".to_owned(), 2)
        ]
    );

    // One step wide enough for every end (the minute each store saw it may differ), then
    // minute by minute, whose steps must add up to the same.
    let now_minute = now_ms() / 60_000;
    for who in viewers() {
        let pg = twins
            .pg
            .series(who.clone(), now_minute - 1, 2, 1)
            .await
            .unwrap();
        let sqlite = twins.sqlite.series(who.clone(), now_minute - 1, 2, 1);
        let sqlite = sqlite.await.unwrap();
        assert_eq!(pg.len(), 1);
        assert_eq!(pg[0].start_ms, sqlite[0].start_ms);
        assert_eq!(pg[0].ended, sqlite[0].ended, "{who:?}");
        assert_eq!(pg[0].wait_ms.is_some(), sqlite[0].wait_ms.is_some());
        assert_eq!(pg[0].run_ms.is_some(), sqlite[0].run_ms.is_some());

        let by_minute = twins.pg.series(who.clone(), now_minute - 9, 1, 10).await;
        let by_minute = by_minute.unwrap();
        let sqlite_by_minute = twins.sqlite.series(who.clone(), now_minute - 9, 1, 10);
        let sqlite_by_minute = sqlite_by_minute.await.unwrap();
        let starts = |steps: &[kiln::store::Step]| -> Vec<i64> {
            steps.iter().map(|s| s.start_ms).collect()
        };
        assert_eq!(starts(&by_minute), starts(&sqlite_by_minute));
        assert_eq!(by_minute.len(), 10, "every step, empty ones too");
        let summed = |steps: &[kiln::store::Step]| {
            let mut total = std::collections::BTreeMap::<String, i64>::new();
            for (outcome, n) in steps.iter().flat_map(|s| &s.ended) {
                *total.entry(outcome.clone()).or_default() += n;
            }
            total
        };
        assert_eq!(summed(&by_minute), pg[0].ended, "{who:?}");
    }
    let globex_ended = twins
        .pg
        .series(Visibility::Tenant("globex".into()), now_minute - 1, 2, 1)
        .await
        .unwrap();
    assert_eq!(
        globex_ended[0].ended,
        [
            ("lease_expired".to_owned(), 1),
            ("nonzero_exit".to_owned(), 1)
        ]
        .into(),
    );
    // The runs with a wall time: 12 ms for a success, 40 ms for a failure.
    let acme_run = twins
        .pg
        .series(Visibility::Tenant("acme".into()), now_minute - 1, 2, 1)
        .await
        .unwrap()[0]
        .run_ms
        .expect("a run ended");
    assert!((10.0..=15.0).contains(&acme_run.p50), "{acme_run:?}");
    twins.close();
}

#[tokio::test]
async fn the_percentiles_of_a_series_are_sqlites_to_the_digit_for_the_same_figures() {
    let Some(db) = TestDb::create("ops_series_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    // The same figures written into both stores' tables, at minutes long past so that nothing
    // else falls in them: latencies then come out of the same buckets on both, whatever the
    // timing of a test run, and must give the same percentiles.
    let ended: [(i64, &str, &str, i64); 7] = [
        (999, "acme", "success", 7),
        (1000, "acme", "success", 3),
        (1000, "", "success", 2),
        (1001, "acme", "nonzero_exit", 1),
        (1003, "globex", "success", 5),
        (1003, "globex", "memory_limit", 2),
        (1006, "acme", "success", 1),
    ];
    let latency: [(i64, &str, &str, i64, i64); 11] = [
        (999, "acme", "wait", 5, 7),
        (1000, "acme", "wait", 10, 4),
        (1000, "acme", "wait", 100, 1),
        (1000, "", "wait", 3, 2),
        (1000, "acme", "run", 1000, 3),
        (1001, "acme", "run", i64::MAX, 1),
        (1001, "acme", "wait", 1, 1),
        (1003, "globex", "run", 50, 5),
        (1003, "globex", "run", 70000, 2),
        (1003, "globex", "wait", 2, 7),
        (1006, "acme", "run", 20, 1),
    ];
    let client = db.client().await;
    let sqlite = rusqlite::Connection::open(twins._dir.path().join("kiln.db")).unwrap();
    for (minute, tenant, outcome, jobs) in ended {
        let sql = "INSERT INTO jobs_ended (minute, tenant, outcome, jobs) VALUES ($1, $2, $3, $4)";
        client
            .execute(sql, &[&minute, &tenant, &outcome, &jobs])
            .await
            .unwrap();
        sqlite
            .execute(
                &sql.replace('$', "?"),
                rusqlite::params![minute, tenant, outcome, jobs],
            )
            .unwrap();
    }
    for (minute, tenant, kind, le, jobs) in latency {
        let sql =
            "INSERT INTO job_latency (minute, tenant, kind, le, jobs) VALUES ($1, $2, $3, $4, $5)";
        client
            .execute(sql, &[&minute, &tenant, &kind, &le, &jobs])
            .await
            .unwrap();
        sqlite
            .execute(
                &sql.replace('$', "?"),
                rusqlite::params![minute, tenant, kind, le, jobs],
            )
            .unwrap();
    }
    drop(sqlite);

    for who in viewers() {
        for (from, step, steps) in [(1000, 2, 3), (999, 1, 8), (1000, 7, 1), (990, 3, 2)] {
            let pg = twins.pg.series(who.clone(), from, step, steps).await;
            let sqlite = twins.sqlite.series(who.clone(), from, step, steps).await;
            assert_eq!(
                pg.unwrap(),
                sqlite.unwrap(),
                "{who:?} {from} {step} {steps}"
            );
        }
    }
    let all = twins.pg.series(Visibility::All, 1000, 2, 3).await.unwrap();
    assert_eq!(
        all.iter().map(|s| s.start_ms).collect::<Vec<_>>(),
        [60_000_000, 60_120_000, 60_240_000]
    );
    assert_eq!(
        all[0].ended,
        [("nonzero_exit".to_owned(), 1), ("success".to_owned(), 5)].into(),
        "minutes 1000 and 1001 of every tenant, and nothing of 999"
    );
    assert!(all[1].run_ms.is_some() && all[2].ended.is_empty());
    assert_eq!(
        all[0].run_ms.expect("runs").p99,
        86_400_000.0,
        "the run past a day"
    );
    let initech = twins
        .pg
        .series(Visibility::Tenant("initech".into()), 1000, 2, 3);
    let initech = initech.await.unwrap();
    assert!(
        initech
            .iter()
            .all(|s| s.ended.is_empty() && s.wait_ms.is_none() && s.run_ms.is_none())
    );
    twins.close();
}
