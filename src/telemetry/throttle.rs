//! Logging for events that come in floods (refused connections, shed requests,
//! session events an outbox refused): one line per period with a count, never
//! one per event.
//!
//! The first event of a burst is reported at once; the events after it within
//! the period are counted, and said by the next line. A burst that stops inside
//! the period gets no next event to say them: the throttle then says the rest
//! itself once the period is over (through `report`), so the counts in the log add up
//! to the events. Without that, 834,016 session events a full outbox refused
//! within four seconds were logged as 2,528 (bench/analysis.md, round
//! thirty-eight).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const NEVER: u64 = u64::MAX;

/// The period of every throttled line of the server: a line per kind per 10 s.
pub const EVERY: Duration = Duration::from_secs(10);

pub struct Throttle {
    inner: Arc<Inner>,
}

struct Inner {
    epoch: Instant,
    period: Duration,
    /// Events since the last line.
    count: AtomicU64,
    /// When the last line was written, in ms since `epoch`.
    last: AtomicU64,
    /// A task waits for the period's end to say what is still counted.
    armed: AtomicBool,
    /// Writes the line for a count (the tail's, and [`Throttle::count`]'s).
    report: Box<dyn Fn(u64) + Send + Sync>,
}

impl Throttle {
    /// `report` writes the line for a count: the rest of a burst once its
    /// period is over, and every line of [`Self::count`].
    pub fn new(period: Duration, report: impl Fn(u64) + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                period,
                count: AtomicU64::new(0),
                last: AtomicU64::new(NEVER),
                armed: AtomicBool::new(false),
                report: Box::new(report),
            }),
        }
    }

    /// Counts `n` events, and writes the line through `report` when one is due.
    pub fn count(&self, n: u64) {
        if let Some(count) = self.hit_many(n) {
            (self.inner.report)(count);
        }
    }

    /// Counts one event; returns how many to report when a line is due, for a
    /// caller whose line tells the latest event's details (`report` then writes
    /// only the tail's line).
    pub fn hit(&self) -> Option<u64> {
        self.hit_many(1)
    }

    /// Counts `n` events at once (a batch refused whole), as [`Self::hit`].
    pub fn hit_many(&self, n: u64) -> Option<u64> {
        let inner = &self.inner;
        // SeqCst with `armed`: the task that stands down reads the count after
        // clearing `armed`, this reads `armed` after counting, so one of the two
        // sees the other.
        inner.count.fetch_add(n, Ordering::SeqCst);
        let due = inner.take_due();
        // After the count: the task, once armed, finds it.
        self.arm();
        due
    }

    /// Starts the task that says the tail, unless one waits already. Without a
    /// runtime (a test's plain thread) there is none: the next event says it.
    fn arm(&self) {
        let inner = &self.inner;
        if inner.armed.load(Ordering::SeqCst) || inner.armed.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner.armed.store(false, Ordering::SeqCst);
            return;
        };
        let task = Arc::downgrade(inner);
        runtime.spawn(async move {
            loop {
                let Some(inner) = task.upgrade() else { return };
                let wake = inner.period_end();
                drop(inner);
                tokio::time::sleep_until(wake).await;
                let Some(inner) = task.upgrade() else { return };
                if inner.count.load(Ordering::SeqCst) == 0 {
                    // Nothing left: stand down, unless an event came in between
                    // (its `arm` saw the task still armed and left the count to it).
                    inner.armed.store(false, Ordering::SeqCst);
                    if inner.count.load(Ordering::SeqCst) == 0 || inner.armed.swap(true, Ordering::SeqCst) {
                        return;
                    }
                    continue;
                }
                // None when a line was written since: the next period's end, then.
                if let Some(count) = inner.take_due()
                    && count > 0
                {
                    (inner.report)(count);
                }
            }
        });
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NEVER - 1)
    }

    fn period_ms(&self) -> u64 {
        u64::try_from(self.period.as_millis()).unwrap_or(0)
    }

    /// When a line is due (the first ever, or a period after the last), takes
    /// the count for it; the line's time is now.
    fn take_due(&self) -> Option<u64> {
        let now = self.now_ms();
        let last = self.last.load(Ordering::Relaxed);
        let due = last == NEVER || now.saturating_sub(last) >= self.period_ms();
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

    /// When the next line may be written.
    fn period_end(&self) -> Instant {
        let last = self.last.load(Ordering::Relaxed);
        let from = if last == NEVER { 0 } else { last };
        self.epoch + Duration::from_millis(from.saturating_add(self.period_ms()))
    }
}

