//! What a failed program's stderr says about why it failed: the one line that explains it (a
//! Python traceback's exception, the error a JVM, Go, Rust or Node.js crash report names,
//! otherwise the last line written) and whether the program ran out of memory in a way the
//! kernel never saw.
//!
//! Both are read by rules over text, apart from the runner and the judge that use them, because
//! they decide what users see first: a suite of generated programs fails by the thousand, and
//! `runtime_error: exit code 1` sends each one to its stderr while `exit code 1: AssertionError:
//! expected 3` does not. The memory rule exists because a runtime that cannot get memory says so
//! and exits on its own (Python's `MemoryError`, C++'s `std::bad_alloc`, the JVM's
//! `OutOfMemoryError`), and such a run is as much over its memory limit as one the cgroup killed.

/// Characters of the error line a verdict quotes.
pub const ERROR_LINE_CHARS: usize = 200;

/// What opens a Python traceback; the exception follows its indented frames.
const TRACEBACK: &str = "Traceback (most recent call last):";

/// The line of `stderr` that says why the program failed, cut to [`ERROR_LINE_CHARS`]: for a
/// Python traceback the exception (`AssertionError: expected 3`, its first line where the
/// message has several); for the other runtimes whose crash report ends in a stack trace, the
/// line naming the error (the JVM's uncaught exception, Go's panic, Rust's panic message,
/// Node.js's error, PHP's fatal error); otherwise the last line that is not blank. `None` for a silent stderr.
pub fn error_line(stderr: &str) -> Option<String> {
    let line = python_exception(stderr)
        .or_else(|| reported_error(stderr))
        .or_else(|| last_line(stderr))?;
    Some(clip(line.trim(), ERROR_LINE_CHARS))
}

/// The line naming the error in the crash reports that end in a stack trace, where the last
/// line is a frame or a footer.
fn reported_error(stderr: &str) -> Option<&str> {
    let mut lines = stderr.lines();
    while let Some(line) = lines.next() {
        // The JVM: `Exception in thread "main" java.lang.IllegalStateException: boom`.
        if let Some(rest) = line.strip_prefix("Exception in thread \"") {
            return rest.split_once("\" ").map(|(_, error)| error);
        }
        // PHP: `PHP Fatal error:  Uncaught Exception: boom in …`, then its stack trace.
        if line.starts_with("PHP Fatal error:") {
            return Some(line);
        }
        // Go: `panic: boom`, then the goroutines.
        if line.starts_with("panic: ") {
            return Some(line);
        }
        // Rust: `thread 'main' panicked at 'boom', main.rs:1:13`, or since 1.73 the place
        // ending in `:` and the message on the next line.
        if line.starts_with("thread '") && line.contains("' panicked at ") {
            return match line.ends_with(':') {
                true => lines.next().or(Some(line)),
                false => Some(line),
            };
        }
        // Node.js: the source line and a caret, a blank line, then `Error: boom` and its frames.
        if is_error_type_line(line) && stderr.contains("\n    at ") {
            return Some(line);
        }
    }
    None
}

/// `Error: boom`, `TypeError: x is not a function`: a JavaScript error's name at the start.
fn is_error_type_line(line: &str) -> bool {
    let name = line.split_once(':').map_or(line, |(name, _)| name);
    !name.is_empty()
        && name.ends_with("Error")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
}

/// Whether `stderr` says the program stopped because it could not get memory. Only messages a
/// runtime prints when an allocation fails count, each at the start of a line, so a program
/// that merely mentions memory is not taken for one that ran out of it.
pub fn out_of_memory(stderr: &str) -> bool {
    if python_exception(stderr).is_some_and(|line| exception_named(line, "MemoryError")) {
        return true;
    }
    stderr.lines().map(str::trim).any(|line| {
        // C++ (libstdc++'s terminate handler, or its what() line).
        line.starts_with("terminate called after throwing an instance of 'std::bad_alloc'")
            || line == "what():  std::bad_alloc"
            // The JVM, as the uncaught exception or as the cause of one.
            || (line.starts_with("Exception in thread") || line.starts_with("Caused by:"))
                && line.contains("java.lang.OutOfMemoryError")
            // Node.js (V8).
            || line.starts_with("FATAL ERROR:") && line.contains("heap out of memory")
            // Go.
            || line.starts_with("fatal error: runtime: out of memory")
            // Rust's default allocation-error handler.
            || line.starts_with("memory allocation of ") && line.ends_with(" bytes failed")
            // PHP, at its memory_limit.
            || line.contains("Allowed memory size of ") && line.contains(" bytes exhausted")
            // Ruby, Perl, and GCC's own compilers (a build out of memory).
            || line.ends_with("(NoMemoryError)")
            || line.starts_with("Out of memory!")
            || line.contains(": out of memory allocating ")
    })
}

/// The exception line of the last Python traceback in `stderr`: the first line after the
/// traceback's header that is not a frame (frames and their source lines are indented).
fn python_exception(stderr: &str) -> Option<&str> {
    let start = stderr.rfind(TRACEBACK)? + TRACEBACK.len();
    stderr[start..]
        .lines()
        .find(|line| !line.is_empty() && !line.starts_with(char::is_whitespace))
}

/// Whether a Python exception line names `exception`, bare or with a message.
fn exception_named(line: &str, exception: &str) -> bool {
    line == exception
        || line
            .strip_prefix(exception)
            .is_some_and(|rest| rest.starts_with(':'))
}

fn last_line(stderr: &str) -> Option<&str> {
    stderr.lines().rev().find(|line| !line.trim().is_empty())
}

