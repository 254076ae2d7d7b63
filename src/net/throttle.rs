//! Logging for events that come in floods (refused connections, shed requests):
//! one line per period with a count, never one per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const NEVER: u64 = u64::MAX;

pub(super) struct Throttle {
    epoch: Instant,
    period: Duration,
    /// Events since the last line.
    count: AtomicU64,
    /// When the last line was written, in ms since `epoch`.
    last: AtomicU64,
}

impl Throttle {
    pub(super) fn new(period: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            period,
            count: AtomicU64::new(0),
            last: AtomicU64::new(NEVER),
        }
    }

    /// Counts one event; returns how many to report when a line is due (the first
    /// event of a burst is reported at once).
    pub(super) fn hit(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NEVER - 1);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == NEVER || now.saturating_sub(last) >= u64::try_from(self.period.as_millis()).unwrap_or(0);
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.count.swap(0, Ordering::Relaxed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_reported_once_per_period_with_its_count() {
        let throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.hit(), Some(1));
        for _ in 0..99 {
            assert_eq!(throttle.hit(), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(throttle.hit(), Some(100));
    }
}
