//! The PostgreSQL store's reads and upkeep beyond a job's life, against a real server (`pg.rs`),
//! held to what SQLite's store does through the `Twins` of `postgres.rs`, which run each
//! operation on both stores: the figures behind `GET /v1/stats` read back the same for every
//! tenant and for all, and a prune (and its preview) removes the same rows, keeps the history
//! append-only outside itself, and runs beside a node that keeps writing without removing
//! anything newer or deadlocking with it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kiln::job::time::now_ms;
use kiln::job::{Finish, JobSpec, Outcome, RunResult};
use kiln::store::postgres::PgStore;
use kiln::store::{Admission, Attempt, PruneOptions, PrunePreview, PruneReport, Visibility};

use crate::pg::TestDb;
use crate::postgres::{LEASE, Twins, created, open, past_lease, refused, spec, store, success};

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

/// Each store's SQLite file (the Twins' SQLite store).
fn sqlite_file(twins: &Twins) -> PathBuf {
    twins._dir.path().join("kiln.db")
}

/// Prunes both stores as `options` say; the SQLite store runs its prune as `kiln prune` does,
/// from a connection of its own beside the open store. Asserts the reports say the same.
async fn prune_both(
    twins: &Twins,
    options: &PruneOptions,
    sqlite_options: PruneOptions,
) -> PruneReport {
    let pg = twins
        .pg
        .prune(options)
        .await
        .expect("the prune on PostgreSQL");
    let db = sqlite_file(twins);
    let sqlite = tokio::task::spawn_blocking(move || kiln::store::prune(&db, &sqlite_options))
        .await
        .unwrap()
        .expect("the prune on SQLite");
    let said = |r: &PruneReport| (r.prune_id, r.jobs, r.batches, r.events, r.transactions);
    assert_eq!(said(&pg), said(&sqlite), "the reports");
    pg
}

/// What each store's preview says, asserted to be the same.
async fn preview_both(twins: &Twins, cutoff: i64) -> PrunePreview {
    let pg = twins.pg.prune_preview(cutoff).await.unwrap();
    let db = sqlite_file(twins);
    let sqlite = tokio::task::spawn_blocking(move || kiln::store::prune_preview(&db, cutoff))
        .await
        .unwrap()
        .unwrap();
    let said = |p: &PrunePreview| (p.jobs, p.batches, p.events, p.finished_jobs_kept);
    assert_eq!(said(&pg), said(&sqlite), "the previews");
    pg
}

/// The rows a prune may remove or leave, in a form both stores share: each job by its code
/// and status, each event by its job's code and type, each call and file by its job's code, and
/// the prunes table.
const LEFT: [(&str, &str, &str); 5] = [
    (
        "jobs",
        "SELECT convert_from(code, 'UTF8') || ' ' || status FROM jobs ORDER BY 1",
        "SELECT code || ' ' || status FROM jobs ORDER BY 1",
    ),
    (
        "events",
        "SELECT convert_from(j.code, 'UTF8') || ' ' || e.type FROM events e JOIN jobs j ON j.id = e.job_id
         ORDER BY e.id",
        "SELECT j.code || ' ' || e.type FROM events e JOIN jobs j ON j.id = e.job_id ORDER BY e.id",
    ),
    (
        "webhooks",
        "SELECT convert_from(j.code, 'UTF8') || ' ' || w.status FROM webhooks w
         JOIN jobs j ON j.id = w.job_id ORDER BY 1",
        "SELECT j.code || ' ' || w.status FROM webhooks w JOIN jobs j ON j.id = w.job_id ORDER BY 1",
    ),
    (
        "job_files",
        "SELECT convert_from(j.code, 'UTF8') || ' ' || f.path FROM job_files f
         JOIN jobs j ON j.id = f.job_id ORDER BY 1",
        "SELECT j.code || ' ' || f.path FROM job_files f JOIN jobs j ON j.id = f.job_id ORDER BY 1",
    ),
    (
        "prunes",
        "SELECT id || ' ' || jobs || ' ' || batches || ' ' || events || ' '
                || (finished_at IS NOT NULL) || ' ' || coalesce(archive, '-')
         FROM prunes ORDER BY id",
        "SELECT id || ' ' || jobs || ' ' || batches || ' ' || events || ' '
                || iif(finished_at IS NOT NULL, 'true', 'false') || ' ' || coalesce(archive, '-')
         FROM prunes ORDER BY id",
    ),
];

