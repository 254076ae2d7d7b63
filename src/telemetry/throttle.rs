//! Logging for events that come in floods (refused connections, shed requests,
//! session events an outbox refused): one line per period with a count, never
//! one per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const NEVER: u64 = u64::MAX;

pub struct Throttle {
    epoch: Instant,
    period: Duration,
    /// Events since the last line.
    count: AtomicU64,
    /// When the last line was written, in ms since `epoch`.
    last: AtomicU64,
}

impl Throttle {
    pub fn new(period: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            period,
            count: AtomicU64::new(0),
            last: AtomicU64::new(NEVER),
        }
    }

    /// Counts one event; returns how many to report when a line is due (the first
    /// event of a burst is reported at once).
    pub fn hit(&self) -> Option<u64> {
        self.hit_many(1)
    }

    /// Counts `n` events at once (a batch refused whole), as [`Self::hit`].
    pub fn hit_many(&self, n: u64) -> Option<u64> {
        self.count.fetch_add(n, Ordering::Relaxed);
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

    #[tokio::test(start_paused = true)]
    async fn batches_are_counted_whole_and_reported_once_per_period() {
        let throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.hit_many(992), Some(992));
        for _ in 0..200 {
            assert_eq!(throttle.hit_many(4_096), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(throttle.hit_many(8), Some(200 * 4_096 + 8));
    }
}
