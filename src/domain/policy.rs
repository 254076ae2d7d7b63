//! What happens at a limit (a drisc extension): the offer's policy when its pool
//! is full, a customer's own limit on an offer, and the household cap.
//!
//! Pure rules, functions of the settings, the pool's sessions and `now`; the
//! stores keep applying the one atomic rule they always did (never more than the
//! limit in a pool), and [`super::control`] turns a refusal into what the policy
//! asks for.

use serde::{Deserialize, Serialize};

use super::clock::Millis;
use super::pool::ActiveSession;
use super::session::SessionId;

/// What a full pool does with one more session (`onLimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitPolicy {
    /// Refuse it (409 with the takeover list): DRISC's behaviour.
    #[default]
    Reject,
    /// Grant it, and end the pool's oldest session as if taken over by it.
    EvictOldest,
    /// Grant it whatever the limit (shadow mode), and count the would-be refusal.
    Monitor,
}

impl LimitPolicy {
    pub const ALL: [Self; 3] = [Self::Reject, Self::EvictOldest, Self::Monitor];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::EvictOldest => "evict_oldest",
            Self::Monitor => "monitor",
        }
    }

    /// Reads a stored value; `None` for anything this server does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What to do once the store refused a session because its pool is full (at
/// the limit it was asked to hold, [`admission_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtLimit {
    /// Answer 409 with the takeover list.
    Refuse,
    /// Take this session over with the new one (the store's atomic takeover).
    Evict(SessionId),
    /// Refuse it: `monitor` has let the pool as far past its limit as it ever
    /// does ([`monitor_ceiling`]).
    PastCeiling,
}

/// The limit the store is asked to hold for one admission: `monitor`'s
/// ceiling, so that the pool goes past the offer's limit in the same atomic
/// step that counts it (parallel creates cannot push it further either, and a
/// create past the limit costs one store operation, not a refusal and then a
/// grant); the offer's limit for the others.
pub fn admission_limit(policy: LimitPolicy, limit: u32) -> u32 {
    match policy {
        LimitPolicy::Monitor => monitor_ceiling(limit),
        LimitPolicy::Reject | LimitPolicy::EvictOldest => limit,
    }
}

/// Whether a session granted beside `others` sessions of its pool went past
/// the limit: under `monitor`, a would-be refusal, counted and reported. The
/// other policies never grant past it.
pub fn granted_past_limit(policy: LimitPolicy, limit: u32, others: u32) -> bool {
    policy == LimitPolicy::Monitor && others >= limit
}

/// How many sessions `monitor` lets a pool hold past its limit. No household
/// watches on a hundred more screens than it paid for; a script holding sessions
/// with one stolen token would, without end. A pool is a vector that every
/// admission walks and whose live sessions each get a PING, so an unbounded one
/// would make each create cost more than the last.
pub const MONITOR_HEADROOM: u32 = 100;

/// The most sessions `monitor` lets a pool of limit `limit` hold.
pub fn monitor_ceiling(limit: u32) -> u32 {
    limit.saturating_add(MONITOR_HEADROOM)
}

/// What `policy` does with a pool the store found full, holding `active` (in
/// creation order, the oldest first, as every store lists them). A pool with a
/// limit of zero holds nobody to evict: it refuses. Under `monitor` the store
/// was asked for the ceiling ([`admission_limit`]), so a full pool is past it.
pub fn at_limit(policy: LimitPolicy, active: &[ActiveSession]) -> AtLimit {
    match policy {
        LimitPolicy::Reject => AtLimit::Refuse,
        LimitPolicy::Monitor => AtLimit::PastCeiling,
        LimitPolicy::EvictOldest => match active.first() {
            Some(oldest) => AtLimit::Evict(oldest.id),
            None => AtLimit::Refuse,
        },
    }
}

/// How many times an `evict_oldest` admission tries again when the session it
/// chose to evict ended meanwhile (then the pool may have room, or a newer
/// oldest). Each try is one atomic store operation; three lost races in a row
/// mean the pool is churning, and the player is refused rather than kept waiting.
pub const EVICT_TRIES: usize = 3;

