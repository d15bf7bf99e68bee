//! Interactive stdin: bytes written to the stdin of an interactive job while it runs, from
//! outside (`POST /v1/jobs/{id}/stdin`, Piston's WebSocket). A job submitted with
//! `interactive: true` keeps its stdin pipe open after its given `stdin`, and its run reads
//! whatever is written here until the stdin is closed, when the program sees EOF.
//!
//! The bytes pass through an in-process channel keyed by job id, not the database: they are a
//! conversation with the running program, not part of what the job was given (a retry does not
//! get again what an earlier attempt already read). So they reach a job only when this process
//! runs it. The channel is made by whichever comes first, the first write or the run's start,
//! so that bytes written while the job is still queued wait for it; it is bounded, so a writer
//! waits for the program to read (at most [`BUFFER_BYTES`], and [`CHUNKS`] writes, not yet
//! read), and it is forgotten when the job ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};

use crate::job::JobId;

/// Writes a job's stdin may be ahead of what its program read.
pub const CHUNKS: usize = 64;
/// Bytes a job's stdin may hold that its program has not read; also the most one write may
/// bring.
pub const BUFFER_BYTES: usize = 1 << 20;

/// What a writer sends down a job's stdin.
#[derive(Debug)]
enum Input {
    Bytes(Bytes),
    /// No more input: the program reads EOF once it has read what came before.
    Close,
}

/// The stdin of every interactive job this process has written to or runs. Cheap to clone.
#[derive(Clone, Default)]
pub struct Stdins(Arc<Mutex<HashMap<JobId, Arc<Pipe>>>>);

struct Pipe {
    sender: mpsc::Sender<Input>,
    /// Room for bytes not yet read, in bytes.
    room: Semaphore,
    receiver: tokio::sync::Mutex<mpsc::Receiver<Input>>,
    /// A writer sent [`Input::Close`]: nothing more may be written.
    closed: AtomicBool,
    /// A run read the close: a later run (a retry) reads EOF at once.
    ended: AtomicBool,
}

/// Why a write did not go down a job's stdin.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the job's stdin is already closed")]
    Closed,
    #[error("a write to stdin may hold at most {BUFFER_BYTES} bytes")]
    TooLarge,
}

impl Stdins {
    fn pipe(&self, job: JobId) -> Arc<Pipe> {
        let mut pipes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(pipes.entry(job).or_insert_with(|| {
            let (sender, receiver) = mpsc::channel(CHUNKS);
            Arc::new(Pipe {
                sender,
                room: Semaphore::new(BUFFER_BYTES),
                receiver: tokio::sync::Mutex::new(receiver),
                closed: AtomicBool::new(false),
                ended: AtomicBool::new(false),
            })
        }))
    }

    /// Whether `job` has a stdin here yet; makes it if not, and says whether it did.
    pub fn open(&self, job: JobId) -> bool {
        let known = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&job);
        self.pipe(job);
        !known
    }

    /// Appends `bytes` to `job`'s stdin, then closes it if `close`; waits while the program has
    /// not read enough of what came before for them to fit. Whole or not at all: dropped while
    /// it waits, nothing of it was written.
    pub async fn write(&self, job: JobId, bytes: Bytes, close: bool) -> Result<(), WriteError> {
        let pipe = self.pipe(job);
        if pipe.closed.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        if !bytes.is_empty() {
            let size = u32::try_from(bytes.len())
                .ok()
                .filter(|&n| n as usize <= BUFFER_BYTES)
                .ok_or(WriteError::TooLarge)?;
            // The semaphore is never closed, and the pipe holds its own receiver: neither fails.
            let Ok(room) = pipe.room.acquire_many(size).await else {
                return Err(WriteError::Closed);
            };
            let _ = pipe.sender.send(Input::Bytes(bytes)).await;
            // Given back by the reader once read.
            room.forget();
        }
        if close && !pipe.closed.swap(true, Ordering::AcqRel) {
            let _ = pipe.sender.send(Input::Close).await;
        }
        Ok(())
    }

    /// Closes `job`'s stdin if it is open.
    pub async fn close(&self, job: JobId) {
        let _ = self.write(job, Bytes::new(), true).await;
    }

    /// Whether `job`'s stdin was closed.
    pub fn is_closed(&self, job: JobId) -> bool {
        let pipes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        pipes
            .get(&job)
            .is_some_and(|pipe| pipe.closed.load(Ordering::Acquire))
    }

    /// What a run of `job` reads its stdin from.
    pub fn reader(&self, job: JobId) -> StdinReader {
        StdinReader(self.pipe(job))
    }

    /// `job` ended: its stdin and whatever was written to it and not read go.
    pub fn forget(&self, job: JobId) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job);
    }
}