impl Drop for Throttle {
    /// A stop says what is still counted: its task would not get to.
    fn drop(&mut self) {
        let count = self.inner.count.swap(0, Ordering::Relaxed);
        if count > 0 {
            (self.inner.report)(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A throttle whose lines are kept.
    fn recorded(period: Duration) -> (Throttle, Arc<Mutex<Vec<u64>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        let throttle = Throttle::new(period, move |n| kept.lock().unwrap().push(n));
        (throttle, lines)
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_reported_once_per_period_with_its_count() {
        let (throttle, _) = recorded(Duration::from_secs(10));
        assert_eq!(throttle.hit(), Some(1));
        for _ in 0..99 {
            assert_eq!(throttle.hit(), None);
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(throttle.hit(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(throttle.hit(), Some(101));
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_counted_whole_and_reported_once_per_period() {
        let (throttle, lines) = recorded(Duration::from_secs(10));
        throttle.count(992);
        for _ in 0..200 {
            throttle.count(4_096);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        throttle.count(8);
        assert_eq!(*lines.lock().unwrap(), [992, 200 * 4_096 + 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rest_of_a_burst_is_said_when_its_period_ends_with_no_event_after_it() {
        let (throttle, lines) = recorded(Duration::from_secs(10));
        throttle.count(2_528);
        for _ in 0..200 {
            throttle.count(4_096);
        }
        assert_eq!(*lines.lock().unwrap(), [2_528]);
        tokio::time::sleep(Duration::from_millis(10_001)).await;
        assert_eq!(
            *lines.lock().unwrap(),
            [2_528, 200 * 4_096],
            "the tail, with no event after it"
        );
        // Quiet: no more lines, and the task stands down.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(lines.lock().unwrap().len(), 2);
        assert!(!throttle.inner.armed.load(Ordering::Relaxed));
        // A burst later is reported at once again, and its own tail after it.
        throttle.count(3);
        throttle.count(4);
        assert_eq!(*lines.lock().unwrap(), [2_528, 200 * 4_096, 3]);
        tokio::time::sleep(Duration::from_millis(10_001)).await;
        assert_eq!(*lines.lock().unwrap(), [2_528, 200 * 4_096, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_writes_its_own_line_gets_only_the_tail_from_report() {
        let (throttle, lines) = recorded(Duration::from_secs(10));
        assert_eq!(throttle.hit(), Some(1));
        assert_eq!(throttle.hit(), None);
        assert!(lines.lock().unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(10_001)).await;
        assert_eq!(*lines.lock().unwrap(), [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_dropped_with_a_count_says_it() {
        let (throttle, lines) = recorded(Duration::from_secs(10));
        throttle.count(1);
        throttle.count(41);
        drop(throttle);
        assert_eq!(*lines.lock().unwrap(), [1, 41]);
    }

    #[test]
    fn without_a_runtime_no_task_waits_and_a_drop_says_the_rest() {
        let (throttle, lines) = recorded(Duration::from_secs(10));
        throttle.count(1);
        throttle.count(2);
        assert_eq!(*lines.lock().unwrap(), [1]);
        assert!(!throttle.inner.armed.load(Ordering::SeqCst));
        drop(throttle);
        assert_eq!(*lines.lock().unwrap(), [1, 2]);
    }
}
