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

/// What to do once the store refused a session because its pool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtLimit {
    /// Answer 409 with the takeover list.
    Refuse,
    /// Take this session over with the new one (the store's atomic takeover).
    Evict(SessionId),
    /// Admit it anyway, past the limit, and count the would-be refusal.
    AdmitPastLimit,
    /// Refuse it: `monitor` has let the pool as far past its limit as it ever
    /// does ([`monitor_ceiling`]).
    PastCeiling,
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

/// What `policy` does with a full pool of limit `limit` holding `active` (in
/// creation order, the oldest first, as every store lists them). A pool with a
/// limit of zero holds nobody to evict: it refuses, whatever the policy but
/// `monitor`.
pub fn at_limit(policy: LimitPolicy, limit: u32, active: &[ActiveSession]) -> AtLimit {
    match policy {
        LimitPolicy::Reject => AtLimit::Refuse,
        LimitPolicy::Monitor if active.len() >= monitor_ceiling(limit) as usize => AtLimit::PastCeiling,
        LimitPolicy::Monitor => AtLimit::AdmitPastLimit,
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
    fn reject_refuses_monitor_admits_and_evict_picks_the_oldest() {
        let held = active(3);
        assert_eq!(at_limit(LimitPolicy::Reject, 3, &held), AtLimit::Refuse);
        assert_eq!(at_limit(LimitPolicy::Monitor, 3, &held), AtLimit::AdmitPastLimit);
        assert_eq!(at_limit(LimitPolicy::EvictOldest, 3, &held), AtLimit::Evict(held[0].id));
    }

    #[test]
    fn evicting_from_an_empty_full_pool_refuses() {
        assert_eq!(at_limit(LimitPolicy::EvictOldest, 0, &[]), AtLimit::Refuse);
        assert_eq!(at_limit(LimitPolicy::Monitor, 0, &[]), AtLimit::AdmitPastLimit);
    }

    #[test]
    fn monitor_refuses_once_the_pool_is_its_headroom_past_the_limit() {
        let limit = 2;
        let below = active((limit + MONITOR_HEADROOM - 1) as usize);
        assert_eq!(at_limit(LimitPolicy::Monitor, limit, &below), AtLimit::AdmitPastLimit);
        let at = active((limit + MONITOR_HEADROOM) as usize);
        assert_eq!(at_limit(LimitPolicy::Monitor, limit, &at), AtLimit::PastCeiling);
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
