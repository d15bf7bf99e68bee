//! The sources of live streams: every committed event, fanned out once for all subscribers, and
//! the output of running jobs as it is written.
//!
//! Events: the bus only says *that* something committed. One follower task reads the new rows
//! from the database (the source of truth) once per commit and broadcasts them, so a thousand
//! subscribers cost one read, not a thousand. The broadcast is a fixed ring: a subscriber that
//! falls behind it is told it lagged and reads the rows it missed from the database by event id;
//! nobody ever waits for a subscriber.
//!
//! Output: stdout and stderr chunks are not stored one by one (only the run's final output is,
//! with its result), so they go from the runner straight to the job's watchers through a small
//! per-job ring that exists only while somebody watches. They carry no event id and cannot be
//! resumed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::job::{Event, EventKind, JobId};
use crate::store::{Store, Visibility};

/// Committed events kept for subscribers that are a little behind; further behind, they read
/// the database.
const EVENT_RING: usize = 4096;
/// Output chunks (each at most one pipe read, 64 KiB) kept per watched job.
const OUTPUT_RING: usize = 32;
/// Rows read from the database at a time while following.
const PAGE: u32 = 1000;

/// A committed event as broadcast, with room for its wire form so that it is rendered once,
/// not once per subscriber.
#[derive(Debug)]
pub struct LiveEvent {
    pub event: Event,
    pub kind: Option<EventKind>,
    pub rendered: OnceLock<Bytes>,
}

impl LiveEvent {
    pub fn new(event: Event) -> LiveEvent {
        LiveEvent {
            kind: EventKind::parse(&event.kind),
            event,
            rendered: OnceLock::new(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.kind.is_some_and(EventKind::is_terminal)
    }
}

/// Which of a job's output streams a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A piece of a running job's output, as decoded text.
#[derive(Debug)]
pub struct OutputChunk {
    pub stream: Stream,
    pub text: String,
}

type OutputSender = broadcast::Sender<Arc<OutputChunk>>;

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<Inner>);

struct Inner {
    events: broadcast::Sender<Arc<LiveEvent>>,
    outputs: Mutex<HashMap<JobId, OutputSender>>,
}

impl Default for Live {
    fn default() -> Self {
        Live(Arc::new(Inner {
            events: broadcast::Sender::new(EVENT_RING),
            outputs: Mutex::new(HashMap::new()),
        }))
    }
}

impl Live {
    /// Every event committed from now on, in event id order.
    pub fn events(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.0.events.subscribe()
    }

    /// Output of `job` written from now on, while this watch lives.
    pub fn watch_output(&self, job: JobId) -> OutputWatch {
        let receiver = self
            .outputs()
            .entry(job)
            .or_insert_with(|| broadcast::Sender::new(OUTPUT_RING))
            .subscribe();
        OutputWatch {
            receiver,
            live: self.clone(),
            job,
        }
    }

    /// A tap for one output stream of a run of `job`.
    pub fn output_tap(&self, job: JobId, stream: Stream) -> OutputTap {
        OutputTap {
            live: self.clone(),
            job,
            stream,
            pending: Vec::new(),
        }
    }