/// Asserts both stores hold the same rows of `LEFT`, and returns PostgreSQL's, by table.
async fn same_rows_left(
    twins: &Twins,
    client: &tokio_postgres::Client,
) -> BTreeMap<&'static str, Vec<String>> {
    let sqlite = rusqlite::Connection::open(sqlite_file(twins)).unwrap();
    let mut left = BTreeMap::new();
    for (table, pg_sql, sqlite_sql) in LEFT {
        let pg: Vec<String> = client
            .query(pg_sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut stmt = sqlite.prepare(sqlite_sql).unwrap();
        let lite: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(pg, lite, "{table} left");
        left.insert(table, pg);
    }
    left
}

#[tokio::test]
async fn a_prune_and_its_preview_remove_what_sqlites_remove_and_leave_the_same_rows() {
    let Some(db) = TestDb::create("ops_prune_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let client = db.client().await;
    // Three old jobs that go (one kept a file), one whose webhook call is still pending, one
    // running, one queued, and one that ends after the cut-off: those four stay.
    let keeping = JobSpec {
        outputs: vec!["out/*.txt".into()],
        ..spec("old-kept")
    };
    let kept = twins.submit(&keeping, &tenant("acme")).await;
    let attempt = twins.claim(kept, LEASE).await;
    let mut end = success(b"out");
    end.result.files.files.push(kiln::job::outputs::OutputFile {
        path: "out/a.txt".into(),
        size: 3,
        content_type: "text/plain".into(),
        contents: b"hi\n".to_vec(),
    });
    assert!(twins.finish(kept, attempt, end).await);
    let failed = twins.submit(&spec("old-failed"), &open()).await;
    let attempt = twins.claim(failed, LEASE).await;
    assert!(twins.finish(failed, attempt, failure()).await);
    let cancelled = twins
        .submit(&spec("old-cancelled"), &tenant("globex"))
        .await;
    twins.cancel(cancelled).await;
    let calling = JobSpec {
        callback_url: Some("https://example.com/hook".into()),
        ..spec("old-hooked")
    };
    let hooked = twins.submit(&calling, &open()).await;
    let attempt = twins.claim(hooked, LEASE).await;
    assert!(twins.finish(hooked, attempt, success(b"")).await);
    let running = twins.submit(&spec("running"), &tenant("acme")).await;
    twins.claim(running, LEASE).await;
    twins.submit(&spec("queued"), &open()).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    let cutoff = now_ms();
    tokio::time::sleep(Duration::from_millis(3)).await;
    let newer = twins
        .submit(
            &JobSpec {
                priority: 10,
                ..spec("newer")
            },
            &tenant("acme"),
        )
        .await;
    let attempt = twins.claim(newer, LEASE).await;
    assert!(twins.finish(newer, attempt, success(b"")).await);

    let preview = preview_both(&twins, cutoff).await;
    assert_eq!(
        (
            preview.jobs,
            preview.batches,
            preview.events,
            preview.finished_jobs_kept
        ),
        (3, 0, 8, 2),
        "three old jobs with their 8 events; the hooked and the newer one stay"
    );
    assert!(!preview.takes_all_history());
    let before = same_rows_left(&twins, &client).await;
    assert_eq!(before["job_files"], ["old-kept out/a.txt"]);
    let ended = twins
        .pg
        .series(Visibility::All, now_ms() / 60_000 - 1, 2, 1)
        .await
        .unwrap();

    let options = PruneOptions {
        chunk: 2,
        pause: Duration::ZERO,
        ..PruneOptions::new(cutoff)
    };
    let report = prune_both(&twins, &options, options.clone()).await;
    assert_eq!((report.jobs, report.events, report.transactions), (3, 8, 2));
    let left = same_rows_left(&twins, &client).await;
    assert_eq!(
        left["jobs"],
        [
            "newer succeeded",
            "old-hooked succeeded",
            "queued queued",
            "running running"
        ]
    );
    assert!(
        left["job_files"].is_empty(),
        "the kept file went with its job"
    );
    assert_eq!(left["webhooks"], ["old-hooked pending"]);
    assert_eq!(left["prunes"], ["1 3 0 8 true -"]);
    assert_eq!(
        left["events"].len(),
        before["events"].len() - 8,
        "the events of the jobs that stay are all there"
    );
    // The figures follow the jobs now, and the history of ends stays as it was.
    for who in viewers() {
        let pg = twins.pg.counts(who.clone()).await.unwrap();
        assert_eq!(
            pg.by_status,
            twins.sqlite.counts(who).await.unwrap().by_status
        );
    }
    let now = twins.pg.counts(Visibility::All).await.unwrap();
    assert_eq!(
        (
            now.by_status["succeeded"],
            now.by_status["failed"],
            now.by_status["cancelled"]
        ),
        (2, 0, 0)
    );
    let minute = now_ms() / 60_000 - 1;
    assert_eq!(
        twins
            .pg
            .series(Visibility::All, minute, 2, 1)
            .await
            .unwrap(),
        ended
    );

    // Once its call is delivered, the hooked job goes too, with the call and its event.
    let taken = twins.claim_webhooks().await;
    assert_eq!(taken.len(), 1);
    assert!(
        twins
            .record_webhook(&taken[0], Attempt::Delivered { status_code: 200 })
            .await
    );
    let preview = preview_both(&twins, cutoff).await;
    assert_eq!(
        (preview.jobs, preview.events, preview.finished_jobs_kept),
        (1, 4, 1)
    );
    let report = prune_both(&twins, &options, options.clone()).await;
    assert_eq!((report.prune_id, report.jobs, report.events), (2, 1, 4));
    let left = same_rows_left(&twins, &client).await;
    assert!(left["webhooks"].is_empty());
    assert_eq!(left["prunes"], ["1 3 0 8 true -", "2 1 0 4 true -"]);
    // Nothing older is left: a third prune finds nothing, and says so.
    let report = prune_both(&twins, &options, options.clone()).await;
    assert_eq!((report.jobs, report.events, report.transactions), (0, 0, 0));
    twins.close();
}

#[tokio::test]
async fn the_events_stay_append_only_outside_a_prune_even_while_one_runs_beside() {
    let Some(db) = TestDb::create("ops_prune_append_only").await else {
        return;
    };
    let kiln = store(&db).await;
    for _ in 0..12 {
        let id = created(kiln.submit(&spec("true"), &open()).await.unwrap());
        let job = kiln.claim("w1", LEASE).await.unwrap().expect("a job");
        assert_eq!(job.id, id);
        assert!(kiln.finish(id, job.attempt, &success(b"")).await.unwrap());
    }
    // A job still queued, which no prune takes: the deletes below always have its event to try,
    // however soon the prune is done with the rest.
    let kept = created(kiln.submit(&spec("true"), &open()).await.unwrap());
    let cutoff = now_ms() + 1;
    let client = db.client().await;
    // A prune of a chunk at a time with pauses between, and meanwhile another session trying
    // to delete events: its marker is never visible outside its own transaction.
    let options = PruneOptions {
        chunk: 1,
        pause: Duration::from_millis(5),
        ..PruneOptions::new(cutoff)
    };
    let pruning = kiln.prune(&options);
    let deleting = async {
        let mut tries = 0;
        for _ in 0..40 {
            let deleted = client
                .execute("DELETE FROM events WHERE job_id = $1", &[&kept])
                .await;
            let (_, message) = refused(deleted);
            assert!(message.contains("append-only"), "{message}");
            tries += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tries
    };
    let (report, tries) = tokio::join!(pruning, deleting);
    assert_eq!(report.unwrap().jobs, 12);
    assert_eq!(tries, 40, "every try refused");
    let left: i64 = client
        .query_one("SELECT count(*) FROM prune_in_progress", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "no marker outlives its transaction");
    kiln.submit(&spec("true"), &open()).await.unwrap();
    for statement in ["DELETE FROM events", "TRUNCATE events"] {
        let (_, message) = refused(client.execute(statement, &[]).await);
        assert!(message.contains("append-only"), "{statement}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_beside_a_node_submitting_and_finishing_jobs_removes_nothing_newer_and_deadlocks_with_nobody()
 {
    let Some(db) = TestDb::create("ops_prune_concurrent").await else {
        return;
    };
    let setup = store(&db).await;
    const OLD: usize = 120;
    for i in 0..OLD {
        let tenant = (i % 2 == 0).then(|| "acme".to_owned());
        let admission = Admission { tenant, ..open() };
        let id = created(setup.submit(&spec("true"), &admission).await.unwrap());
        let job = setup.claim("w1", LEASE).await.unwrap().expect("a job");
        assert_eq!(job.id, id);
        assert!(setup.finish(id, job.attempt, &success(b"")).await.unwrap());
    }
    // Cancelled while it ran, before the cut-off, its run kept while the prune runs: kept
    // first and pruned whole with its file, or pruned first and the late run dropped.
    let stopped = created(setup.submit(&spec("stopped"), &open()).await.unwrap());
    let stopped_run = setup.claim("w1", LEASE).await.unwrap().expect("a job");
    setup.cancel(stopped).await.unwrap();
    // Claimed before the cut-off, ended while the prune runs: it must stay.
    let late = created(setup.submit(&spec("late"), &tenant("acme")).await.unwrap());
    let late_run = setup.claim("w1", LEASE).await.unwrap().expect("a job");
    tokio::time::sleep(Duration::from_millis(3)).await;
    let cutoff = now_ms();
    tokio::time::sleep(Duration::from_millis(3)).await;

    // A node ending jobs of both tenants, whose figures share job_counts rows with those the
    // prune decrements, and the prune, on connections of their own.
    // The prune starts once the node is writing, so that the two overlap.
    let (writing, started) = tokio::sync::oneshot::channel();
    let node = {
        let url = db.url.clone();
        tokio::spawn(async move {
            let node = PgStore::connect(&url, 2).await.unwrap();
            let mut writing = Some(writing);
            let mut made = Vec::new();
            for i in 0..60 {
                let tenant = (i % 2 == 0).then(|| "acme".to_owned());
                let admission = Admission { tenant, ..open() };
                let id = created(node.submit(&spec("new"), &admission).await.expect("submit"));
                let job = node
                    .claim("w2", LEASE)
                    .await
                    .expect("claim")
                    .expect("a job");
                assert_eq!(job.id, id);
                assert!(
                    node.finish(id, job.attempt, &success(b""))
                        .await
                        .expect("finish")
                );
                if let Some(writing) = writing.take() {
                    let _ = writing.send(());
                }
                if i == 10 {
                    let mut run = RunResult::default();
                    run.files.files.push(kiln::job::outputs::OutputFile {
                        path: "out/a.txt".into(),
                        size: 3,
                        content_type: "text/plain".into(),
                        contents: b"hi\n".to_vec(),
                    });
                    let kept = node.keep_cancelled_run(stopped, stopped_run.attempt, &run);
                    kept.await
                        .expect("keep the cancelled run, or find it pruned");
                }
                if i == 20 {
                    let ended = node.finish(late, late_run.attempt, &success(b"")).await;
                    assert!(ended.expect("finish the late job"));
                }
                made.push(id);
            }
            made
        })
    };
    let pruner = {
        let url = db.url.clone();
        tokio::spawn(async move {
            let pruner = PgStore::connect(&url, 1).await.unwrap();
            started.await.expect("the node writes");
            let options = PruneOptions {
                chunk: 7,
                pause: Duration::from_millis(2),
                ..PruneOptions::new(cutoff)
            };
            pruner.prune(&options).await
        })
    };
    let (made, report) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(node, pruner)
    })
    .await
    .expect("neither waits for the other for ever");
    let (made, report) = (made.expect("the node"), report.expect("the pruner"));
    let report = report.expect("the prune, which no deadlock ended");
    assert_eq!(report.jobs as usize, OLD + 1, "every old job went");
    assert_eq!(report.events as usize, OLD * 3 + 3);
    assert!(
        setup.job(stopped).await.unwrap().is_none(),
        "the stopped job went"
    );

    for id in made.iter().chain([&late]) {
        let events = setup
            .job_events(*id, 0)
            .await
            .unwrap()
            .expect("the job stays");
        let kinds: Vec<String> = events.into_iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            ["job.queued", "job.started", "job.succeeded"],
            "{id}"
        );
    }
    let client = db.client().await;
    let old_left: i64 = client
        .query_one(
            "SELECT count(*) FROM jobs WHERE finished_at < $1",
            &[&cutoff],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old_left, 0);
    let rows = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client.query(sql, &[]).await.unwrap();
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect::<Vec<(String, String, i64)>>()
        }
    };
    assert_eq!(
        rows("SELECT tenant, status, jobs FROM job_counts WHERE jobs > 0 ORDER BY 1, 2").await,
        rows("SELECT coalesce(tenant, ''), status, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2")
            .await,
        "job_counts agrees with the jobs left"
    );
    let recorded: (i64, bool) = {
        let r = client
            .query_one("SELECT jobs, finished_at IS NOT NULL FROM prunes", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(recorded, (OLD as i64 + 1, true));
    let files: i64 = client
        .query_one("SELECT count(*) FROM job_files", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        files, 0,
        "the stopped job's file went with it, if it was kept at all"
    );
}

#[tokio::test]
async fn a_prune_takes_a_finished_batch_with_its_cases_and_leaves_a_batch_still_running_whole() {
    let Some(db) = TestDb::create("ops_prune_batches").await else {
        return;
    };
    let kiln = store(&db).await;
    let client = db.client().await;
    // Nothing writes a suite on PostgreSQL yet, so these are written as rows: a suite that
    // finished long ago (its two cases passed, its completion delivered) and one still running
    // (a case done long ago, a case queued).
    client
        .batch_execute(
            "INSERT INTO batches (id, runtime, code, cases, done, passed, created_at, started_at,
                                  finished_at, callback_url)
             VALUES ('00000000-0000-7000-8000-000000000001', 'sh', 'true', 2, 2, 2, 1000, 1000,
                     2000, 'https://example.com/hook'),
                    ('00000000-0000-7000-8000-000000000002', 'sh', 'true', 2, 1, 1, 1000, 1000,
                     NULL, NULL);
             INSERT INTO jobs (id, runtime, code, limits, status, outcome, attempt, created_at,
                               started_at, finished_at, exit_code, batch_id, case_index,
                               case_name, verdict)
             VALUES ('00000000-0000-7000-8000-00000000000a', 'sh', '', '{}', 'succeeded',
                     'success', 1, 1000, 1000, 1500, 0, '00000000-0000-7000-8000-000000000001',
                     0, 'one', 'passed'),
                    ('00000000-0000-7000-8000-00000000000b', 'sh', '', '{}', 'succeeded',
                     'success', 1, 1000, 1000, 2000, 0, '00000000-0000-7000-8000-000000000001',
                     1, 'two', 'passed'),
                    ('00000000-0000-7000-8000-00000000000c', 'sh', '', '{}', 'succeeded',
                     'success', 1, 1000, 1000, 1500, 0, '00000000-0000-7000-8000-000000000002',
                     0, 'one', 'passed');
             INSERT INTO jobs (id, runtime, code, limits, created_at, batch_id, case_index,
                               case_name)
             VALUES ('00000000-0000-7000-8000-00000000000d', 'sh', '', '{}', 1000,
                     '00000000-0000-7000-8000-000000000002', 1, 'two');
             INSERT INTO events (job_id, batch_id, at, type)
             SELECT NULL, id, 1000, 'batch.queued' FROM batches
             UNION ALL
             SELECT id, batch_id, 1000, 'job.queued' FROM jobs
             UNION ALL
             SELECT id, batch_id, 1500, 'job.succeeded' FROM jobs WHERE status = 'succeeded'
             UNION ALL
             SELECT NULL, '00000000-0000-7000-8000-000000000001', 2000, 'batch.completed'
             UNION ALL
             SELECT NULL, '00000000-0000-7000-8000-000000000001', 2100, 'webhook.delivered';
             INSERT INTO webhooks (batch_id, event, url, payload, status, attempts, created_at,
                                   updated_at)
             VALUES ('00000000-0000-7000-8000-000000000001', 'batch.completed',
                     'https://example.com/hook', '{}', 'delivered', 1, 2000, 2100);",
        )
        .await
        .unwrap();
    let preview = kiln.prune_preview(10_000).await.unwrap();
    assert_eq!(
        (
            preview.jobs,
            preview.batches,
            preview.events,
            preview.finished_jobs_kept
        ),
        (2, 1, 7, 1),
        "the finished suite's two cases (4 events) and itself (3 events); the running suite's \
         done case stays"
    );
    let options = PruneOptions {
        chunk: 1,
        pause: Duration::ZERO,
        ..PruneOptions::new(10_000)
    };
    let report = kiln.prune(&options).await.unwrap();
    assert_eq!(
        (
            report.jobs,
            report.batches,
            report.events,
            report.transactions
        ),
        (2, 1, 7, 3)
    );
    let names = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client.query(sql, &[]).await.unwrap();
            rows.iter().map(|r| r.get(0)).collect::<Vec<String>>()
        }
    };
    assert_eq!(
        names("SELECT id::text FROM batches").await,
        ["00000000-0000-7000-8000-000000000002"]
    );
    assert_eq!(
        names("SELECT case_name || ' ' || status FROM jobs ORDER BY case_index").await,
        ["one succeeded", "two queued"]
    );
    assert_eq!(
        names("SELECT type FROM events ORDER BY id").await,
        ["batch.queued", "job.queued", "job.queued", "job.succeeded"]
    );
    assert!(names("SELECT event FROM webhooks").await.is_empty());
    let preview = kiln.prune_preview(10_000).await.unwrap();
    assert_eq!((preview.jobs, preview.batches), (0, 0));
}

