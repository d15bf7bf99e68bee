//! The benches' executor: runs nothing and succeeds, so that only the queue is measured. A Rust
//! type handed to kiln's own [`Workers`](kiln::worker::Workers), not a runtime: no request can
//! ever choose it. Shared by the queue's benches on one process (`benches/queue.rs`) and on
//! several nodes (`benches/cluster.rs`), so that both measure the same claim, lease and finish.

// Each bench target compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};

use kiln::job::{Outcome, RunResult};
use kiln::runner::{Builds, RunError, RunOutput, RunRequest};
use kiln::worker::Execute;
use tokio_util::sync::CancellationToken;

/// Counts the runs it was handed.
#[derive(Default)]
pub struct NoOp {
    pub ran: AtomicUsize,
}

impl Execute for NoOp {
    async fn execute(
        &self,
        _: RunRequest<'_>,
        _: CancellationToken,
    ) -> Result<RunOutput, RunError> {
        self.ran.fetch_add(1, Ordering::Relaxed);
        Ok(RunOutput {
            outcome: Outcome::Success,
            result: RunResult {
                exit_code: Some(0),
                ..RunResult::default()
            },
        })
    }

    fn builds(&self) -> Option<&Builds> {
        None
    }
}
