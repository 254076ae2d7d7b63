//! When a socket must next act: milliseconds since the first socket's start.
//!
//! A socket keeps its deadlines (the PONG or REQUESTED deadline, the next PING) as
//! [`Deadline`]s, 8 bytes where a tokio `Instant` is 16, and publishes the earliest
//! in its mailbox, where the hub's ticker reads it (`hub.rs`).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// A point in time, in milliseconds since [`Deadline`]'s epoch (the first use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(u64);

impl Deadline {
    /// `after` from now, rounded up to the millisecond: never earlier than asked.
    pub fn after(after: Duration) -> Self {
        let since = (Instant::now() + after).saturating_duration_since(epoch());
        Self(u64::try_from(since.as_micros().div_ceil(1000)).unwrap_or(u64::MAX))
    }

    /// Now, rounded down: a deadline is passed once it is at most this.
    pub fn now() -> Self {
        let since = Instant::now().saturating_duration_since(epoch());
        Self(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// The milliseconds since the epoch, as a mailbox keeps them.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    pub fn from_millis(ms: u64) -> Self {
        Self(ms)
    }
}

/// Read from tokio's clock on first use. A test runtime with a paused clock
/// created before it only gets later deadlines, never earlier ones.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_once_its_time_has_come_and_not_before() {
        let deadline = Deadline::after(Duration::from_millis(1_500));
        assert!(Deadline::now() < deadline);
        tokio::time::advance(Duration::from_millis(1_499)).await;
        assert!(Deadline::now() < deadline, "not early");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(deadline <= Deadline::now());
    }
}
