//! Suites (batches and their cases) on kiln's PostgreSQL store, against a real server (`pg.rs`):
//! each step is run on PostgreSQL and on SQLite side by side (`Twins`), and both must answer,
//! write and read back the same, events included; and nodes finishing the cases of one suite at
//! once complete it exactly once, without a deadlock.

use std::collections::BTreeSet;
use std::time::Duration;

use kiln::job::batch::{BatchSpec, CaseSpec, SuiteSpec};
use kiln::job::content::Content;
use kiln::job::validate::LimitsRequest;
use kiln::job::verdict::{CompareMode, Judgement, Verdict};
use kiln::job::{BatchId, CallbackShape, Event, Finish, Job, JobId, Outcome, RunResult};
use kiln::store::postgres::{PgError, PgStore};
use kiln::store::{
    Admission, BatchCancel, BatchSubmitted, CancelResult, ClaimedJob, Full, Order, Page,
    StoreError, Subject, Visibility,
};
use serde_json::{Value, json};

use crate::pg::TestDb;
use crate::postgres::{LEASE, Twin, Twins, open, past_lease, spec, store, success};

/// One suite as each backend stored it: its batch and its cases in suite order.
struct Suite {
    pg: BatchId,
    sqlite: BatchId,
    cases: Vec<Twin>,
}

fn suite_spec() -> SuiteSpec {
    SuiteSpec {
        runtime: Some("sh".into()),
        code: Some(Content::from("cat")),
        files: [("shared.txt".to_owned(), Content::from(vec![0xff, 0x00]))].into(),
        limits: LimitsRequest {
            wall_ms: Some(5_000),
            ..LimitsRequest::default()
        },
        compare: CompareMode::Trim,
        pass_at_k: Vec::new(),
        max_attempts: 3,
        idempotency_key: None,
        callback_url: None,
        callback_each_case: false,
        callback_shape: CallbackShape::Kiln,
    }
}

/// A case running the suite's program on `stdin`, with a file of its own.
fn case(name: &str, group: Option<&str>, stdin: &str, expected: Option<&str>) -> CaseSpec {
    CaseSpec {
        name: name.into(),
        group: group.map(Into::into),
        runtime: "sh".into(),
        code: None,
        files: [("case.txt".to_owned(), Content::from(name))].into(),
        stdin: Content::from(stdin),
        args: vec![name.into()],
        expected_output: expected.map(Content::from),
        limits: spec("").limits,
    }
}

/// A run that exited 0 having written `stdout`, judged `verdict`.
fn judged(stdout: &[u8], verdict: Verdict, detail: Option<&str>) -> Finish {
    Finish {
        judged: Some(Judgement {
            verdict,
            detail: detail.map(Into::into),
        }),
        ..success(stdout)
    }
}

/// Stores the suite on both, which must both take it.
async fn submit(twins: &Twins, batch: &BatchSpec, admission: &Admission) -> Suite {
    let pg = twins
        .pg
        .submit_batch(batch.clone(), admission.clone())
        .await;
    let sqlite = twins.sqlite.submit_batch(batch.clone(), admission.clone());
    match (pg.unwrap(), sqlite.await.unwrap()) {
        (
            BatchSubmitted::Created {
                id: pg,
                cases: pg_cases,
            },
            BatchSubmitted::Created {
                id: sqlite,
                cases: sqlite_cases,
            },
        ) => {
            let names = |cases: &[(String, JobId)]| -> Vec<String> {
                cases.iter().map(|(name, _)| name.clone()).collect()
            };
            let given: Vec<String> = batch.cases.iter().map(|c| c.name.clone()).collect();
            assert_eq!(names(&pg_cases), given, "the cases, in suite order");
            assert_eq!(names(&sqlite_cases), given);
            let cases = pg_cases
                .iter()
                .zip(&sqlite_cases)
                .map(|((_, pg), (_, sqlite))| Twin {
                    pg: *pg,
                    sqlite: *sqlite,
                })
                .collect();
            Suite { pg, sqlite, cases }
        }
        other => panic!("expected a new batch on both, got {other:?}"),
    }
}

/// Claims on both, which must hand over the same case with the same program, input and
/// check; PostgreSQL's.
async fn claim(twins: &Twins, suite: &Suite, case: usize, lease: Duration) -> ClaimedJob {
    let pg = twins.pg.claim("node-a/w1", lease).await.unwrap();
    let sqlite = twins.sqlite.claim("node-a/w1", lease).await.unwrap();
    let (pg, sqlite) = (pg.expect("a case"), sqlite.expect("a case"));
    let expected = suite.cases[case];
    assert_eq!((pg.id, sqlite.id), (expected.pg, expected.sqlite));
    assert_eq!(handed(&pg, suite.pg), handed(&sqlite, suite.sqlite));
    pg
}

/// What a worker is handed for a case of `batch`, but for its id.
fn handed(job: &ClaimedJob, batch: BatchId) -> Value {
    let case = job.case.as_ref().expect("handed over as a case");
    assert_eq!(case.batch_id, batch);
    json!({
        "attempt": job.attempt,
        "runtime": job.runtime,
        "code": job.code,
        "stdin": job.stdin,
        "args": job.args,
        "files": job.files,
        "outputs": job.outputs,
        "limits": job.limits,
        "interactive": job.interactive,
        "expected_output": case.expected_output,
        "compare": case.compare,
    })
}

/// The place in the suite of the job `id` names, on the backend whose ids `pg` says.
fn place(suite: &Suite, id: JobId, pg: bool) -> usize {
    suite
        .cases
        .iter()
        .position(|c| id == if pg { c.pg } else { c.sqlite })
        .expect("a case of this suite")
}

