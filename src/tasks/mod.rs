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
use tokio_util::task::TaskTracker;

use crate::threads::Rest;

/// Runs the loop `work` makes on a thread named `thread` at nice 19, on a runtime
/// of its own (`io` names that runtime's blocking threads), handing it
/// [`Rest::paced`] so that it leaves the core between pieces of work; the tracker
/// waits for the thread. If the thread cannot be started, the loop runs on the
/// server's runtime with [`Rest::Yield`]: late work beats none.
pub(crate) fn spawn_lowered<W, Fut>(background: &TaskTracker, thread: &str, io: &'static str, work: W)
where
    W: FnOnce(Rest) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let lower = || crate::threads::lower_this(crate::threads::LOWEST);
    let on_thread = work.clone();
    match crate::threads::spawn_runtime(thread, io, lower, move || on_thread(Rest::paced())) {
        Ok(finished) => {
            background.spawn(async move {
                let _ = finished.await;
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, thread, "could not start a thread of its own: the loop runs on the server's runtime");
            background.spawn(work(Rest::Yield));
        }
    }
}

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