/// The reading end of one job's stdin, for its run.
#[derive(Clone)]
pub struct StdinReader(Arc<Pipe>);

impl StdinReader {
    /// The next bytes written, or `None` once the stdin is closed and all before it read.
    pub async fn next(&self) -> Option<Bytes> {
        if self.0.ended.load(Ordering::Acquire) {
            return None;
        }
        let mut receiver = self.0.receiver.lock().await;
        match receiver.recv().await {
            Some(Input::Bytes(bytes)) => {
                self.0.room.add_permits(bytes.len());
                Some(bytes)
            }
            Some(Input::Close) | None => {
                self.0.ended.store(true, Ordering::Release);
                None
            }
        }
    }
}

impl std::fmt::Debug for StdinReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinReader").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_written_before_the_run_starts_wait_for_it_then_eof_after_the_close() {
        let stdins = Stdins::default();
        let job = JobId::now_v7();
        stdins
            .write(job, Bytes::from_static(b"early\n"), false)
            .await
            .expect("open");
        let reader = stdins.reader(job);
        stdins
            .write(job, Bytes::from_static(b"late\n"), true)
            .await
            .expect("open");
        assert_eq!(reader.next().await.as_deref(), Some(&b"early\n"[..]));
        assert_eq!(reader.next().await.as_deref(), Some(&b"late\n"[..]));
        assert_eq!(reader.next().await, None);
        assert_eq!(stdins.reader(job).next().await, None, "a retry reads EOF");
        assert_eq!(
            stdins.write(job, Bytes::from_static(b"x"), false).await,
            Err(WriteError::Closed)
        );
        assert!(stdins.is_closed(job));
        stdins.forget(job);
        assert!(!stdins.is_closed(job));
    }

    #[tokio::test]
    async fn a_writer_waits_while_the_program_is_too_far_behind() {
        let stdins = Stdins::default();
        let job = JobId::now_v7();
        for _ in 0..CHUNKS {
            stdins
                .write(job, Bytes::from_static(b"x"), false)
                .await
                .expect("room");
        }
        let blocked = stdins.write(job, Bytes::from_static(b"y"), false);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), blocked).await;
        assert!(waited.is_err(), "no room until the program reads");
        let reader = stdins.reader(job);
        assert_eq!(reader.next().await.as_deref(), Some(&b"x"[..]));
        stdins
            .write(job, Bytes::from_static(b"y"), false)
            .await
            .expect("room again");
    }

    #[tokio::test]
    async fn unread_bytes_are_bounded_and_a_write_goes_whole_or_not_at_all() {
        let stdins = Stdins::default();
        let job = JobId::now_v7();
        let half = Bytes::from(vec![b'a'; BUFFER_BYTES / 2 + 1]);
        stdins.write(job, half.clone(), false).await.expect("room");
        let blocked = stdins.write(job, half.clone(), false);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), blocked).await;
        assert!(waited.is_err(), "no room for a second half");
        let reader = stdins.reader(job);
        assert_eq!(reader.next().await.map(|b| b.len()), Some(half.len()));
        stdins
            .write(job, half.clone(), true)
            .await
            .expect("room again");
        assert_eq!(
            reader.next().await.map(|b| b.len()),
            Some(half.len()),
            "the dropped write left nothing"
        );
        assert_eq!(reader.next().await, None);
        let too_large = Bytes::from(vec![0; BUFFER_BYTES + 1]);
        assert_eq!(
            stdins.write(JobId::now_v7(), too_large, false).await,
            Err(WriteError::TooLarge)
        );
    }
}