/// `value` with the fields that differ between backends by nature (ids, times) replaced: ids
/// by what they name, times by whether they are set.
fn comparable(mut value: Value, suite: &Suite, pg: bool) -> Value {
    let batch = if pg { suite.pg } else { suite.sqlite };
    let Some(fields) = value.as_object_mut() else {
        return value;
    };
    for (name, field) in fields.iter_mut() {
        match name.as_str() {
            "batch_id" | "id" if *field == json!(batch) => *field = json!("the batch"),
            // An event's own id: the same order on both is what the comparison holds.
            "id" if field.is_number() => *field = json!("an event"),
            "job_id" | "id" if field.is_string() => {
                let id: JobId = serde_json::from_value(field.clone()).unwrap();
                *field = json!(format!("case {}", place(suite, id, pg)));
            }
            "created_at" | "started_at" | "finished_at" | "total_ms" | "run_ms" | "at" => {
                *field = json!(!field.is_null())
            }
            _ => {}
        }
    }
    value
}

/// An event as both backends must write it.
fn event(e: Event, suite: &Suite, pg: bool) -> Value {
    let mut value = comparable(serde_json::to_value(e).unwrap(), suite, pg);
    value["data"] = comparable(value["data"].take(), suite, pg);
    value
}

fn job(j: Job, suite: &Suite, pg: bool) -> Value {
    comparable(serde_json::to_value(j).unwrap(), suite, pg)
}

/// Asserts the suite reads back the same on both, whole and by parts (its batch, its
/// history, its cases and their jobs, its groups, its report); PostgreSQL's batch as shown and
/// the types of its events.
async fn same_suite(twins: &Twins, suite: &Suite) -> (Value, Vec<String>) {
    let (pg, sqlite) = (&twins.pg, &twins.sqlite);
    let pg_batch = pg.batch(suite.pg).await.unwrap().expect("the batch");
    let sqlite_batch = sqlite
        .batch(suite.sqlite)
        .await
        .unwrap()
        .expect("the batch");
    let shown = comparable(serde_json::to_value(pg_batch).unwrap(), suite, true);
    let sqlite_shown = comparable(serde_json::to_value(sqlite_batch).unwrap(), suite, false);
    assert_eq!(shown, sqlite_shown, "the batch");
    assert_eq!(
        pg.batch_is_done(suite.pg).await.unwrap(),
        sqlite.batch_is_done(suite.sqlite).await.unwrap()
    );
    assert_eq!(
        pg.batch_is_done(suite.pg).await.unwrap(),
        Some(shown["done"] == true)
    );

    let pg_events = pg.batch_events(suite.pg, 0, 1_000).await.unwrap().unwrap();
    let sqlite_events = sqlite.batch_events(suite.sqlite, 0, 1_000).await;
    let kinds = pg_events.iter().map(|e| e.kind.clone()).collect();
    let completed = pg_events
        .iter()
        .find(|e| e.kind == "batch.completed")
        .map(|e| e.id);
    assert_eq!(
        pg.batch_completed_event(suite.pg).await.unwrap(),
        Some(completed)
    );
    assert_eq!(
        sqlite
            .batch_completed_event(suite.sqlite)
            .await
            .unwrap()
            .map(|id| id.is_some()),
        Some(completed.is_some())
    );
    let pg_events: Vec<Value> = pg_events
        .into_iter()
        .map(|e| event(e, suite, true))
        .collect();
    let sqlite_events: Vec<Value> = sqlite_events
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| event(e, suite, false))
        .collect();
    assert_eq!(pg_events, sqlite_events, "the suite's history");
    // The history a page at a time, after an id, as a follower reads it.
    let ids: Vec<i64> = pg
        .batch_events(suite.pg, 0, 1_000)
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let page = pg.batch_events(suite.pg, ids[0], 2).await.unwrap().unwrap();
    assert_eq!(
        page.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[1..ids.len().min(3)]
    );

    let cases = |pg_cases: Vec<kiln::job::batch::Case>,
                 sqlite_cases: Vec<kiln::job::batch::Case>| {
        let on = |cases: Vec<kiln::job::batch::Case>, pg: bool| -> Vec<Value> {
            cases
                .into_iter()
                .map(|c| comparable(serde_json::to_value(c).unwrap(), suite, pg))
                .collect()
        };
        let pg_cases = on(pg_cases, true);
        assert_eq!(pg_cases, on(sqlite_cases, false), "the cases");
        pg_cases
    };
    for (after, limit) in [(None, 1_000), (None, 2), (Some(1), 2), (Some(1_000), 10)] {
        let pg_cases = pg.batch_cases(suite.pg, after, limit).await.unwrap();
        let sqlite_cases = sqlite.batch_cases(suite.sqlite, after, limit).await;
        let listed = cases(pg_cases.unwrap(), sqlite_cases.unwrap().unwrap());
        let first = after.map_or(0, |a| a as usize + 1);
        let expected = suite.cases.len().saturating_sub(first).min(limit as usize);
        assert_eq!(listed.len(), expected, "after {after:?}, {limit} at most");
    }
    for (i, twin) in suite.cases.iter().enumerate() {
        let pg_job = pg.job(twin.pg).await.unwrap().expect("the case's job");
        let sqlite_job = sqlite.job(twin.sqlite).await.unwrap().expect("the job");
        let shown = job(pg_job, suite, true);
        assert_eq!(shown, job(sqlite_job, suite, false), "case {i}'s job");
        assert_eq!(shown["batch_id"], "the batch");
        let pg_input = pg.job_input(twin.pg).await.unwrap().unwrap();
        let sqlite_input = sqlite.job_input(twin.sqlite).await.unwrap().unwrap();
        assert_eq!(
            (pg_input.code, pg_input.files, pg_input.expected_output),
            (
                sqlite_input.code,
                sqlite_input.files,
                sqlite_input.expected_output
            ),
            "what case {i} was given to run"
        );
    }

    for (after, limit) in [(None, 100), (None, 1), (Some("a".to_owned()), 100)] {
        let pg_groups = pg.batch_groups(suite.pg, after.clone(), limit).await;
        let sqlite_groups = sqlite.batch_groups(suite.sqlite, after.clone(), limit);
        let pg_groups = serde_json::to_value(pg_groups.unwrap()).unwrap();
        let sqlite_groups = serde_json::to_value(sqlite_groups.await.unwrap()).unwrap();
        assert_eq!(pg_groups, sqlite_groups, "the groups after {after:?}");
    }

    let report = |(batch, cases): (kiln::job::batch::Batch, Vec<kiln::job::batch::CaseReport>),
                  pg: bool| {
        let cases: Vec<Value> = cases
            .into_iter()
            .map(|c| {
                json!({
                    "case": comparable(serde_json::to_value(c.case).unwrap(), suite, pg),
                    "expected_output": c.expected_output,
                    "stdout": c.stdout,
                    "stderr": c.stderr,
                })
            })
            .collect();
        json!({
            "batch": comparable(serde_json::to_value(batch).unwrap(), suite, pg),
            "cases": cases,
        })
    };
    for excerpt in [3, 1_000] {
        let pg_report = pg.batch_report(suite.pg, excerpt).await.unwrap().unwrap();
        let sqlite_report = sqlite.batch_report(suite.sqlite, excerpt).await;
        assert_eq!(
            report(pg_report, true),
            report(sqlite_report.unwrap().unwrap(), false),
            "the report with excerpts of {excerpt}"
        );
    }
    (shown, kinds)
}

