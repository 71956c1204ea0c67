//! What reaches the terminal: stdout (the product: an answer, a report, a
//! JSON document) and stderr (progress, warnings, errors).
//!
//! `println!` panics when stdout is a closed pipe (`hivemesh members --json
//! | head -1`); every command writes through [`outln!`]/[`out!`] instead.
//! Once the reader has gone there is nobody left to answer, so the process
//! ends quietly with status 0 (as `rg` does), unless the command keeps
//! serving without a reader ([`keep_running_without_stdout`], for `hivemesh
//! run`). Stderr lines ([`errln!`]) never panic: a failed progress line is
//! dropped.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set for commands whose work goes on when stdout is gone (a node).
static KEEP_RUNNING: AtomicBool = AtomicBool::new(false);

/// Writes formatted text to stdout; a closed pipe ends the process quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout(::std::format_args!($($arg)*), false)
    };
}

/// Writes a line to stdout; a closed pipe ends the process quietly.
macro_rules! outln {
    () => {
        $crate::output::stdout(::std::format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::stdout(::std::format_args!($($arg)*), true)
    };
}

/// Writes a line to stderr; never panics.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::stderr(::std::format_args!($($arg)*))
    };
}

pub(crate) use {errln, out, outln};

/// After this, a closed or failing stdout is ignored instead of ending the
/// process: a node keeps serving its peers whoever reads its log.
pub fn keep_running_without_stdout() {
    KEEP_RUNNING.store(true, Ordering::Relaxed);
}

/// Writes `args` (and a newline when `newline`) to stdout and flushes.
pub fn stdout(args: fmt::Arguments<'_>, newline: bool) {
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) });
    if let Err(error) = written.and_then(|()| out.flush()) {
        drop(out);
        stdout_failed(&error);
    }
}

/// Writes a line to stderr, dropping it if stderr is gone.
pub fn stderr(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// A write to stdout failed: with nobody reading (a closed pipe), end
/// quietly; on any other failure (a full disk), say so and fail.
fn stdout_failed(error: &io::Error) {
    if KEEP_RUNNING.load(Ordering::Relaxed) {
        return;
    }
    if error.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    stderr(format_args!("hivemesh: error: cannot write to stdout: {error}"));
    std::process::exit(1);
}

/// Whether stdout is a terminal a person watches (live text is for them).
pub fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

/// Whether stderr is a terminal (colour and live progress are for them).
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// An error and its causes as one line, each cause once: many error types
/// both print their source and return it from `source()`, so anyhow's
/// `{:#}` would repeat it ("File exists (os error 17): File exists (os
/// error 17)"); a cause whose text is already in the line, or that prints
/// nothing (libp2p's transport errors), adds nothing.
pub fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper {
        path: &'static str,
        source: io::Error,
    }

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[derive(Debug)]
    struct Silent(io::Error);

    impl fmt::Display for Silent {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            Ok(())
        }
    }

    impl std::error::Error for Silent {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let inner = Wrapper { path: "/data/identity.key", source: io::Error::from_raw_os_error(17) };
        let error = anyhow::Error::new(inner).context("could not load the node identity");
        let line = error_line(&error);
        assert_eq!(line.matches("File exists").count(), 1, "{line}");
        assert!(
            line.starts_with("could not load the node identity: /data/identity.key: File exists"),
            "{line}"
        );
    }

    #[test]
    fn a_cause_that_prints_nothing_leaves_its_own_cause_in_the_line() {
        let error = anyhow::Error::new(Silent(io::Error::from_raw_os_error(99))).context("cannot listen");
        let line = error_line(&error);
        assert!(line.starts_with("cannot listen: ") && !line.contains(": :"), "{line}");
        assert!(line.contains("os error 99"), "{line}");
    }
}