/// Columns of an archive whose values depend on when, or in which store, a row was written.
const VOLATILE: &[&str] = &[
    "id",
    "job_id",
    "batch_id",
    "at",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "next_attempt_at",
    "payload",
];

/// An archive's rows, table by table: each row's columns as SQLite quotes them (so a TEXT and
/// a BLOB of the same bytes differ), but for the volatile ones; and the columns' names.
fn archived(path: &std::path::Path) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut tables = BTreeMap::new();
    for table in ["jobs", "batches", "events", "webhooks", "job_files"] {
        let mut columns: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        columns.sort();
        let quoted = columns
            .iter()
            .filter(|c| !VOLATILE.contains(&c.as_str()))
            .map(|c| format!("quote(\"{c}\")"))
            .collect::<Vec<_>>()
            .join(" || ' ' || ");
        let mut rows: Vec<String> = conn
            .prepare(&format!("SELECT {quoted} FROM {table}"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        tables.insert(table.to_owned(), (columns, rows));
    }
    tables
}

#[tokio::test]
async fn an_archive_holds_what_a_prune_removed_as_sqlites_archive_holds_it() {
    let Some(db) = TestDb::create("ops_prune_archive").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    // Output that is not UTF-8 (a BLOB in the archive) and code that is (TEXT), kept files
    // (BLOBs, text or not), flags, a run that failed, a cancel and a delivered call.
    let keeping = JobSpec {
        outputs: vec!["out/*".into()],
        interactive: true,
        ..spec("binary")
    };
    let kept = twins.submit(&keeping, &tenant("acme")).await;
    let attempt = twins.claim(kept, LEASE).await;
    let mut end = success(&[0xff, 0xfe, b'\n']);
    end.result.stdout_truncated = true;
    end.result.files.files.push(kiln::job::outputs::OutputFile {
        path: "out/a.bin".into(),
        size: 2,
        content_type: "application/octet-stream".into(),
        contents: vec![0x00, 0xff],
    });
    end.result.files.files.push(kiln::job::outputs::OutputFile {
        path: "out/b.txt".into(),
        size: 3,
        content_type: "text/plain".into(),
        contents: b"hi\n".to_vec(),
    });
    assert!(twins.finish(kept, attempt, end).await);
    let failed = twins.submit(&spec("failing"), &open()).await;
    let attempt = twins.claim(failed, LEASE).await;
    assert!(twins.finish(failed, attempt, failure()).await);
    let cancelled = twins.submit(&spec("cancelled"), &tenant("globex")).await;
    twins.cancel(cancelled).await;
    let calling = JobSpec {
        callback_url: Some("https://example.com/hook".into()),
        ..spec("hooked")
    };
    let hooked = twins.submit(&calling, &open()).await;
    let attempt = twins.claim(hooked, LEASE).await;
    assert!(twins.finish(hooked, attempt, success(b"")).await);
    let cutoff = now_ms() + 1;
    tokio::time::sleep(Duration::from_millis(2)).await;

    let dir = tempfile::TempDir::new().unwrap();
    let (pg_archive, sqlite_archive) = (dir.path().join("pg.db"), dir.path().join("sqlite.db"));
    let options = |archive: &PathBuf| PruneOptions {
        archive: Some(archive.clone()),
        chunk: 2,
        pause: Duration::ZERO,
        ..PruneOptions::new(cutoff)
    };
    // Twice into the same archive: first all but the hooked job, whose call is pending, then
    // that one once its call is delivered. The archive gathers both.
    let report = prune_both(&twins, &options(&pg_archive), options(&sqlite_archive)).await;
    assert_eq!(report.jobs, 3);
    assert_eq!(report.archive.as_ref(), Some(&pg_archive));
    let taken = twins.claim_webhooks().await;
    assert!(
        twins
            .record_webhook(&taken[0], Attempt::Delivered { status_code: 200 })
            .await
    );
    let report = prune_both(&twins, &options(&pg_archive), options(&sqlite_archive)).await;
    assert_eq!(report.jobs, 1);

    let (pg, sqlite) = (archived(&pg_archive), archived(&sqlite_archive));
    for (table, (columns, rows)) in &sqlite {
        assert_eq!(&pg[table].0, columns, "{table}'s columns");
        assert_eq!(&pg[table].1, rows, "{table}'s rows");
    }
    assert_eq!(pg["jobs"].1.len(), 4);
    assert_eq!(pg["events"].1.len(), 3 + 3 + 2 + 4);
    assert_eq!((pg["webhooks"].1.len(), pg["job_files"].1.len()), (1, 2));
    let conn = rusqlite::Connection::open(&pg_archive).unwrap();
    let (id, stdout): (String, String) = conn
        .query_row(
            "SELECT id, typeof(stdout) FROM jobs WHERE code = 'binary'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(id, kept.pg.to_string(), "ids as SQLite writes them");
    assert_eq!(stdout, "blob");
    let pruned: Vec<String> = db
        .client()
        .await
        .query("SELECT archive FROM prunes ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let name = pg_archive.to_string_lossy().into_owned();
    assert_eq!(pruned, [name.clone(), name]);
    twins.close();
}