#[tokio::test]
async fn a_suite_with_groups_and_pass_at_k_is_claimed_judged_and_completed_as_on_sqlite() {
    let Some(db) = TestDb::create("suite_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let batch = BatchSpec {
        suite: SuiteSpec {
            pass_at_k: vec![1, 2],
            ..suite_spec()
        },
        cases: vec![
            case("a-1", Some("a"), "1\n", Some("1\n")),
            case("a-2", Some("a"), "2\n", Some("1\n")),
            case("a-3", Some("a"), "1\n", Some("1\n")),
            case("b-1", Some("b"), "boom", Some("1\n")),
            case("b-2", Some("b"), "héllo wörld\n", Some("héllo wörld\n")),
            case("plain", None, "anything", None),
        ],
    };
    let acme = Admission {
        tenant: Some("acme".into()),
        ..open()
    };
    let suite = submit(&twins, &batch, &acme).await;
    let (shown, kinds) = same_suite(&twins, &suite).await;
    assert_eq!(shown["progress"], json!({"done": 0, "total": 6}));
    assert_eq!(shown["started_at"], false, "no case has started");
    assert_eq!(shown["groups"]["groups"], 2);
    assert_eq!(kinds.len(), 7, "each case's job.queued, then batch.queued");
    assert_eq!(kinds[6], "batch.queued");
    for (who, sees) in [
        (Visibility::Tenant("acme".into()), true),
        (Visibility::Tenant("globex".into()), false),
    ] {
        assert_eq!(twins.pg.batch_visible(suite.pg, &who).await.unwrap(), sees);
        let on_sqlite = twins.sqlite.batch_visible(suite.sqlite, who).await;
        assert_eq!(on_sqlite.unwrap(), sees);
    }

    // Each case is handed over with the suite's program and its own input and files.
    let first = claim(&twins, &suite, 0, LEASE).await;
    assert_eq!(first.code, Content::from("cat"));
    assert_eq!(
        first.files.keys().collect::<Vec<_>>(),
        ["case.txt", "shared.txt"]
    );
    assert_eq!(
        first.case.as_ref().unwrap().expected_output,
        Some(Content::from("1\n"))
    );
    let ends = [
        judged(b"1\n", Verdict::Passed, None),
        judged(
            b"2\n",
            Verdict::WrongAnswer,
            Some("line 1: expected \"1\", got \"2\""),
        ),
        judged(b"1\n", Verdict::Passed, None),
        Finish {
            outcome: Outcome::NonzeroExit,
            result: RunResult {
                exit_code: Some(2),
                stdout: b"\xff\xfeboom".to_vec(),
                ..RunResult::default()
            },
            ..success(b"")
        },
        judged(b"h\xc3\xa9llo w\xc3\xb6rld\n", Verdict::Passed, None),
        judged(b"ab\0cd", Verdict::Passed, None),
    ];
    for (i, end) in ends.into_iter().enumerate() {
        let attempt = if i == 0 {
            first.attempt
        } else {
            claim(&twins, &suite, i, LEASE).await.attempt
        };
        if i == 3 {
            // Half way: a case running, some judged, pass@k estimated from what has ended.
            let (shown, _) = same_suite(&twins, &suite).await;
            assert_eq!(shown["by_status"]["running"], 1);
            assert_eq!(shown["started_at"], true);
        }
        assert!(twins.finish(suite.cases[i], attempt, end).await);
    }
    assert!(
        !twins
            .finish(suite.cases[0], first.attempt, success(b"again"))
            .await,
        "an ended case is not ended twice"
    );

    let (shown, kinds) = same_suite(&twins, &suite).await;
    assert_eq!(shown["done"], true);
    assert_eq!((&shown["passed"], &shown["failed"]), (&json!(4), &json!(2)));
    assert_eq!(shown["by_verdict"]["wrong_answer"], 1);
    assert_eq!(shown["by_verdict"]["runtime_error"], 1, "from the outcome");
    // pass@1 is 2/3 for group a and 1/2 for b.
    let pass_at_1 = shown["groups"]["pass_at_k"]["1"].as_f64().unwrap();
    assert!((pass_at_1 - 7.0 / 12.0).abs() < 1e-12, "{pass_at_1}");
    assert_eq!(kinds.last().unwrap(), "batch.completed");
    assert_eq!(kinds.len(), 7 + 6 * 2 + 1);
    let completed = twins
        .pg
        .batch_events(suite.pg, 0, 100)
        .await
        .unwrap()
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (
            &completed.data["cases"],
            &completed.data["passed"],
            &completed.data["failed"]
        ),
        (&json!(6), &json!(4), &json!(2))
    );
    assert_eq!(completed.tenant.as_deref(), Some("acme"));
    let b1 = twins.pg.job(suite.cases[3].pg).await.unwrap().unwrap();
    assert_eq!(
        (b1.verdict, b1.verdict_detail),
        (Some(Verdict::RuntimeError), None)
    );
    let groups = twins
        .pg
        .batch_groups(suite.pg, None, 10)
        .await
        .unwrap()
        .unwrap();
    let counts: Vec<(&str, u32, u32, u32)> = groups
        .iter()
        .map(|g| (g.name.as_str(), g.cases, g.done, g.passed))
        .collect();
    assert_eq!(counts, [("a", 3, 3, 2), ("b", 2, 2, 1)]);
    let (_, report) = twins.pg.batch_report(suite.pg, 3).await.unwrap().unwrap();
    assert_eq!(report[4].stdout, "hél", "three characters of UTF-8 text");
    assert_eq!(
        report[3].stdout, "\u{fffd}\u{fffd}b",
        "three bytes of the rest"
    );
    assert_eq!(
        report[5].stdout, "ab",
        "text ends at a NUL, as SQLite's substr ends it"
    );
    assert_eq!(
        twins.pg.batch(JobId::now_v7()).await.unwrap().map(|b| b.id),
        None
    );
    assert_eq!(
        twins
            .pg
            .batch_cases(JobId::now_v7(), None, 10)
            .await
            .unwrap()
            .map(|c| c.len()),
        None
    );
    twins.close();
}

