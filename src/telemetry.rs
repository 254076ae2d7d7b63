//! Structured logs with tracing.
//!
//! Lines are written by a thread of their own, not by the task that logs them: at
//! info level every granted session is a line, and a write to a slow terminal, pipe
//! or journald must not hold up admissions. The queue between them is bounded; if
//! the writer falls that far behind, lines are dropped (and the writer says how
//! many) rather than memory growing or requests waiting.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Lines queued for the writer at most.
const QUEUED_LINES: usize = 64 * 1024;

/// Keeps the writer thread; dropping it writes out what is still queued.
#[must_use = "logs stop being written once the guard is dropped"]
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

/// Installs the global subscriber once; RUST_LOG, when set, overrides the configured level.
pub fn init(log: &LogSettings) -> LogGuard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("drisc-log")
        .finish(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    LogGuard(guard)
}
