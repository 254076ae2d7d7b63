//! Forgets rate-limit keys that have been idle long enough to have a full bucket
//! again, so the limiters' memory follows the active customers and addresses, not
//! every one ever seen.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::limits::Limits;

pub async fn run(limits: Arc<Limits>, every: Duration, cancel: CancellationToken) {
    super::every(every, cancel, || async {
        limits.forget_idle();
        let (customers, addresses, blocked) = limits.tracked();
        tracing::debug!(customers, addresses, blocked, "idle rate-limit keys forgotten");
    })
    .await;
}
