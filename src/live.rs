//! The sources of live streams: every committed event, fanned out once for all subscribers, and
//! the output of running jobs as it is written; and, the other way, the stdin of interactive
//! jobs ([`crate::stdin`]), which the API writes and a run reads.
//!
//! Events: the bus only says *that* something committed. One follower task reads the new rows
//! from the database (the source of truth) once per commit and broadcasts them, so a thousand
//! subscribers cost one read, not a thousand. The broadcast is a fixed ring: a subscriber that
//! falls behind it is told it lagged and reads the rows it missed from the database by event id;
//! nobody ever waits for a subscriber.
//!
//! Output: stdout and stderr chunks are not stored one by one (only the run's final output is,
//! with its result), so they go from the runner straight to the job's watchers through a small
//! per-job ring. They carry no event id and cannot be resumed. The current run's output so far
//! is also kept in memory (up to [`REPLAY_BYTES`]) while the run lasts, so that a watcher who
//! joins late, or a moment after submitting, still gets it from its start: a watcher takes its
//! copy of it and subscribes under the same lock the runner appends under, so no chunk falls
//! between the two or comes twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::job::content::{Content, Encoding};
use crate::job::{Event, EventKind, JobId};
use crate::stdin::Stdins;
use crate::store::{Store, Visibility};

/// Committed events kept for subscribers that are a little behind; further behind, they read
/// the database.
const EVENT_RING: usize = 4096;
/// Output chunks (each at most one pipe read, 64 KiB) kept per watched job.
const OUTPUT_RING: usize = 32;
/// A run's output kept for watchers who join late; what follows is only counted. The start is
/// what a late watcher lacks most; the whole output is in the job's result when it ends.
pub const REPLAY_BYTES: usize = 1 << 20;
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
    /// The attempt whose run wrote it: a stream sends it only after that attempt's
    /// `job.started`, which may reach the stream later than the output does.
    pub attempt: u32,
    pub stream: Stream,
    /// The chunk's bytes as text when they are UTF-8, else in base64 (as `encoding` says):
    /// never decoded lossily.
    pub text: String,
    pub encoding: Encoding,
}

/// One job's output: the ring to its watchers, and what its current run wrote so far.
struct Channel {
    sender: broadcast::Sender<Arc<OutputChunk>>,
    replay: Mutex<Replay>,
}

#[derive(Default)]
struct Replay {
    chunks: Vec<Arc<OutputChunk>>,
    bytes: usize,
    /// Chunks of this run not kept, once it had written [`REPLAY_BYTES`].
    skipped: u64,
}

impl Channel {
    fn replay(&self) -> std::sync::MutexGuard<'_, Replay> {
        self.replay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<Inner>);

struct Inner {
    events: broadcast::Sender<Arc<LiveEvent>>,
    outputs: Mutex<HashMap<JobId, Arc<Channel>>>,
    stdins: Stdins,
}

impl Default for Live {
    fn default() -> Self {
        Live(Arc::new(Inner {
            events: broadcast::Sender::new(EVENT_RING),
            outputs: Mutex::new(HashMap::new()),
            stdins: Stdins::default(),
        }))
    }
}

impl Live {
    /// The stdin of interactive jobs.
    pub fn stdins(&self) -> &Stdins {
        &self.0.stdins
    }

    /// Every event committed from now on, in event id order.
    pub fn events(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.0.events.subscribe()
    }

    /// Output of `job`: what its current run wrote so far, and all it writes from now on,
    /// while this watch lives.
    pub fn watch_output(&self, job: JobId) -> OutputWatch {
        let held = self.hold(job);
        let (receiver, replay, skipped) = {
            let replay = held.channel.replay();
            (
                held.channel.sender.subscribe(),
                replay.chunks.clone(),
                replay.skipped,
            )
        };
        OutputWatch {
            receiver,
            replay,
            skipped,
            _held: held,
        }
    }

    /// Where a run of `job` writes its output, from its start: what an earlier attempt wrote
    /// is forgotten. Kept until dropped, after the run's result is stored, so that a watcher
    /// who joins between the two still gets the output.
    pub fn run_output(&self, job: JobId, attempt: u32) -> RunFeed {
        let held = self.hold(job);
        *held.channel.replay() = Replay::default();
        RunFeed { held, attempt }
    }

    fn hold(&self, job: JobId) -> Held {
        let channel = Arc::clone(self.outputs().entry(job).or_insert_with(|| {
            Arc::new(Channel {
                sender: broadcast::Sender::new(OUTPUT_RING),
                replay: Mutex::new(Replay::default()),
            })
        }));
        Held {
            live: self.clone(),
            job,
            channel,
        }
    }

    fn outputs(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Arc<Channel>>> {
        self.0
            .outputs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// A share in one job's output channel; the last one dropped frees it.
struct Held {
    live: Live,
    job: JobId,
    channel: Arc<Channel>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut outputs = self.live.outputs();
        // Shares are only made under this lock, so the count cannot grow meanwhile: two are
        // the map's and this one.
        if Arc::strong_count(&self.channel) <= 2 {
            outputs.remove(&self.job);
        }
    }
}

/// A subscription to one job's output, with what its current run wrote before it began.
pub struct OutputWatch {
    pub receiver: broadcast::Receiver<Arc<OutputChunk>>,
    /// The current run's output written before this watch, oldest first.
    pub replay: Vec<Arc<OutputChunk>>,
    /// Chunks of the current run written before this watch and not kept for it.
    pub skipped: u64,
    _held: Held,
}

/// The output of one run of a job, for its taps.
pub struct RunFeed {
    held: Held,
    attempt: u32,
}

impl RunFeed {
    /// A tap for one of the run's output streams.
    pub fn tap(&self, stream: Stream) -> OutputTap {
        OutputTap {
            channel: Arc::clone(&self.held.channel),
            attempt: self.attempt,
            stream,
            pending: Vec::new(),
        }
    }
}

impl std::fmt::Debug for RunFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunFeed")
            .field("job", &self.held.job)
            .finish_non_exhaustive()
    }
}

