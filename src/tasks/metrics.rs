//! Folds recorded latencies into their histogram buckets now and then: the
//! exporter keeps each sample until then, so a server nobody scrapes would
//! otherwise grow with every request.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::meter::Meter;

const EVERY: Duration = Duration::from_secs(5);

pub async fn run(meter: Arc<Meter>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => meter.upkeep(),
        }
    }
}
