//! How workers hand results in and take the next job, on a real database file: the finish and
//! the next claim share one write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Store;
use crate::job::policy::Policy;
use crate::job::{Finish, JobId, JobSpec, Outcome, RunResult, Status};
use crate::store::{Admission, CancelResult, ClaimedJob, Submitted, Visibility};

const OWNER: &str = "node/instance/w0";
const LEASE: Duration = Duration::from_secs(30);

fn spec() -> JobSpec {
    JobSpec {
        runtime: "sh".into(),
        code: "true".into(),
        stdin: Default::default(),
        args: Vec::new(),
        files: BTreeMap::new(),
        outputs: Vec::new(),
        limits: Policy::default().default_limits,
        priority: 0,
        max_attempts: 3,
        interactive: false,
        idempotency_key: None,
        callback_url: None,
        callback_shape: Default::default(),
    }
}

/// A submit on an open server, far from any limit.
fn open_admission() -> Admission {
    Admission {
        tenant: None,
        max_queued_jobs: u64::MAX,
        max_batches_in_flight: u64::MAX,
    }
}

async fn submit(store: &Store) -> JobId {
    match store
        .submit(spec(), open_admission())
        .await
        .expect("submit")
    {
        Submitted::Created(id) => id,
        other => panic!("a plain submit was {other:?}"),
    }
}

fn success() -> Finish {
    Finish {
        outcome: Outcome::Success,
        result: RunResult {
            exit_code: Some(0),
            ..RunResult::default()
        },
        error: None,
        judged: None,
    }
}

/// Records a successful run of `id` and claims the next job in the same write.
async fn succeed_and_claim(store: &Store, id: JobId, attempt: u32) -> (bool, Option<ClaimedJob>) {
    store
        .finish_and_claim(id, attempt, Arc::new(success()), OWNER, LEASE)
        .await
        .expect("finish and claim")
}

async fn status(store: &Store, id: JobId) -> Status {
    store.job_status(id).await.expect("read").expect("the job")
}

#[tokio::test]
async fn finishing_a_job_claims_the_next_queued_one_in_the_same_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, writer) = Store::open(&dir.path().join("q.db"), 2).expect("open");
    let (first, second) = (submit(&store).await, submit(&store).await);
    let job = store
        .claim(OWNER, LEASE)
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!(job.id, first, "the oldest job is claimed first");

    let (finished, next) = succeed_and_claim(&store, first, job.attempt).await;
    assert!(finished);
    assert_eq!(next.map(|j| (j.id, j.attempt)), Some((second, 1)));
    assert_eq!(status(&store, first).await, Status::Succeeded);
    assert_eq!(status(&store, second).await, Status::Running);
    let events = store
        .events_after(Visibility::All, 0, 100)
        .await
        .expect("events");
    let history: Vec<_> = events.iter().map(|e| (e.job_id, e.kind.as_str())).collect();
    assert_eq!(
        history,
        [
            (Some(first), "job.queued"),
            (Some(second), "job.queued"),
            (Some(first), "job.started"),
            (Some(first), "job.succeeded"),
            (Some(second), "job.started"),
        ]
    );

    let (finished, next) = succeed_and_claim(&store, second, 1).await;
    assert!(finished);
    assert!(next.is_none(), "nothing was left to claim");
    drop(store);
    writer.join();
}

#[tokio::test]
async fn a_result_for_a_job_cancelled_meanwhile_is_discarded_but_the_next_job_is_claimed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, writer) = Store::open(&dir.path().join("q.db"), 2).expect("open");
    let (first, second) = (submit(&store).await, submit(&store).await);
    let job = store
        .claim(OWNER, LEASE)
        .await
        .expect("claim")
        .expect("a job");
    let cancelled = store.cancel(first).await.expect("cancel");
    assert_eq!(
        cancelled,
        CancelResult::Cancelled {
            running_attempt: Some(job.attempt)
        }
    );

    let (finished, next) = succeed_and_claim(&store, first, job.attempt).await;
    assert!(!finished, "the cancelled job keeps its cancellation");
    assert_eq!(status(&store, first).await, Status::Cancelled);
    assert_eq!(next.map(|j| j.id), Some(second));
    drop(store);
    writer.join();
}
