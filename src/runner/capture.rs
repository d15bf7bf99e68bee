//! A run's output streams, captured up to the output cap (growing no further than it), shown to
//! live watchers as they arrive, and its stdin fed while they are read (for an interactive job,
//! what is written to it as the run goes).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use crate::live::OutputTap;
use crate::stdin::StdinReader;

const READ_CHUNK: usize = 64 * 1024;

/// One output stream as kept: at most the cap, and whether the program wrote more.
pub(super) struct Captured {
    pub(super) bytes: Vec<u8>,
    pub(super) truncated: bool,
}

/// Reads one output stream of a run until it closes, goes over `cap` (which cancels `overflow`,
/// then holds the pipe open until `killed`) or `stop`.
pub(super) async fn capture(
    mut pipe: pipe::Receiver,
    cap: usize,
    tap: Option<OutputTap>,
    overflow: CancellationToken,
    killed: CancellationToken,
    stop: CancellationToken,
) -> Captured {
    let mut kept = Kept {
        bytes: Vec::new(),
        cap,
        tap,
    };
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        let read = tokio::select! {
            biased;
            () = stop.cancelled() => return drain(pipe, &mut chunk, kept),
            read = pipe.read(&mut chunk) => read,
        };
        // A read error on a pipe has no cause the job could be blamed for; the stream just ends.
        let Ok(n @ 1..) = read else {
            return kept.captured(false);
        };
        if !kept.keep(&chunk[..n]) {
            // Stop reading at once: the run is killed for this, and reading on would only let
            // the program go on writing. The pipe stays open until the kill, so the program
            // does not see EPIPE first and write a complaint to its other stream.
            overflow.cancel();
            killed.cancelled().await;
            return kept.captured(true);
        }
    }
}

/// Ends a capture told to stop waiting for the pipe's EOF: keeps what the pipe holds right now.
/// The job wrote that before it died, so it belongs to the result however late this task got to
/// run after the exit (on a busy server, [`DRAIN_GRACE`] may be over before it ran at all). Only
/// what a process that escaped the run writes from now on is left unread.
///
/// [`DRAIN_GRACE`]: super::execute::DRAIN_GRACE
fn drain(pipe: pipe::Receiver, chunk: &mut [u8], mut kept: Kept) -> Captured {
    // Read the descriptor directly: tokio does not even try a read until its reactor has seen
    // the pipe become readable, and a late reactor is how a run gets here with output unread.
    let Ok(fd) = pipe.into_nonblocking_fd() else {
        return kept.captured(false);
    };
    let mut pipe = std::fs::File::from(fd);
    loop {
        match io::Read::read(&mut pipe, chunk) {
            Ok(0) => return kept.captured(false),
            // An escaped writer cannot keep this loop going: past the cap it ends.
            Ok(n) if !kept.keep(&chunk[..n]) => return kept.captured(true),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock: all that was written is read.
            Err(_) => return kept.captured(false),
        }
    }
}

/// What a capture has kept so far: at most `cap` bytes, each also shown to live watchers.
struct Kept {
    bytes: Vec<u8>,
    cap: usize,
    tap: Option<OutputTap>,
}

impl Kept {
    /// Keeps what fits of `read`; false if not all of it did.
    fn keep(&mut self, read: &[u8]) -> bool {
        let room = self.cap - self.bytes.len();
        let keep = read.len().min(room);
        reserve_within(&mut self.bytes, keep, self.cap);
        self.bytes.extend_from_slice(&read[..keep]);
        if let Some(tap) = &mut self.tap {
            tap.push(&read[..keep]);
        }
        read.len() <= room
    }

    fn captured(self, truncated: bool) -> Captured {
        Captured {
            bytes: self.bytes,
            truncated,
        }
    }
}

/// Grows like `Vec` does (doubling) but never past `cap`, so a flood costs at most `cap` bytes.
fn reserve_within(bytes: &mut Vec<u8>, additional: usize, cap: usize) {
    let needed = bytes.len() + additional;
    if needed > bytes.capacity() {
        let target = needed.max(bytes.capacity().saturating_mul(2)).min(cap);
        bytes.reserve_exact(target - bytes.len());
    }
}

/// Writes a run's stdin: `input`, then for an interactive job all that is written to `more`
/// until it is closed; then closes the pipe, so the program reads EOF.
pub(super) async fn feed(
    mut pipe: pipe::Sender,
    input: Vec<u8>,
    more: Option<StdinReader>,
    stop: CancellationToken,
) {
    let written = async {
        pipe.write_all(&input).await?;
        let Some(more) = more else {
            return Ok(());
        };
        while let Some(bytes) = more.next().await {
            pipe.write_all(&bytes).await?;
        }
        Ok::<_, io::Error>(())
    };
    let written = tokio::select! {
        () = stop.cancelled() => return,
        written = written => written,
    };
    // A program need not read its input: it exiting or closing stdin early is not an error.
    if let Err(error) = written
        && error.kind() != io::ErrorKind::BrokenPipe
    {
        tracing::warn!(%error, "writing job stdin failed");
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::runner::plain::cloexec_pipe;

    /// A stdout pipe the way a run leaves it: the job wrote `output` and, unless `held_open`,
    /// every writer is gone. Returns the read end and, if held open, the writer.
    fn pipe_holding(output: &[u8], held_open: bool) -> (pipe::Receiver, Option<std::fs::File>) {
        let (read, write) = cloexec_pipe().expect("pipe");
        let mut write = std::fs::File::from(write);
        write.write_all(output).expect("fill the pipe");
        let reader = pipe::Receiver::from_owned_fd(read).expect("nonblocking reader");
        (reader, held_open.then_some(write))
    }

    /// Captures `pipe` as a run does whose drain grace has already run out when the capture
    /// first gets to run: on a starved server, reaping the job and waiting [`DRAIN_GRACE`] can
    /// happen before the capture task was ever polled.
    ///
    /// [`DRAIN_GRACE`]: crate::runner::execute::DRAIN_GRACE
    async fn capture_after_the_grace(pipe: pipe::Receiver, cap: usize) -> Captured {
        let stop = CancellationToken::new();
        stop.cancel();
        let killed = CancellationToken::new();
        killed.cancel();
        let captured = capture(pipe, cap, None, CancellationToken::new(), killed, stop);
        tokio::time::timeout(Duration::from_secs(5), captured)
            .await
            .expect("capture ends once told to stop")
    }

    #[tokio::test]
    async fn output_a_job_wrote_before_it_exited_is_kept_however_late_its_capture_runs() {
        let (pipe, _) = pipe_holding(b"42\n", false);
        let captured = capture_after_the_grace(pipe, 1 << 20).await;
        assert_eq!(captured.bytes, b"42\n");
        assert!(!captured.truncated);
    }

    #[tokio::test]
    async fn output_is_kept_even_while_an_escaped_process_still_holds_the_pipe() {
        let (pipe, _writer) = pipe_holding(b"before exit\n", true);
        let captured = capture_after_the_grace(pipe, 1 << 20).await;
        assert_eq!(captured.bytes, b"before exit\n");
        assert!(!captured.truncated);
    }

    #[tokio::test]
    async fn output_kept_after_the_grace_still_stops_at_the_cap() {
        let (pipe, _writer) = pipe_holding(&[b'x'; 5000], true);
        let captured = capture_after_the_grace(pipe, 4096).await;
        assert_eq!(captured.bytes.len(), 4096);
        assert!(captured.bytes.iter().all(|&b| b == b'x'));
        assert!(captured.truncated);
    }
}
