//! In-process signals about what the store has just committed. The writer publishes here after
//! each commit; workers wait on [`Bus::work`] to claim without a polling delay, and whatever
//! waits for a change (long-polls, the follower that feeds the live streams in [`crate::live`],
//! the webhook deliverer) follows [`Bus::subscribe`] to wake the moment a job changes.
//!
//! The bus carries only notices (which event, which job, what kind); the database stays the
//! source of truth, so a receiver that lags behind simply reads the state again.

use tokio::sync::{Notify, broadcast};

use crate::job::{BatchId, EventKind, JobId};

/// One committed event, as announced to subscribers.
#[derive(Clone, Copy, Debug)]
pub struct Notice {
    pub event_id: i64,
    /// `None` for a batch's own events.
    pub job_id: Option<JobId>,
    /// Set for a batch's own events and for those of its cases.
    pub batch_id: Option<BatchId>,
    pub kind: EventKind,
}

pub struct Bus {
    events: broadcast::Sender<Notice>,
    work: Notify,
}

impl Default for Bus {
    fn default() -> Self {
        Bus {
            events: broadcast::Sender::new(8192),
            work: Notify::new(),
        }
    }
}

impl Bus {
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.events.subscribe()
    }

    /// Woken whenever a job became claimable (queued or requeued) in this process.
    pub fn work(&self) -> &Notify {
        &self.work
    }

    pub(crate) fn publish(&self, notices: &[Notice]) {
        // One idle worker per new job: waking them all would send every idle worker's claim to
        // the writer for a single job. Busy workers claim as they finish.
        for _ in notices
            .iter()
            .filter(|n| matches!(n.kind, EventKind::Queued | EventKind::Retrying))
        {
            self.work.notify_one();
        }
        if self.events.receiver_count() > 0 {
            for notice in notices {
                // An error only means nobody is listening right now, which is fine.
                let _ = self.events.send(*notice);
            }
        }
    }
}