/// The most sessions an override may allow: as far above any real household as
/// the offers' own limits are in practice, and small enough to stay a limit.
pub const MAX_OVERRIDE_LIMIT: u32 = 10_000;

/// One customer's own limit on one offer (an extra screen bought, a boost for
/// an event), until `expires_at` if set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerOverride {
    pub session_limit: u32,
    /// Milliseconds since the epoch; `None`: until removed.
    pub expires_at: Option<Millis>,
}

impl CustomerOverride {
    /// Whether it still applies at `now`.
    pub fn applies(&self, now: Millis) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// The limit of a customer's pool at `now`: their override while it applies,
/// else the offer's. Sessions held beyond it once an override expires are not
/// ended: the lower limit only refuses new ones.
pub fn session_limit(offer_limit: u32, customer: Option<&CustomerOverride>, now: Millis) -> u32 {
    match customer {
        Some(o) if o.applies(now) => o.session_limit,
        _ => offer_limit,
    }
}

/// Where an override is kept: one customer of one publisher, on one offer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OverrideKey {
    pub publisher_id: String,
    pub customer_id: String,
    pub offer_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(n: usize) -> Vec<ActiveSession> {
        (0..n)
            .map(|i| ActiveSession {
                id: SessionId::random(),
                name: format!("s{i}"),
            })
            .collect()
    }

    #[test]
    fn reject_refuses_evict_picks_the_oldest_and_a_full_monitor_pool_is_past_its_ceiling() {
        let held = active(3);
        assert_eq!(at_limit(LimitPolicy::Reject, &held), AtLimit::Refuse);
        assert_eq!(at_limit(LimitPolicy::EvictOldest, &held), AtLimit::Evict(held[0].id));
        assert_eq!(at_limit(LimitPolicy::Monitor, &held), AtLimit::PastCeiling);
    }

    #[test]
    fn evicting_from_an_empty_full_pool_refuses() {
        assert_eq!(at_limit(LimitPolicy::EvictOldest, &[]), AtLimit::Refuse);
    }

    #[test]
    fn monitor_asks_the_store_for_its_ceiling_and_counts_grants_past_the_limit() {
        let limit = 2;
        assert_eq!(admission_limit(LimitPolicy::Monitor, limit), limit + MONITOR_HEADROOM);
        assert_eq!(admission_limit(LimitPolicy::Reject, limit), limit);
        assert_eq!(admission_limit(LimitPolicy::EvictOldest, limit), limit);
        assert!(!granted_past_limit(LimitPolicy::Monitor, limit, limit - 1));
        assert!(granted_past_limit(LimitPolicy::Monitor, limit, limit));
        assert!(
            granted_past_limit(LimitPolicy::Monitor, 0, 0),
            "a limit of 0: every grant"
        );
        assert!(!granted_past_limit(LimitPolicy::Reject, limit, limit));
        assert_eq!(monitor_ceiling(u32::MAX), u32::MAX, "no overflow");
    }

    #[test]
    fn an_override_applies_until_it_expires_then_the_offer_limit_is_back() {
        let boost = CustomerOverride {
            session_limit: 5,
            expires_at: Some(10_000),
        };
        assert_eq!(session_limit(2, Some(&boost), 9_999), 5);
        assert_eq!(session_limit(2, Some(&boost), 10_000), 2);
        assert_eq!(session_limit(2, None, 0), 2);
        let forever = CustomerOverride {
            session_limit: 0,
            expires_at: None,
        };
        assert_eq!(
            session_limit(2, Some(&forever), u64::MAX),
            0,
            "an override may lower the limit too"
        );
    }

    #[test]
    fn policies_read_back_what_they_write_and_nothing_else() {
        for p in LimitPolicy::ALL {
            assert_eq!(LimitPolicy::parse(p.as_str()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        assert_eq!(LimitPolicy::parse("evict"), None);
        assert!(serde_json::from_str::<LimitPolicy>("\"kick\"").is_err());
        assert_eq!(LimitPolicy::default(), LimitPolicy::Reject);
    }
}
