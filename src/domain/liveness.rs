//! How long a session may stay in each state before it counts as dead.

use std::time::Duration;

use super::clock::{Millis, duration_ms};
use super::session::SessionState;

/// The four timings of the session lifecycle (PROTOCOL 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How often a live session is sent PING.
    pub ping_interval: Duration,
    /// A live session with no PONG for this long is ended.
    pub pong_timeout: Duration,
    /// A detached session (socket gone without FINISHED) is kept this long for a reconnect.
    pub reconnect_grace: Duration,
    /// A granted session whose player never sends REQUESTED is ended after this long.
    pub connect_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(25),
            reconnect_grace: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

impl Timings {
    /// How long a session may stay in `state` without news from its player.
    pub fn allowance(&self, state: SessionState) -> Duration {
        match state {
            SessionState::Pending => self.connect_timeout,
            SessionState::Live => self.pong_timeout,
            SessionState::Detached => self.reconnect_grace,
        }
    }

    /// The instant a session entering (or refreshed in) `state` at `since` dies.
    pub fn deadline(&self, state: SessionState, since: Millis) -> Millis {
        since.saturating_add(duration_ms(self.allowance(state)))
    }
}

/// A session is dead once its deadline has been reached; dead sessions never count
/// against a limit, whether or not a sweep has removed them yet.
pub fn is_dead(expires_at: Millis, now: Millis) -> bool {
    expires_at <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_uses_its_own_allowance() {
        let t = Timings {
            ping_interval: Duration::from_secs(1),
            pong_timeout: Duration::from_secs(2),
            reconnect_grace: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(4),
        };
        assert_eq!(t.deadline(SessionState::Live, 1_000), 3_000);
        assert_eq!(t.deadline(SessionState::Detached, 1_000), 4_000);
        assert_eq!(t.deadline(SessionState::Pending, 1_000), 5_000);
    }

    #[test]
    fn a_session_is_dead_exactly_at_its_deadline() {
        assert!(!is_dead(5_000, 4_999));
        assert!(is_dead(5_000, 5_000));
        assert!(is_dead(5_000, 6_000));
    }

    #[tokio::test(start_paused = true)]
    async fn clock_follows_paused_tokio_time() {
        let clock = crate::domain::Clock::new();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(clock.now() - t0, 25_000);
    }
}
