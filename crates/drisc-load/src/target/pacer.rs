//! Pacing new connections, so the server's accept queue never overflows.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaces out events (new connections) to at most `rate` per second.
pub struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    /// `rate` ≤ 0 means no pacing.
    pub fn new(rate: f64) -> Self {
        Self {
            interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            next: Mutex::new(Instant::now()),
        }
    }

    pub async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let at = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let at = (*next).max(Instant::now());
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}