#[tokio::test]
async fn a_suite_of_many_programs_hands_each_case_its_own_as_on_sqlite() {
    let Some(db) = TestDb::create("programs_per_case_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let program = |name: &str, runtime: &str, code: &str| CaseSpec {
        runtime: runtime.into(),
        code: Some(Content::from(code)),
        ..case(name, Some(name), "", None)
    };
    let batch = BatchSpec {
        suite: SuiteSpec {
            runtime: None,
            code: None,
            files: Default::default(),
            pass_at_k: vec![1],
            ..suite_spec()
        },
        cases: vec![
            program("py", "python", "print(1)"),
            program("sh", "sh", "echo 1"),
            program("rb", "ruby", "puts 1"),
        ],
    };
    let suite = submit(&twins, &batch, &open()).await;
    let (shown, _) = same_suite(&twins, &suite).await;
    assert_eq!(shown["runtime"], Value::Null, "each case names its own");
    for (i, expected) in batch.cases.iter().enumerate() {
        let claimed = claim(&twins, &suite, i, LEASE).await;
        assert_eq!(
            (&claimed.runtime, Some(&claimed.code)),
            (&expected.runtime, expected.code.as_ref())
        );
        assert_eq!(claimed.files.keys().collect::<Vec<_>>(), ["case.txt"]);
        let end = if i == 1 {
            judged(b"2\n", Verdict::WrongAnswer, Some("not 1"))
        } else {
            judged(b"1\n", Verdict::Passed, None)
        };
        assert!(twins.finish(suite.cases[i], claimed.attempt, end).await);
    }
    let (shown, _) = same_suite(&twins, &suite).await;
    assert_eq!(shown["groups"]["groups"], 3);
    let pass_at_1 = shown["groups"]["pass_at_k"]["1"].as_f64().unwrap();
    assert!((pass_at_1 - 2.0 / 3.0).abs() < 1e-12, "{pass_at_1}");
    let input = twins
        .pg
        .job_input(suite.cases[2].pg)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        input.code,
        Content::from("puts 1"),
        "its own code, not the suite's"
    );
    twins.close();
}

