//! Folds recorded latencies into their histogram buckets now and then: the
//! exporter keeps each sample until then, so a server nobody scrapes would
//! otherwise grow with every request.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::meter::Meter;

const EVERY: Duration = Duration::from_secs(5);

pub async fn run(meter: Arc<Meter>, cancel: CancellationToken) {
    super::every(EVERY, cancel, || async { meter.upkeep() }).await;
}
