//! Progress reported from inside a running job: the protocol, and the reading of it while the job
//! runs. This half depends on nothing but the job's types, so the sandbox, which gives the job
//! its pipe, can take [`FD`] from here without reaching the store; [`record`] is the other half.
//!
//! The protocol, as a job sees it: file descriptor 3 is the write end of a pipe (its number is
//! also in the environment as `KILN_PROGRESS_FD`). Each line written there is `PERCENT MESSAGE`:
//! a number from 0 to 100 (a fraction is rounded down), white space, and an optional message of
//! at most [`MAX_MESSAGE`] bytes (longer ones are cut). Lines that do not parse, or are longer
//! than [`MAX_LINE`], are ignored. From a shell: `echo "40 linking" >&3`; from Python:
//! `os.write(3, b"40 linking\n")`.
//! The latest line that parses becomes the job's `progress`; what of it is stored is
//! [`record`]'s to decide.

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::job::Progress;

mod record;
pub use record::{MAX_EVENTS, MIN_INTERVAL, record};

/// The descriptor the job writes progress lines to.
pub const FD: i32 = 3;
/// The environment variable naming [`FD`] for the job.
pub const ENV_VAR: &str = "KILN_PROGRESS_FD";
pub const MAX_LINE: usize = 1024;
pub const MAX_MESSAGE: usize = 200;

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Option<Progress> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let (number, message) = line
        .split_once(|c: char| c.is_whitespace())
        .unwrap_or((line, ""));
    let percent: f64 = number.strip_suffix('%').unwrap_or(number).parse().ok()?;
    if !(0.0..=100.0).contains(&percent) {
        return None;
    }
    let mut message: String = message.trim().chars().filter(|c| !c.is_control()).collect();
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    Some(Progress {
        // In 0..=100, checked above.
        percent: percent.floor() as u8,
        message,
    })
}

/// Reads progress lines from the job's pipe until it closes or `stop`, keeping the latest in
/// `latest`. On `stop` it still takes what the pipe holds: lines the job wrote before it exited
/// belong to the run however late this task got to run.
pub async fn read(
    mut pipe: pipe::Receiver,
    latest: watch::Sender<Option<Progress>>,
    stop: CancellationToken,
) {
    let mut lines = Lines {
        line: Vec::with_capacity(128),
        overlong: false,
        latest,
    };
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::select! {
            biased;
            () = stop.cancelled() => return lines.drain(pipe, &mut chunk),
            read = pipe.read(&mut chunk) => read,
        };
        let Ok(n @ 1..) = read else { return };
        lines.take(&chunk[..n]);
    }
}

/// Splits what the pipe yields into lines and keeps the latest that parses.
struct Lines {
    line: Vec<u8>,
    overlong: bool,
    latest: watch::Sender<Option<Progress>>,
}

impl Lines {
    fn take(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                if !self.overlong
                    && let Some(progress) = parse_line(&self.line)
                {
                    self.latest.send_replace(Some(progress));
                }
                self.line.clear();
                self.overlong = false;
            } else if self.line.len() < MAX_LINE {
                self.line.push(byte);
            } else {
                self.overlong = true;
            }
        }
    }

    /// Takes what the pipe holds now, reading the descriptor directly: tokio does not try a
    /// read until its reactor has seen the pipe readable. Bounded, so a writer that escaped
    /// the run cannot keep it going.
    fn drain(&mut self, pipe: pipe::Receiver, chunk: &mut [u8]) {
        let Ok(fd) = pipe.into_nonblocking_fd() else {
            return;
        };
        let mut pipe = std::fs::File::from(fd);
        for _ in 0..MAX_DRAIN_READS {
            match std::io::Read::read(&mut pipe, chunk) {
                Ok(0) => return,
                Ok(n) => self.take(&chunk[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                // WouldBlock: all that was written is read.
                Err(_) => return,
            }
        }
    }
}

/// At most this many reads of leftover progress at the end of a run (a pipe holds 64 KiB).
const MAX_DRAIN_READS: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_written_before_the_end_are_kept_however_late_the_reader_runs() {
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        std::io::Write::write_all(&mut writer, b"10 start\n90 almost done\n").expect("write");
        drop(writer);
        let receiver = pipe::Receiver::from_owned_fd(reader.into()).expect("receiver");
        let (latest, seen) = watch::channel(None);
        // The run is already over when the reader first runs: the state a busy server leaves.
        let stop = CancellationToken::new();
        stop.cancel();
        read(receiver, latest, stop).await;
        let last = seen.borrow().clone().expect("the last line");
        assert_eq!((last.percent, last.message.as_str()), (90, "almost done"));
    }

    fn parsed(line: &str) -> Option<(u8, String)> {
        parse_line(line.as_bytes()).map(|p| (p.percent, p.message))
    }

    #[test]
    fn a_line_is_a_percentage_and_an_optional_message() {
        assert_eq!(
            parsed("42 compiling step 2"),
            Some((42, "compiling step 2".into()))
        );
        assert_eq!(parsed("100"), Some((100, String::new())));
        assert_eq!(
            parsed("  7.9%\tnearly eight \r"),
            Some((7, "nearly eight".into()))
        );
        assert_eq!(parsed("0 a\u{1b}[31mred"), Some((0, "a[31mred".into())));
    }

    #[test]
    fn lines_that_are_not_progress_are_ignored() {
        for line in [
            "",
            "done",
            "101 too far",
            "-1 negative",
            "NaN x",
            "inf",
            "50x",
        ] {
            assert_eq!(parsed(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let message = "é".repeat(MAX_MESSAGE);
        let (_, kept) = parsed(&format!("5 {message}")).expect("parses");
        assert!(kept.len() <= MAX_MESSAGE && kept.len() >= MAX_MESSAGE - 1);
        assert!(message.starts_with(&kept));
    }
}
