//! A finished kiln job as Piston's `run` and `compile` stages: output as text (bytes that are
//! not UTF-8 replaced, as Piston's `toString` does), `code` and `signal` (a name; `code` null
//! then), isolate's `status` and `message`, times in ms and memory in bytes.
//!
//! `output` is stdout and stderr interleaved as the program wrote them, taken from the job's
//! live output while the request waited ([`Interleaved`]); where that is not all of it (the
//! watch fell behind, or joined after the run), it is stdout then stderr.
//!
//! kiln keeps the output of a compiled runtime's build only when the build fails: then it is
//! the `compile` stage, and `run` is a copy of it, as Piston answers. A build that succeeded is
//! a `compile` stage with code 0 and no output.

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::TryRecvError;

use crate::job::content::Encoding;
use crate::job::{Job, Outcome};
use crate::live::{OutputChunk, OutputWatch, Stream};

/// Piston's signal names, by number (`api/src/globals.js`).
const SIGNALS: [(i32, &str); 31] = [
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (4, "SIGILL"),
    (5, "SIGTRAP"),
    (6, "SIGABRT"),
    (7, "SIGBUS"),
    (8, "SIGFPE"),
    (9, "SIGKILL"),
    (10, "SIGUSR1"),
    (11, "SIGSEGV"),
    (12, "SIGUSR2"),
    (13, "SIGPIPE"),
    (14, "SIGALRM"),
    (15, "SIGTERM"),
    (16, "SIGSTKFLT"),
    (17, "SIGCHLD"),
    (18, "SIGCONT"),
    (19, "SIGSTOP"),
    (20, "SIGTSTP"),
    (21, "SIGTTIN"),
    (22, "SIGTTOU"),
    (23, "SIGURG"),
    (24, "SIGXCPU"),
    (25, "SIGXFSZ"),
    (26, "SIGVTALRM"),
    (27, "SIGPROF"),
    (28, "SIGWINCH"),
    (29, "SIGIO"),
    (30, "SIGPWR"),
    (31, "SIGSYS"),
];

/// Whether `name` is a signal Piston lets a WebSocket client send.
pub fn is_signal(name: &str) -> bool {
    SIGNALS.iter().any(|(_, known)| *known == name)
}

fn signal_name(number: i32) -> Option<&'static str> {
    SIGNALS
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, name)| *name)
}

