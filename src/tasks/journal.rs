//! The journal writer: every `journal_interval`, the session changes recorded since
//! the last flush reach the database, in transactions of at most 5,000 changes
//! spread over half the interval (see [`Journal::flush_spread`]). Admission never
//! waits for it; a crash loses at most the changes of the last interval.
//!
//! A flush that fails keeps its changes for the next one, so a database outage
//! delays the journal without losing it. The last flush, at shutdown, is the app's.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::journal::Journal;
use crate::domain::ports::SessionArchive;
use crate::threads::Rest;

/// The thread the journal is written from, at nice 19 (SQLite settings): taking
/// a second's changes out of the journal, putting them in key order and building
/// the statements is a few milliseconds of CPU each second at a million
/// customers, which on the server's runtime delayed the requests queued behind it
/// (bench/analysis.md, "The tail, round seven"). SQLite's own work runs on the
/// connection's thread, `drisc-journal`.
pub const THREAD: &str = "drisc-jflush";

pub async fn run(
    journal: Arc<Journal>,
    archive: Arc<dyn SessionArchive>,
    every: Duration,
    cancel: CancellationToken,
    rest: Rest,
) {
    super::every(every, cancel, || async {
        // Spread over at most half the interval, so the writes of one interval
        // are done before the next begins.
        match journal.flush_spread(archive.as_ref(), every / 2, &rest).await {
            Ok(0) => {}
            Ok(n) => tracing::trace!(changes = n, "session journal written"),
            Err(e) => tracing::warn!(
                error = %e,
                pending = journal.len(),
                "could not write the session journal; its changes are kept for the next try"
            ),
        }
    })
    .await;
}