    fn outputs(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, OutputSender>> {
        self.0
            .outputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn output_sender(&self, job: JobId) -> Option<OutputSender> {
        self.outputs().get(&job).cloned()
    }

    /// Follows the database's event log from its current end, broadcasting each new row, until
    /// `stop`. Woken by the bus after each commit of this process; `poll` also picks up events
    /// another process (another server on the same file) committed.
    pub async fn follow(self, store: Store, poll: Duration, stop: CancellationToken) {
        // Subscribed before reading the end, so no commit falls between the two.
        let mut notices = store.bus().subscribe();
        let mut last = loop {
            match store.last_event_id().await {
                Ok(last) => break last,
                Err(e) => {
                    tracing::warn!(error = %e, "live streams cannot read the event log yet");
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        };
        loop {
            let mut newest = None;
            tokio::select! {
                received = notices.recv() => match received {
                    Ok(notice) => newest = Some(notice.event_id),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(poll) => {}
                _ = stop.cancelled() => return,
            }
            loop {
                match notices.try_recv() {
                    Ok(notice) => newest = newest.max(Some(notice.event_id)),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
            // Checked after the notices arrived, i.e. after their commits: whoever subscribes
            // later reads these events as history, so nobody needs them broadcast.
            if self.0.events.receiver_count() == 0 {
                last = last.max(newest.unwrap_or(last));
                continue;
            }
            last = self.broadcast_after(&store, last).await;
        }
    }

    /// Broadcasts every event after `last`; returns the new last id.
    async fn broadcast_after(&self, store: &Store, mut last: i64) -> i64 {
        loop {
            let page = match store.events_after(Visibility::All, last, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    // Left for the next wake-up: subscribers lose nothing, only wait.
                    tracing::warn!(error = %e, "live streams could not read new events");
                    return last;
                }
            };
            let full = page.len() == PAGE as usize;
            for event in page {
                last = event.id;
                // An error only means nobody is listening right now.
                let _ = self.0.events.send(Arc::new(LiveEvent::new(event)));
            }
            if !full {
                return last;
            }
        }
    }
}

/// A subscription to one job's output. Dropping the last one for a job frees its ring.
pub struct OutputWatch {
    pub receiver: broadcast::Receiver<Arc<OutputChunk>>,
    live: Live,
    job: JobId,
}

impl Drop for OutputWatch {
    fn drop(&mut self) {
        let mut outputs = self.live.outputs();
        // This watch's own receiver is still counted here.
        if outputs
            .get(&self.job)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            outputs.remove(&self.job);
        }
    }
}

/// Where the runner puts what one output stream of a job produced. Costs a map lookup per read
/// while nobody watches the job.
pub struct OutputTap {
    live: Live,
    job: JobId,
    stream: Stream,
    /// The start of a UTF-8 character split between two reads, held for the next one.
    pending: Vec<u8>,
}

impl OutputTap {
    pub fn push(&mut self, bytes: &[u8]) {
        let Some(sender) = self.live.output_sender(self.job) else {
            self.pending.clear();
            return;
        };
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(bytes);
        let split = buf.len() - incomplete_tail(&buf);
        self.pending = buf.split_off(split);
        if buf.is_empty() {
            return;
        }
        let chunk = OutputChunk {
            stream: self.stream,
            text: String::from_utf8_lossy(&buf).into_owned(),
        };
        // An error only means the last watcher just left.
        let _ = sender.send(Arc::new(chunk));
    }
}

/// How many bytes at the end of `buf` begin a UTF-8 character that the next read completes.
fn incomplete_tail(buf: &[u8]) -> usize {
    for back in 1..=buf.len().min(3) {
        let byte = buf[buf.len() - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let width = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if width > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_between_reads_is_held_back_whole() {
        let text = "aé€😀".as_bytes();
        assert_eq!(incomplete_tail(text), 0);
        for cut in 1..text.len() {
            let head = &text[..cut];
            let held = incomplete_tail(head);
            assert!(
                std::str::from_utf8(&head[..head.len() - held]).is_ok(),
                "cut at {cut}"
            );
        }
        assert_eq!(incomplete_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_tail(b"abc"), 0);
    }

    #[tokio::test]
    async fn output_reaches_a_watcher_whole_and_the_ring_goes_with_the_last_watcher() {
        let live = Live::default();
        let job = JobId::now_v7();
        let mut tap = live.output_tap(job, Stream::Stdout);
        tap.push(b"nobody watches yet");
        let mut watch = live.watch_output(job);
        let euro = "€".as_bytes();
        tap.push(&[b"x = 5".as_slice(), &euro[..1]].concat());
        tap.push(&euro[1..]);
        let first = watch.receiver.recv().await.expect("chunk");
        let second = watch.receiver.recv().await.expect("chunk");
        assert_eq!((first.text.as_str(), second.text.as_str()), ("x = 5", "€"));
        assert_eq!(first.stream, Stream::Stdout);
        drop(watch);
        assert!(live.output_sender(job).is_none(), "the ring was freed");
    }
}