#[tokio::test]
async fn batches_are_listed_a_page_at_a_time_and_by_tenant_as_on_sqlite() {
    let Some(db) = TestDb::create("list_batches_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let tenant = |name: &str| Admission {
        tenant: Some(name.into()),
        ..open()
    };
    let one = BatchSpec {
        suite: suite_spec(),
        cases: vec![case("only", None, "", None)],
    };
    let mut suites = Vec::new();
    for admission in [tenant("acme"), tenant("globex"), tenant("acme"), open()] {
        suites.push(submit(&twins, &one, &admission).await);
    }
    let attempt = claim(&twins, &suites[0], 0, LEASE).await.attempt;
    assert!(
        twins
            .finish(suites[0].cases[0], attempt, success(b""))
            .await
    );

    // A listing as the place of each batch in `suites` and what the summary says of it.
    let on = |listed: Vec<kiln::store::BatchSummary>, pg: bool| -> Vec<(usize, Value)> {
        listed
            .into_iter()
            .map(|summary| {
                let i = suites
                    .iter()
                    .position(|s| summary.id == if pg { s.pg } else { s.sqlite })
                    .expect("a batch of this test");
                let shown = serde_json::to_value(&summary).unwrap();
                (i, comparable(shown, &suites[i], pg))
            })
            .collect()
    };
    let list = |who: Visibility, order, limit| {
        let (twins, on) = (&twins, &on);
        async move {
            let page = Page {
                order,
                cursor: None,
                limit,
            };
            let pg = twins.pg.list_batches(who.clone(), page).await.unwrap();
            let sqlite = twins.sqlite.list_batches(who, page).await.unwrap();
            let (pg, sqlite) = (on(pg, true), on(sqlite, false));
            assert_eq!(pg, sqlite);
            pg
        }
    };
    let places = |listed: Vec<(usize, Value)>| -> Vec<usize> {
        listed.into_iter().map(|(i, _)| i).collect()
    };
    let all = list(Visibility::All, Order::OldestFirst, 100).await;
    assert_eq!(places(all.clone()), [0, 1, 2, 3]);
    assert_eq!(all[0].1["done"], true);
    assert_eq!(all[1].1["done"], false);
    assert_eq!(
        places(list(Visibility::All, Order::NewestFirst, 2).await),
        [3, 2]
    );
    let acme = Visibility::Tenant("acme".into());
    assert_eq!(
        places(list(acme.clone(), Order::OldestFirst, 100).await),
        [0, 2]
    );
    // After a cursor, in both orders.
    let after = |order, cursor| Page {
        order,
        cursor: Some(cursor),
        limit: 100,
    };
    let newer = twins
        .pg
        .list_batches(Visibility::All, after(Order::OldestFirst, suites[1].pg))
        .await
        .unwrap();
    assert_eq!(places(on(newer, true)), [2, 3]);
    let older = twins
        .pg
        .list_batches(acme, after(Order::NewestFirst, suites[2].pg))
        .await
        .unwrap();
    assert_eq!(places(on(older, true)), [0]);
    twins.close();
}

#[tokio::test]
async fn cancelling_a_suite_ends_its_unfinished_cases_and_completes_it_as_on_sqlite() {
    let Some(db) = TestDb::create("cancel_suite_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let batch = BatchSpec {
        suite: suite_spec(),
        cases: (0..4)
            .map(|i| case(&format!("case-{i}"), None, "", None))
            .collect(),
    };
    let suite = submit(&twins, &batch, &open()).await;
    let attempt = claim(&twins, &suite, 0, LEASE).await.attempt;
    assert!(twins.finish(suite.cases[0], attempt, success(b"")).await);
    let running = claim(&twins, &suite, 1, LEASE).await.attempt;

    let pg = twins.pg.cancel_batch(suite.pg).await.unwrap();
    let sqlite = twins.sqlite.cancel_batch(suite.sqlite).await.unwrap();
    assert_eq!(
        pg,
        BatchCancel::Cancelled {
            running: vec![(suite.cases[1].pg, running)]
        },
        "the run to stop is named"
    );
    assert_eq!(
        sqlite,
        BatchCancel::Cancelled {
            running: vec![(suite.cases[1].sqlite, running)]
        }
    );
    assert_eq!(
        twins.pg.cancel_batch(suite.pg).await.unwrap(),
        BatchCancel::AlreadyDone
    );
    assert_eq!(
        twins.sqlite.cancel_batch(suite.sqlite).await.unwrap(),
        BatchCancel::AlreadyDone
    );
    assert_eq!(
        twins.pg.cancel_batch(JobId::now_v7()).await.unwrap(),
        BatchCancel::NotFound
    );
    assert!(
        !twins
            .finish(suite.cases[1], running, success(b"late"))
            .await,
        "the stopped run's end is not the case's"
    );
    let (shown, kinds) = same_suite(&twins, &suite).await;
    assert_eq!(shown["done"], true);
    assert_eq!(
        (&shown["by_verdict"]["cancelled"], &shown["passed"]),
        (&json!(3), &json!(1))
    );
    assert_eq!(
        kinds[5..],
        [
            "job.started",
            "job.succeeded",
            "job.started",
            "job.cancelled",
            "job.cancelled",
            "job.cancelled",
            "batch.completed"
        ]
    );

    // A case cancelled on its own counts into its suite, and the last one ending completes it.
    let pair = BatchSpec {
        suite: suite_spec(),
        cases: vec![
            case("first", None, "", None),
            case("second", None, "", None),
        ],
    };
    let other = submit(&twins, &pair, &open()).await;
    assert_eq!(
        twins.cancel(other.cases[0]).await,
        CancelResult::Cancelled {
            running_attempt: None
        }
    );
    let attempt = claim(&twins, &other, 1, LEASE).await.attempt;
    assert_eq!(
        twins.cancel(other.cases[1]).await,
        CancelResult::Cancelled {
            running_attempt: Some(attempt)
        }
    );
    let (shown, kinds) = same_suite(&twins, &other).await;
    assert_eq!(shown["done"], true);
    assert_eq!(shown["by_verdict"]["cancelled"], 2);
    assert_eq!(kinds.last().unwrap(), "batch.completed");
    twins.close();
}

