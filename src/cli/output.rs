//! The one way every command writes: results to stdout, remarks to stderr, neither of which can
//! end the process. A reader that went away (`kiln token list | head -1`) is not an error: the
//! command did its work, and its exit code should still say how that went (ripgrep treats a
//! broken pipe the same way). `println!` would panic there instead.

use std::io::{self, StdoutLock, Write};

/// Writes to stdout and flushes. A broken pipe counts as written; any other failure is returned,
/// for the caller to wrap in its own error.
pub fn print(write: impl FnOnce(&mut StdoutLock<'static>) -> io::Result<()>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        done => done,
    }
}

/// `kiln: <message>` on stderr, for the person at the terminal; kept off stdout so scripts reading
/// it are not confused.
pub fn note(message: &str) {
    // If stderr itself is gone there is no one left to tell.
    let _ = writeln!(io::stderr().lock(), "kiln: {message}");
}
