//! Background loops. Each one takes a cancellation token and runs on the app's
//! task tracker; none is fire-and-forget.

pub mod journal;
pub mod metrics;
pub mod rate_limits;
pub mod sweep;

use std::future::Future;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Runs `step` every `period` until `cancel`. A step under way is never abandoned
/// half-way for the cancellation: only the wait for the next tick races it. A slow
/// step delays the next one rather than bunching ticks up.
pub(crate) async fn every<F, Fut>(period: Duration, cancel: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        step().await;
    }
}
