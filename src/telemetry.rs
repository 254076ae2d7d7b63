//! Structured logs with tracing.
//!
//! Lines are written by a thread of their own, not by the task that logs them: at
//! info level every granted session is a line, and a write to a slow terminal, pipe
//! or journald must not hold up admissions. The queue between them is bounded; if
//! the writer falls that far behind, lines are dropped (counted in
//! `drisc_log_lines_dropped_total`) rather than memory growing or requests waiting.
//!
//! The writer thread runs at nice 19 ([`crate::threads::start_lowered`]): at normal
//! priority on the server's core it woke for every line and took the core from the
//! request worker and the sweep each time (`perf sched timehist` showed the sweep
//! and the writer switching every 15 µs while tens of thousands of sessions
//! ended). Lowered, it writes when the core has time, many lines at a time, through
//! a buffer (one `write` for many lines, flushed each time its queue is empty). On
//! a node saturated for long it falls behind and lines are dropped: the counter
//! says how many. Not `SCHED_IDLE`: the channel's waker has a mutex the request
//! threads also take (see [`crate::threads`]).

use std::io::BufWriter;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

pub mod json;

/// Lines queued for the writer at most.
const QUEUED_LINES: usize = 64 * 1024;

/// Bytes gathered before a `write`; the writer flushes whenever its queue is empty.
const WRITE_BUFFER: usize = 64 * 1024;

/// The writer's count of lines dropped because its queue was full.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines dropped so far because the writer was that far behind (0 before [`init`]).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// The writer's thread (`ps -eLo tid,cls,comm`).
pub const THREAD: &str = "drisc-log";

/// Keeps the writer thread; dropping it writes out what is still queued.
#[must_use = "logs stop being written once the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

/// Installs the global subscriber once; RUST_LOG, when set, overrides the configured level.
pub fn init(log: &LogSettings) -> LogGuard {
    let ((writer, guard), not_lowered) = crate::threads::start_lowered(crate::threads::LOWEST, || {
        NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(QUEUED_LINES)
            .thread_name(THREAD)
            .finish(BufWriter::with_capacity(WRITE_BUFFER, std::io::stdout()))
    });
    let _ = DROPPED.set(writer.error_counter());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .event_format(json::JsonLines::new(json::Timestamps))
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Some(e) = not_lowered {
        tracing::warn!(error = %e, "the log writer runs at normal priority: it could not be lowered to nice 19");
    }
    LogGuard(guard)
}
