//! Forgets rate-limit keys that have been idle long enough to have a full bucket
//! again, so the limiters' memory follows the active customers and addresses, not
//! every one ever seen.
//!
//! The walk runs on a blocking thread: with a million customers it visits and
//! rehashes hundreds of thousands of keys, tens of milliseconds that would
//! otherwise stall every request queued on the runtime worker it ran on. Requests
//! still wait for the one shard being walked, a sixty-fourth of the map.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::limits::Limits;

pub async fn run(limits: Arc<Limits>, every: Duration, cancel: CancellationToken) {
    super::every(every, cancel, || async {
        let walked = Arc::clone(&limits);
        if let Err(e) = tokio::task::spawn_blocking(move || walked.forget_idle()).await {
            tracing::warn!(error = %e, "forgetting idle rate-limit keys failed");
        }
        let (customers, addresses, blocked) = limits.tracked();
        tracing::debug!(customers, addresses, blocked, "idle rate-limit keys forgotten");
    })
    .await;
}
