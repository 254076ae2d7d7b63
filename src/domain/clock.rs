//! Wall-clock time in milliseconds since the Unix epoch.
//!
//! Session deadlines are stored as epoch milliseconds so they survive a restart
//! (and, in a cluster, mean the same on every node). The clock is anchored once to
//! the system time and then advanced by tokio's monotonic clock, which keeps it
//! immune to wall-clock jumps and lets tests drive it with `tokio::time::pause()`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor_unix_ms: Millis,
    anchor: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        let anchor_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or_default();
        Self {
            anchor_unix_ms,
            anchor: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Millis {
        self.anchor_unix_ms + self.anchor.elapsed().as_millis() as Millis
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn duration_ms(d: Duration) -> Millis {
    d.as_millis().min(u128::from(u64::MAX)) as Millis
}