#[tokio::test]
async fn a_case_whose_lease_runs_out_or_that_is_given_back_ends_with_its_verdict_as_on_sqlite() {
    let Some(db) = TestDb::create("rescued_case_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let batch = BatchSpec {
        suite: SuiteSpec {
            max_attempts: 2,
            ..suite_spec()
        },
        cases: vec![
            case("lost", None, "", None),
            case("given back", None, "", None),
        ],
    };
    let suite = submit(&twins, &batch, &open()).await;
    let (lost, given_back) = (suite.cases[0], suite.cases[1]);
    claim(&twins, &suite, 0, Duration::ZERO).await;
    let first = claim(&twins, &suite, 1, LEASE).await.attempt;
    past_lease().await;
    assert_eq!(twins.rescue_expired().await, 1, "the lapsed lease only");
    let (shown, _) = same_suite(&twins, &suite).await;
    assert_eq!(
        shown["by_status"]["queued"], 1,
        "retried: an attempt remains"
    );

    // Its second run is handed over as the first was, and its lease runs out too.
    let again = claim(&twins, &suite, 0, Duration::ZERO).await;
    assert_eq!(again.attempt, 2);
    past_lease().await;
    assert_eq!(twins.rescue_expired().await, 1);
    let case = twins.pg.job(lost.pg).await.unwrap().unwrap();
    assert_eq!(
        (case.verdict, case.verdict_detail.as_deref()),
        (
            Some(Verdict::Error),
            Some("the worker running it stopped renewing its lease")
        )
    );

    let reason = "the server stopped before it finished";
    assert!(
        twins
            .release(given_back, first, Outcome::Shutdown, reason)
            .await
    );
    let second = claim(&twins, &suite, 1, LEASE).await.attempt;
    assert!(
        twins
            .release(given_back, second, Outcome::Shutdown, reason)
            .await
    );
    let (shown, kinds) = same_suite(&twins, &suite).await;
    assert_eq!(shown["done"], true);
    assert_eq!(shown["by_verdict"]["error"], 2);
    assert_eq!(
        kinds[3..],
        [
            "job.started",
            "job.started",
            "job.retrying",
            "job.started",
            "job.error",
            "job.retrying",
            "job.started",
            "job.error",
            "batch.completed"
        ]
    );
    twins.close();
}

/// The outbox as each backend wrote it, in order: each call's event and body.
async fn outbox(db: &TestDb, twins: &Twins, suites: &[&Suite]) -> Vec<Value> {
    let find = |id: JobId, pg: bool| -> usize {
        suites
            .iter()
            .position(|s| {
                s.cases
                    .iter()
                    .any(|c| id == if pg { c.pg } else { c.sqlite })
            })
            .expect("a case of these suites")
    };
    let body = |event: String, payload: &str, pg: bool| -> Value {
        let mut payload: Value = serde_json::from_str(payload).unwrap();
        let suite = if let Some(job) = payload.get("job") {
            let id: JobId = serde_json::from_value(job["id"].clone()).unwrap();
            suites[find(id, pg)]
        } else {
            let id: BatchId = serde_json::from_value(payload["batch"]["id"].clone()).unwrap();
            suites
                .iter()
                .find(|s| id == if pg { s.pg } else { s.sqlite })
                .expect("a batch of these")
        };
        for part in ["job", "batch"] {
            if let Some(value) = payload.get_mut(part) {
                *value = comparable(value.take(), suite, pg);
            }
        }
        json!({"event": event, "payload": payload})
    };
    let pg: Vec<Value> = db
        .client()
        .await
        .query("SELECT event, payload::text FROM webhooks ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| body(r.get(0), r.get::<_, &str>(1), true))
        .collect();
    let conn = rusqlite::Connection::open(twins._dir.path().join("kiln.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT event, payload FROM webhooks ORDER BY id")
        .unwrap();
    let sqlite: Vec<Value> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (event, payload) = r.unwrap();
            body(event, &payload, false)
        })
        .collect();
    assert_eq!(pg, sqlite, "the outbox");
    pg
}

#[tokio::test]
async fn a_suite_completing_writes_its_webhook_with_the_batch_as_on_sqlite() {
    let Some(db) = TestDb::create("suite_webhook_as_sqlite").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let reported = BatchSpec {
        suite: SuiteSpec {
            callback_url: Some("https://example.com/suite".into()),
            callback_each_case: true,
            ..suite_spec()
        },
        cases: vec![case("one", None, "", None), case("two", None, "", None)],
    };
    // Judge0's clients are told of each submission, never of the suite.
    let judge0 = BatchSpec {
        suite: SuiteSpec {
            callback_url: Some("https://example.com/judge0".into()),
            callback_each_case: true,
            callback_shape: CallbackShape::Judge0,
            ..suite_spec()
        },
        cases: vec![case("submission", None, "", None)],
    };
    let first = submit(&twins, &reported, &open()).await;
    let second = submit(&twins, &judge0, &open()).await;
    let attempt = claim(&twins, &first, 0, LEASE).await.attempt;
    assert!(twins.finish(first.cases[0], attempt, success(b"")).await);
    let attempt = claim(&twins, &first, 1, LEASE).await.attempt;
    let failed = judged(b"", Verdict::WrongAnswer, Some("nothing written"));
    assert!(twins.finish(first.cases[1], attempt, failed).await);
    let attempt = claim(&twins, &second, 0, LEASE).await.attempt;
    assert!(twins.finish(second.cases[0], attempt, success(b"")).await);

    let calls = outbox(&db, &twins, &[&first, &second]).await;
    let events: Vec<&Value> = calls.iter().map(|c| &c["event"]).collect();
    assert_eq!(
        events,
        [
            "job.succeeded",
            "job.succeeded",
            "batch.completed",
            "job.succeeded"
        ]
    );
    let batch = &calls[2]["payload"]["batch"];
    assert_eq!(
        (&batch["id"], &batch["done"], &batch["passed"]),
        (&json!("the batch"), &json!(true), &json!(1)),
        "the batch as it completed"
    );
    assert_eq!(calls[1]["payload"]["job"]["verdict"], "wrong_answer");
    let (_, kinds) = same_suite(&twins, &first).await;
    assert_eq!(kinds.last().unwrap(), "batch.completed");
    same_suite(&twins, &second).await;

    // The deliverer takes the batch's call as any other, about the batch.
    let taken = twins.claim_webhooks().await;
    assert_eq!(taken.len(), 4);
    let about: Vec<Subject> = taken.iter().map(|d| d.about).collect();
    assert_eq!(about[2], Subject::Batch(first.pg));
    assert_eq!(about[3], Subject::Job(second.cases[0].pg));
    assert_eq!(taken[3].shape, CallbackShape::Judge0);
    twins.close();
}