/// A chunk of live output as the bytes it was.
pub fn chunk_bytes(chunk: &OutputChunk) -> Vec<u8> {
    match chunk.encoding {
        Encoding::Utf8 => chunk.text.as_bytes().to_vec(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(&chunk.text)
            .unwrap_or_default(),
    }
}

/// A job's output stream as the bytes it was.
pub fn stream_bytes(text: &str, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Utf8 => text.as_bytes().to_vec(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap_or_default(),
    }
}

/// A job's live output in the order written, gathered while a request waits for its end.
pub struct Interleaved {
    watch: OutputWatch,
    chunks: Vec<(Stream, Vec<u8>)>,
    whole: bool,
}

impl Interleaved {
    pub fn new(watch: OutputWatch) -> Interleaved {
        let whole = watch.skipped == 0;
        let chunks = watch
            .replay
            .iter()
            .map(|chunk| (chunk.stream, chunk_bytes(chunk)))
            .collect();
        Interleaved {
            watch,
            chunks,
            whole,
        }
    }

    /// Takes what arrived since; call it until the job ends, and once after.
    pub fn gather(&mut self) {
        loop {
            match self.watch.receiver.try_recv() {
                Ok(chunk) => self.chunks.push((chunk.stream, chunk_bytes(&chunk))),
                Err(TryRecvError::Lagged(_)) => self.whole = false,
                Err(_) => return,
            }
        }
    }

    /// Waits for the next chunk (for a `select!` beside the wait for the job's end).
    pub async fn next(&mut self) {
        match self.watch.receiver.recv().await {
            Ok(chunk) => self.chunks.push((chunk.stream, chunk_bytes(&chunk))),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.whole = false,
            Err(_) => std::future::pending::<()>().await,
        }
    }

    /// The interleaved output, if it is all of `stdout` and `stderr`.
    fn of(&self, stdout: &[u8], stderr: &[u8]) -> Option<Vec<u8>> {
        let length = |stream| -> usize {
            self.chunks
                .iter()
                .filter(|(s, _)| *s == stream)
                .map(|(_, b)| b.len())
                .sum()
        };
        (self.whole
            && length(Stream::Stdout) == stdout.len()
            && length(Stream::Stderr) == stderr.len())
        .then(|| {
            self.chunks
                .iter()
                .flat_map(|(_, b)| b.iter().copied())
                .collect()
        })
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// isolate's status and message for how a job ended, as Piston passes them on: `TO`, `RE`,
/// `SG`, `XX`, or Piston's own `OL`/`EL` for stdout/stderr over the output limit.
fn status(job: &Job) -> (Option<&'static str>, Option<String>) {
    let Some(outcome) = job.outcome else {
        return (Some("XX"), Some("the job did not end".into()));
    };
    match outcome {
        Outcome::Success => (None, None),
        Outcome::NonzeroExit | Outcome::CompileError => (
            Some("RE"),
            job.exit_code
                .map(|code| format!("Exited with error status {code}")),
        ),
        Outcome::Signal => (
            Some("SG"),
            job.signal
                .map(|signal| format!("Caught fatal signal {signal}")),
        ),
        Outcome::WallTimeLimit => (Some("TO"), Some("Time limit exceeded (wall clock)".into())),
        Outcome::CpuTimeLimit => (Some("TO"), Some("Time limit exceeded".into())),
        Outcome::MemoryLimit => (Some("SG"), Some("Memory limit exceeded".into())),
        Outcome::OutputLimit if job.stderr_truncated => {
            (Some("EL"), Some("stderr length exceeded".into()))
        }
        Outcome::OutputLimit => (Some("OL"), Some("stdout length exceeded".into())),
        Outcome::Cancelled => (Some("SG"), Some("Killed".into())),
        _ => (
            Some("XX"),
            Some(job.error.clone().unwrap_or_else(|| "Internal error".into())),
        ),
    }
}

/// The signal a stage reports: the one that ended it, or `SIGKILL` where kiln killed it (a
/// limit, a kill), as Piston reports its own kills.
fn signal(job: &Job) -> Option<&'static str> {
    match job.outcome {
        Some(
            Outcome::WallTimeLimit
            | Outcome::CpuTimeLimit
            | Outcome::OutputLimit
            | Outcome::MemoryLimit
            | Outcome::Cancelled,
        ) => Some("SIGKILL"),
        Some(Outcome::Signal) => job.signal.and_then(signal_name),
        _ => None,
    }
}

/// The stage of a finished job: `code` null when a signal ended it.
pub fn stage(job: &Job, interleaved: Option<&Interleaved>) -> Value {
    let stdout = stream_bytes(&job.stdout, job.stdout_encoding);
    let stderr = stream_bytes(&job.stderr, job.stderr_encoding);
    let output = interleaved
        .and_then(|i| i.of(&stdout, &stderr))
        .unwrap_or_else(|| [stdout.as_slice(), &stderr].concat());
    let (status, message) = status(job);
    let signal = signal(job);
    json!({
        "stdout": text(&stdout),
        "stderr": text(&stderr),
        "output": text(&output),
        "code": if signal.is_some() { None } else { job.exit_code },
        "signal": signal,
        "message": message,
        "status": status,
        "cpu_time": job.cpu_ms,
        "wall_time": job.wall_ms,
        "memory": job.memory_kb.map(|kb| kb * 1024),
    })
}

/// A successful build's stage: kiln does not keep its output or its measures.
fn built() -> Value {
    json!({
        "stdout": "", "stderr": "", "output": "", "code": 0, "signal": null, "message": null,
        "status": null, "cpu_time": null, "wall_time": null, "memory": null,
    })
}

/// `/execute`'s answer for a finished job.
pub fn result(
    job: &Job,
    language: &str,
    version: &str,
    compiled: bool,
    interleaved: Option<&Interleaved>,
) -> Value {
    let mut result = json!({"language": language, "version": version});
    if compiled && job.outcome == Some(Outcome::CompileError) {
        let compile = stage(job, None);
        result["run"] = compile.clone();
        result["compile"] = compile;
        return result;
    }
    if compiled {
        result["compile"] = built();
    }
    result["run"] = stage(job, interleaved);
    result
}

/// The `exit` message of a WebSocket's stage.
pub fn exit(job: &Job, stage: &str) -> Value {
    let signal = signal(job);
    let mut exit = json!({
        "type": "exit",
        "stage": stage,
        "code": if signal.is_some() { None } else { job.exit_code },
        "signal": signal,
    });
    if let (Some("XX"), Some(message)) = status(job) {
        exit["error"] = json!(message);
    }
    exit
}
