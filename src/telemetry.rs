//! Structured logs with tracing.
//!
//! Lines are written by a thread of their own, not by the task that logs them: at
//! info level every granted session is a line, and a write to a slow terminal, pipe
//! or journald must not hold up admissions. The lines wait in one bounded buffer
//! ([`writer`]) that the thread writes out a few times a second; if the output
//! falls that far behind, lines are dropped (counted in
//! `drisc_log_lines_dropped_total`) rather than memory growing or requests waiting.
//!
//! The writer thread runs at nice 19 ([`crate::threads::start_lowered`]): at normal
//! priority on the server's core it woke for every line and took the core from the
//! request worker and the sweep each time (`perf sched timehist` showed the sweep
//! and the writer switching every 15 µs while tens of thousands of sessions
//! ended). Lowered, and woken by its own clock rather than by each line, it writes
//! when the core has time, many lines at a time. Not `SCHED_IDLE`: the buffer's
//! mutex is one the request threads also take (see [`crate::threads`]).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::EitherWriter;

use crate::config::{LogFormat, LogSettings};

pub mod json;
pub mod throttle;
pub mod timestamps;
pub mod writer;

/// Where the lines go, whose count of dropped lines `/metrics` reads.
static SINK: OnceLock<writer::LineSink> = OnceLock::new();

/// Lines dropped so far because the writer was that far behind (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    SINK.get().map_or(0, writer::LineSink::dropped)
}

/// The lines' way out: the writer thread, or standard output directly if no
/// thread could be started for it.
#[derive(Clone)]
enum Output {
    Gathered(writer::LineSink),
    Direct,
}

impl<'a> MakeWriter<'a> for Output {
    type Writer = EitherWriter<writer::LineSink, std::io::Stdout>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Output::Gathered(sink) => EitherWriter::A(sink.clone()),
            Output::Direct => EitherWriter::B(std::io::stdout()),
        }
    }
}

/// The writer's thread (`ps -eLo tid,cls,comm`).
pub const THREAD: &str = "drisc-log";

/// Keeps the writer thread; dropping it writes out what is still gathered.
#[must_use = "logs stop being written once the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] Option<writer::Lines>);

/// Whether text lines carry ANSI colours: only on a terminal, and never when
/// `NO_COLOR` is set to anything (<https://no-color.org>). tracing-subscriber
/// colours by default whatever the output is, so a log piped to a file or to
/// journald was full of escape sequences.
fn colours(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber once; RUST_LOG, when set, overrides the configured level.
pub fn init(log: &LogSettings) -> LogGuard {
    let (started, not_lowered) = crate::threads::start_lowered(crate::threads::LOWEST, || {
        writer::start(THREAD, std::io::stdout(), writer::PERIOD, writer::BUFFERED_BYTES)
    });
    let (output, lines, not_started) = match started {
        Ok((sink, lines)) => {
            let _ = SINK.set(sink.clone());
            (Output::Gathered(sink), Some(lines), None)
        }
        Err(e) => (Output::Direct, None, Some(e)),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colours(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR")))
        .with_writer(output);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .event_format(json::JsonLines::new(timestamps::Timestamps))
            .try_init(),
        LogFormat::Text => builder.with_timer(timestamps::Timestamps).try_init(),
    };
    if let Some(e) = not_started {
        tracing::warn!(error = %e, "no log writer thread: lines are written by the threads that log them");
    } else if let Some(e) = not_lowered {
        tracing::warn!(error = %e, "the log writer runs at normal priority: it could not be lowered to nice 19");
    }
    LogGuard(lines)
}

#[cfg(test)]
mod tests {
    use super::colours;

    #[test]
    fn colours_only_on_a_terminal_and_never_with_no_color() {
        assert!(colours(true, None));
        assert!(
            colours(true, Some("".into())),
            "an empty NO_COLOR is unset (no-color.org)"
        );
        assert!(!colours(true, Some("1".into())));
        assert!(!colours(false, None), "a pipe or a file gets no escape sequences");
        assert!(!colours(false, Some("1".into())));
    }
}