/// Rows in each of the tables a suite writes, on each backend: what a refusal must not change.
async fn written(db: &TestDb, twins: &Twins) -> (Vec<i64>, Vec<i64>) {
    let tables = ["batches", "jobs", "events", "webhooks"];
    let client = db.client().await;
    let mut pg = Vec::new();
    for table in tables {
        let sql = format!("SELECT count(*) FROM {table}");
        pg.push(client.query_one(&sql, &[]).await.unwrap().get(0));
    }
    let conn = rusqlite::Connection::open(twins._dir.path().join("kiln.db")).unwrap();
    let sqlite = tables
        .iter()
        .map(|table| {
            let sql = format!("SELECT count(*) FROM {table}");
            conn.query_row(&sql, [], |r| r.get(0)).unwrap()
        })
        .collect();
    assert_eq!(pg, sqlite, "rows of {tables:?}");
    (pg, sqlite)
}

#[tokio::test]
async fn a_suite_that_cannot_be_stored_whole_is_refused_leaving_nothing_written_as_on_sqlite() {
    let Some(db) = TestDb::create("suite_all_or_nothing").await else {
        return;
    };
    let twins = Twins::new(&db).await;
    let three = BatchSpec {
        suite: suite_spec(),
        cases: (0..3)
            .map(|i| case(&format!("case-{i}"), None, "", None))
            .collect(),
    };
    let both = |spec: &BatchSpec, admission: &Admission| {
        let twins = &twins;
        let (spec, admission) = (spec.clone(), admission.clone());
        async move {
            let pg = twins.pg.submit_batch(spec.clone(), admission.clone()).await;
            let sqlite = twins.sqlite.submit_batch(spec, admission).await;
            (pg.unwrap(), sqlite.unwrap())
        }
    };
    let tight = Admission {
        max_queued_jobs: 2,
        max_batches_in_flight: 1,
        ..open()
    };
    let refused = BatchSubmitted::Full(Full::Queue { queued: 0, max: 2 });
    assert_eq!(both(&three, &tight).await, (refused.clone(), refused));
    assert_eq!(written(&db, &twins).await.0, [0, 0, 0, 0]);
    let one = BatchSpec {
        suite: suite_spec(),
        cases: vec![case("alone", None, "", None)],
    };
    submit(&twins, &one, &tight).await;
    let refused = BatchSubmitted::Full(Full::Batches { max: 1 });
    assert_eq!(
        both(&one, &tight).await,
        (refused.clone(), refused),
        "one batch in flight already"
    );
    let before = written(&db, &twins).await;
    assert_eq!(before.0, [1, 1, 2, 0]);

    // A streamed suite whose third case cannot be read, and one with a case missing.
    let failing = || {
        (0..4).map(|i| match i {
            2 => Err(StoreError::Task("the spool cannot be read back".into())),
            _ => Ok(case(&format!("case-{i}"), None, "", None)),
        })
    };
    let pg = twins
        .pg
        .submit_suite(suite_spec(), 4, failing(), open())
        .await;
    assert!(
        matches!(pg, Err(PgError::Suite(ref e)) if e.contains("spool")),
        "{pg:?}"
    );
    let sqlite = twins
        .sqlite
        .submit_suite(suite_spec(), 4, failing(), open())
        .await;
    assert!(sqlite.is_err(), "{sqlite:?}");
    let short = || three.cases.clone().into_iter().map(Ok);
    let pg = twins
        .pg
        .submit_suite(suite_spec(), 4, short(), open())
        .await;
    assert!(
        matches!(pg, Err(PgError::Suite(ref e)) if e.contains("gave 3")),
        "{pg:?}"
    );
    assert!(
        twins
            .sqlite
            .submit_suite(suite_spec(), 4, short(), open())
            .await
            .is_err()
    );
    assert_eq!(written(&db, &twins).await, before, "nothing of either");
    let counters: Vec<(String, i64)> = db
        .client()
        .await
        .query("SELECT name, value FROM counters ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        counters,
        [
            ("batches_in_flight".to_owned(), 1),
            ("queued_jobs".to_owned(), 1)
        ],
        "the refused suites counted nowhere"
    );

    // An idempotency key replays its suite, case by case, and nothing is written again.
    let keyed = BatchSpec {
        suite: SuiteSpec {
            idempotency_key: Some("suite-1".into()),
            ..suite_spec()
        },
        ..three.clone()
    };
    let stored = submit(&twins, &keyed, &open()).await;
    let before = written(&db, &twins).await;
    assert_eq!(
        both(&keyed, &open()).await,
        (
            BatchSubmitted::Replayed(stored.pg),
            BatchSubmitted::Replayed(stored.sqlite)
        )
    );
    let mut other_case = keyed.clone();
    other_case.cases[2].stdin = Content::from("other");
    let mut other_suite = keyed.clone();
    other_suite.suite.compare = CompareMode::Exact;
    for changed in [other_case, other_suite] {
        assert_eq!(
            both(&changed, &open()).await,
            (
                BatchSubmitted::KeyReused(stored.pg),
                BatchSubmitted::KeyReused(stored.sqlite)
            )
        );
    }
    assert_eq!(written(&db, &twins).await, before, "replays write nothing");
    let acme = Admission {
        tenant: Some("acme".into()),
        ..open()
    };
    let theirs = submit(&twins, &keyed, &acme).await;
    assert_ne!(theirs.pg, stored.pg, "another tenant's key is its own");
    twins.close();
}