/// Where the runner puts what one output stream of a run produced: a copy for late watchers
/// and a chunk for those watching now. One lock and one decode per pipe read.
pub struct OutputTap {
    channel: Arc<Channel>,
    attempt: u32,
    stream: Stream,
    /// The start of a UTF-8 character split between two reads, held for the next one.
    pending: Vec<u8>,
}

impl OutputTap {
    pub fn push(&mut self, bytes: &[u8]) {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(bytes);
        let split = buf.len() - incomplete_tail(&buf);
        self.pending = buf.split_off(split);
        self.send(buf);
    }

    fn send(&self, buf: Vec<u8>) {
        if buf.is_empty() {
            return;
        }
        let (text, encoding) = Content(buf).shown(false);
        let chunk = Arc::new(OutputChunk {
            attempt: self.attempt,
            stream: self.stream,
            text,
            encoding,
        });
        let mut replay = self.channel.replay();
        if replay.skipped == 0 && replay.bytes + chunk.text.len() <= REPLAY_BYTES {
            replay.bytes += chunk.text.len();
            replay.chunks.push(Arc::clone(&chunk));
        } else {
            replay.skipped += 1;
        }
        // An error only means nobody watches now. Sent under the lock, so a watcher's copy
        // and its subscription meet exactly here.
        let _ = self.channel.sender.send(chunk);
    }
}

impl Drop for OutputTap {
    /// The stream ended: what was held back for a character's end that never came goes out as
    /// it is.
    fn drop(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.send(pending);
    }
}

/// How many bytes at the end of `buf` begin a UTF-8 character that the next read completes.
fn incomplete_tail(buf: &[u8]) -> usize {
    for back in 1..=buf.len().min(3) {
        let byte = buf[buf.len() - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        // Only a byte that may begin a character is held: 0xC0, 0xC1 and 0xF5 to 0xFF never do.
        let width = match byte {
            0xF0..=0xF4 => 4,
            0xE0..=0xEF => 3,
            0xC2..=0xDF => 2,
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

    fn texts(chunks: &[Arc<OutputChunk>]) -> Vec<&str> {
        chunks.iter().map(|c| c.text.as_str()).collect()
    }

    #[tokio::test]
    async fn a_watcher_gets_the_run_so_far_then_the_rest_whole_and_once() {
        let live = Live::default();
        let job = JobId::now_v7();
        let run = live.run_output(job, 1);
        let mut tap = run.tap(Stream::Stdout);
        tap.push(b"before anyone watched\n");
        let mut watch = live.watch_output(job);
        assert_eq!(texts(&watch.replay), ["before anyone watched\n"]);
        let euro = "€".as_bytes();
        tap.push(&[b"x = 5".as_slice(), &euro[..1]].concat());
        tap.push(&euro[1..]);
        let first = watch.receiver.recv().await.expect("chunk");
        let second = watch.receiver.recv().await.expect("chunk");
        assert_eq!((first.text.as_str(), second.text.as_str()), ("x = 5", "€"));
        assert_eq!(first.stream, Stream::Stdout);
        let late = live.watch_output(job);
        assert_eq!(
            texts(&late.replay),
            ["before anyone watched\n", "x = 5", "€"]
        );
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_are_sent_in_base64_and_a_held_back_end_goes_out_at_the_end() {
        let live = Live::default();
        let job = JobId::now_v7();
        let run = live.run_output(job, 1);
        let mut watch = live.watch_output(job);
        let mut tap = run.tap(Stream::Stdout);
        // 0xFF can begin no character: sent at once. 0xC3 could, so it waits for the next read.
        tap.push(b"\xff\xc3");
        drop(tap);
        let first = watch.receiver.recv().await.expect("chunk");
        let last = watch.receiver.recv().await.expect("chunk");
        let sent = [first, last].map(|c| (c.text.clone(), c.encoding));
        assert_eq!(
            sent,
            [
                ("/w==".to_owned(), Encoding::Base64),
                ("ww==".to_owned(), Encoding::Base64)
            ]
        );
    }

    #[test]
    fn a_new_run_starts_from_nothing_and_the_channel_goes_with_its_last_holder() {
        let live = Live::default();
        let job = JobId::now_v7();
        let first = live.run_output(job, 1);
        first.tap(Stream::Stderr).push(b"attempt 1");
        drop(first);
        assert!(live.outputs().is_empty(), "nobody holds it: freed");

        let watch = live.watch_output(job);
        let second = live.run_output(job, 2);
        second.tap(Stream::Stdout).push(b"attempt 2");
        drop(second);
        let late = live.watch_output(job);
        assert_eq!(texts(&late.replay), ["attempt 2"]);
        drop((watch, late));
        assert!(live.outputs().is_empty());
    }

    #[test]
    fn past_the_replay_budget_a_late_watcher_is_told_how_much_it_missed() {
        let live = Live::default();
        let job = JobId::now_v7();
        let run = live.run_output(job, 1);
        let mut tap = run.tap(Stream::Stdout);
        let block = vec![b'x'; 64 * 1024];
        let fit = REPLAY_BYTES / block.len();
        for _ in 0..fit + 3 {
            tap.push(&block);
        }
        tap.push(b"small, but after the budget ran out");
        let watch = live.watch_output(job);
        assert_eq!(watch.replay.len(), fit, "the start is kept");
        assert_eq!(watch.skipped, 4);
    }
}