/// At most `max` characters of `text`, with `…` when cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// A signal's name (`SIGSEGV`), for the signals a failing program dies of.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_traceback_is_explained_by_its_exception() {
        let stderr = "\
Traceback (most recent call last):
  File \"/work/main.py\", line 3, in <module>
    assert add(1, 1) == 3, \"expected 3\"
           ^^^^^^^^^^^^^^^^^
AssertionError: expected 3
";
        assert_eq!(
            error_line(stderr).as_deref(),
            Some("AssertionError: expected 3")
        );
    }

    #[test]
    fn of_chained_tracebacks_the_last_explains_and_a_long_message_gives_its_first_line() {
        let stderr = "\
Traceback (most recent call last):
  File \"/work/main.py\", line 2, in <module>
    {}['x']
KeyError: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"/work/main.py\", line 4, in <module>
    raise ValueError('bad\\nworse')
ValueError: bad
worse
";
        assert_eq!(error_line(stderr).as_deref(), Some("ValueError: bad"));
    }

    #[test]
    fn without_a_traceback_the_last_line_written_explains() {
        let syntax = "  File \"/work/main.py\", line 1\n    def f(:\n          ^\nSyntaxError: invalid syntax\n";
        assert_eq!(
            error_line(syntax).as_deref(),
            Some("SyntaxError: invalid syntax")
        );
        let sh = "starting\n/work/main.sh: 2: frobnicate: not found\n\n  \n";
        assert_eq!(
            error_line(sh).as_deref(),
            Some("/work/main.sh: 2: frobnicate: not found")
        );
        let c = "main: /work/main.c:3: main: Assertion `1 + 1 == 3' failed.\n";
        assert_eq!(
            error_line(c).as_deref(),
            Some("main: /work/main.c:3: main: Assertion `1 + 1 == 3' failed.")
        );
        assert_eq!(error_line(""), None);
        assert_eq!(error_line("\n \n"), None);
    }

    #[test]
    fn a_stack_trace_is_explained_by_the_line_naming_its_error() {
        let cases = [
            (
                "Exception in thread \"main\" java.lang.IllegalStateException: boom\n\tat Main.main(Main.java:1)\n",
                "java.lang.IllegalStateException: boom",
            ),
            (
                "panic: boom\n\ngoroutine 1 [running]:\nmain.main()\n\t/work/main.go:3 +0x27\nexit status 2\n",
                "panic: boom",
            ),
            (
                "thread 'main' panicked at 'boom', main.rs:1:13\nnote: run with `RUST_BACKTRACE=1`\n",
                "thread 'main' panicked at 'boom', main.rs:1:13",
            ),
            (
                "thread 'main' panicked at main.rs:1:13:\nboom\nnote: run with `RUST_BACKTRACE=1`\n",
                "boom",
            ),
            (
                "/work/main.js:1\nthrow new Error('boom')\n^\n\nError: boom\n    at Object.<anonymous> (/work/main.js:1:7)\n\nNode.js v20.20.2\n",
                "Error: boom",
            ),
            (
                "PHP Fatal error:  Uncaught Exception: boom in /work/main.php:1\nStack trace:\n#0 {main}\n  thrown in /work/main.php on line 1\n",
                "PHP Fatal error:  Uncaught Exception: boom in /work/main.php:1",
            ),
        ];
        for (stderr, line) in cases {
            assert_eq!(error_line(stderr).as_deref(), Some(line), "{stderr}");
        }
        assert_eq!(
            error_line("SomeError: not a trace\nthe end\n").as_deref(),
            Some("the end"),
            "an error's name without frames is just text"
        );
    }

    #[test]
    fn an_error_line_is_cut_to_a_readable_length() {
        let long = format!("Error: {}", "é".repeat(1000));
        let line = error_line(&long).unwrap_or_default();
        assert_eq!(line.chars().count(), ERROR_LINE_CHARS + 1);
        assert!(line.ends_with('…'));
    }

    #[test]
    fn each_runtime_s_own_out_of_memory_error_is_recognised() {
        for stderr in [
            "Traceback (most recent call last):\n  File \"/work/main.py\", line 1, in <module>\nMemoryError\n",
            "Traceback (most recent call last):\n  File \"x\", line 1\nMemoryError: cannot allocate\n",
            "terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n",
            "Exception in thread \"main\" java.lang.OutOfMemoryError: Java heap space\n\tat Main.main(Main.java:3)\n",
            "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory\n",
            "fatal error: runtime: out of memory\n\nruntime stack:\nruntime.throw({0x4b6, 0x1f})\n",
            "memory allocation of 8000000000 bytes failed\n",
            "main.rb:1:in `*': failed to allocate memory (NoMemoryError)\n",
            "Out of memory!\n",
            "PHP Fatal error:  Allowed memory size of 134217728 bytes exhausted (tried to allocate 536870944 bytes) in /work/main.php on line 1\n",
            "cc1: out of memory allocating 4064 bytes after a total of 1 bytes\n",
        ] {
            assert!(out_of_memory(stderr), "{stderr}");
        }
    }

    #[test]
    fn mentioning_memory_is_not_running_out_of_it() {
        for stderr in [
            "",
            "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: MemoryError expected\n",
            "Traceback (most recent call last):\n  File \"x\", line 1\nMemoryErrorish: no\n",
            "checking for std::bad_alloc handling... ok\nexit 1\n",
            "warning: running out of memory soon\n",
            "AssertionError: java.lang.OutOfMemoryError was not thrown\n",
        ] {
            assert!(!out_of_memory(stderr), "{stderr}");
        }
    }

    #[test]
    fn signals_have_their_names() {
        assert_eq!(signal_name(libc::SIGSEGV), Some("SIGSEGV"));
        assert_eq!(signal_name(libc::SIGABRT), Some("SIGABRT"));
        assert_eq!(signal_name(64), None);
    }
}