/// Claims and finishes cases on `node` until it finds none, as a worker would; the cases it
/// ended (not those cancelled while it ran them).
async fn work(node: PgStore, name: &'static str) -> Vec<JobId> {
    let mut ended = Vec::new();
    while let Some(job) = node.claim(name, LEASE).await.expect("claim") {
        assert!(job.case.is_some(), "only cases are queued");
        let end = success(b"");
        if node
            .finish(job.id, job.attempt, &end)
            .await
            .expect("finish")
        {
            ended.push(job.id);
        }
    }
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimers_on_two_nodes_finishing_the_cases_of_suites_at_once_complete_each_once() {
    let Some(db) = TestDb::create("suites_completed_once").await else {
        return;
    };
    let setup = store(&db).await;
    let batch = BatchSpec {
        suite: SuiteSpec {
            callback_url: Some("https://example.com/suite".into()),
            ..suite_spec()
        },
        cases: (0..30)
            .map(|i| case(&format!("case-{i}"), None, "", None))
            .collect(),
    };
    let mut batches = BTreeSet::new();
    for _ in 0..4 {
        match setup.submit_batch(batch.clone(), open()).await.unwrap() {
            BatchSubmitted::Created { id, .. } => batches.insert(id),
            other => panic!("expected a new batch, got {other:?}"),
        };
    }
    // Two nodes, each with its own pool: both end the last cases of each suite at about the
    // same moment, and each counts its end into the batch in the same transaction.
    let (node_a, node_b) = (
        PgStore::connect(&db.url, 2).await.unwrap(),
        PgStore::connect(&db.url, 2).await.unwrap(),
    );
    let (a, b) = tokio::join!(
        tokio::spawn(work(node_a, "node-a")),
        tokio::spawn(work(node_b, "node-b"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 120, "every case ended once");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both nodes ended cases ({} and {})",
        a.len(),
        b.len()
    );
    for &id in &batches {
        let shown = setup.batch(id).await.unwrap().unwrap();
        assert!(shown.done);
        assert_eq!((shown.progress.done, shown.passed), (30, 30));
        let events = setup.batch_events(id, 0, 1_000).await.unwrap().unwrap();
        let completed: Vec<&Event> = events
            .iter()
            .filter(|e| e.kind == "batch.completed")
            .collect();
        assert_eq!(completed.len(), 1, "completed once");
        assert_eq!(
            (&completed[0].data["cases"], &completed[0].data["passed"]),
            (&json!(30), &json!(30)),
            "by the end that saw every other"
        );
        assert_eq!(
            events.last().unwrap().kind,
            "batch.completed",
            "after every case's end"
        );
    }
    let client = db.client().await;
    let calls: i64 = client
        .query_one(
            "SELECT count(*) FROM webhooks WHERE event = 'batch.completed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(calls, 4, "one call per batch");
    let in_flight: i64 = client
        .query_one(
            "SELECT value FROM counters WHERE name = 'batches_in_flight'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_cancelled_while_two_nodes_end_its_cases_completes_once_without_a_deadlock() {
    let Some(db) = TestDb::create("suite_cancelled_while_ending").await else {
        return;
    };
    let setup = store(&db).await;
    let batch = BatchSpec {
        suite: suite_spec(),
        cases: (0..100)
            .map(|i| case(&format!("case-{i}"), None, "", None))
            .collect(),
    };
    let BatchSubmitted::Created { id, .. } = setup.submit_batch(batch, open()).await.unwrap()
    else {
        panic!("expected a new batch");
    };
    let (node_a, node_b) = (
        PgStore::connect(&db.url, 2).await.unwrap(),
        PgStore::connect(&db.url, 2).await.unwrap(),
    );
    let a = tokio::spawn(work(node_a, "node-a"));
    let b = tokio::spawn(work(node_b, "node-b"));
    // A third node cancels the suite while the two work through it: it locks the cases left,
    // some of them held by the workers ending them.
    let half_way = async {
        while setup.batch(id).await.unwrap().unwrap().progress.done < 20 {
            assert!(
                !a.is_finished() && !b.is_finished(),
                "a worker stopped before half way"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), half_way)
        .await
        .expect("the workers get half way");
    let cancelled = PgStore::connect(&db.url, 1)
        .await
        .unwrap()
        .cancel_batch(id)
        .await
        .expect("no deadlock");
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let shown = setup.batch(id).await.unwrap().unwrap();
    assert!(shown.done);
    let passed = u32::try_from(a.len() + b.len()).unwrap();
    assert_eq!(shown.passed, passed, "every case a worker ended passed");
    assert_eq!(
        shown.by_verdict["cancelled"] + passed,
        100,
        "the rest were cancelled"
    );
    assert!(
        matches!(cancelled, BatchCancel::Cancelled { .. }),
        "cancelled half way: {cancelled:?}"
    );
    assert!(shown.by_verdict["cancelled"] > 0);
    let events = setup.batch_events(id, 0, 1_000).await.unwrap().unwrap();
    let completions = events
        .iter()
        .filter(|e| e.kind == "batch.completed")
        .count();
    assert_eq!(
        completions, 1,
        "completed once, by the cancel or by the last end"
    );
}
