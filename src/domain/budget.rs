//! How many messages a player's socket may send: what the protocol needs
//! (REQUESTED, a PONG per PING, FINISHED) with some slack, and no more.
//!
//! A token bucket kept as one number, the GCRA's "theoretical arrival time": the
//! instant at which the bucket would be full again. Memory per held socket is one
//! of the server's key figures, and this costs 8 bytes; a `governor` direct limiter
//! carries its own quota and clock per instance (several times that), for a rule
//! this small. The keyed limits of the HTTP API do use `governor` (crate::limits).

use super::clock::Millis;

/// The message budget of one socket. Starts full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageBudget {
    /// When the bucket is full again (epoch ms); at or before `now`, it is full.
    full_at: Millis,
}

impl MessageBudget {
    /// Spends one message at `now`, with a bucket of `burst` messages refilled one
    /// per `refill_ms`. `false`: the socket sent more than its budget.
    pub fn spend(&mut self, now: Millis, burst: u32, refill_ms: Millis) -> bool {
        let refill_ms = refill_ms.max(1);
        let full_at = self.full_at.max(now) + refill_ms;
        if full_at - now > refill_ms * u64::from(burst) {
            return false;
        }
        self.full_at = full_at;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_burst_passes_and_the_next_message_does_not() {
        let mut b = MessageBudget::default();
        let now = 1_000_000;
        for _ in 0..20 {
            assert!(b.spend(now, 20, 2500));
        }
        assert!(!b.spend(now, 20, 2500));
        // A refused message costs nothing: the budget is back after one refill.
        assert!(!b.spend(now + 2499, 20, 2500));
        assert!(b.spend(now + 2500, 20, 2500));
    }

    #[test]
    fn one_message_per_refill_period_is_always_within_budget() {
        let mut b = MessageBudget::default();
        for i in 0..10_000u64 {
            assert!(b.spend(i * 2500, 1, 2500), "message {i}");
        }
    }

    #[test]
    fn a_steady_rate_above_the_refill_runs_out() {
        let mut b = MessageBudget::default();
        // Two messages per refill period: the burst of 20 lasts about 20 periods.
        let spent = (0..100u64).take_while(|i| b.spend(i * 1250, 20, 2500)).count();
        assert!((20..=45).contains(&spent), "{spent}");
    }
}
