//! Rate limits: how often one customer may ask for sessions, and how often one
//! source address may fail to authenticate before it is refused outright.
//!
//! Both are keyed GCRA limiters from `governor`, each in a [`BoundedStore`] that
//! holds at most `limits.max_keys` keys and forgets idle ones from a periodic task
//! ([`crate::tasks::rate_limits`]). Each key has its own bucket, so one customer or
//! address that floods never slows another: a refused request costs one map
//! look-up and no signature check, store call or database read.

mod source;
mod store;

use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};

pub use source::{SourceKey, TrustedProxies};
use store::{BoundedStore, Overflow};

use crate::config::LimitSettings;
use crate::domain::Customer;
use crate::telemetry::throttle::{self, Throttle};

type KeyedLimiter<K> = RateLimiter<K, BoundedStore<K>, DefaultClock>;

/// A request refused by a rate limit, and when it could be served again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

/// Where a request came from, as far as the limits are concerned.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    addr: IpAddr,
    key: SourceKey,
}

pub struct Limits {
    enabled: bool,
    /// Keyed by a keyed hash of (publisherId, customerId): eight bytes per customer
    /// whatever the length of its ids.
    customers: KeyedLimiter<u64>,
    customer_hasher: std::hash::RandomState,
    failures: KeyedLimiter<SourceKey>,
    /// Addresses past their failure budget, and until when. The limiter alone cannot
    /// say "over" without spending, and a valid token must not spend from it.
    blocked: DashMap<SourceKey, Instant>,
    max_keys: usize,
    proxies: TrustedProxies,
    /// Addresses newly blocked: many addresses at once (a botnet, an IPv6
    /// range) would be a line each; one per 10 s with the count, the first of a
    /// burst's with its address.
    newly_blocked: Throttle,
}

const BLOCKED_LINE: &str = "too many failed authentications: addresses refused with 429 until their budget refills \
     (one line per 10 s at most, with the count since the last; each at debug)";

impl Limits {
    /// Built from validated settings (see `Settings::validate`).
    pub fn new(settings: &LimitSettings) -> anyhow::Result<Self> {
        let nonzero = |name: &str, n: u32| {
            NonZeroU32::new(n).ok_or_else(|| anyhow::anyhow!("invalid configuration: {name} must be at least 1"))
        };
        let customer_quota = Quota::per_second(nonzero("limits.customer_per_second", settings.customer_per_second)?)
            .allow_burst(nonzero("limits.customer_burst", settings.customer_burst)?);
        let failure_quota = Quota::per_minute(nonzero(
            "limits.failed_auth_per_minute",
            settings.failed_auth_per_minute,
        )?)
        .allow_burst(nonzero("limits.failed_auth_burst", settings.failed_auth_burst)?);
        let clock = DefaultClock::default();
        Ok(Self {
            enabled: settings.enabled,
            customers: RateLimiter::new(
                customer_quota,
                BoundedStore::new(settings.max_keys, Overflow::Untracked),
                clock.clone(),
            ),
            customer_hasher: std::hash::RandomState::new(),
            failures: RateLimiter::new(
                failure_quota,
                BoundedStore::new(settings.max_keys, Overflow::Shared),
                clock,
            ),
            blocked: DashMap::new(),
            max_keys: settings.max_keys,
            proxies: TrustedProxies::new(settings.trusted_networks()?),
            newly_blocked: Throttle::new(throttle::EVERY, |addresses| tracing::warn!(addresses, "{BLOCKED_LINE}")),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Spends one request of this customer's budget for `POST /sessions` and `/takeover`.
    pub fn admit_customer(&self, customer: &Customer) -> Result<(), Refused> {
        if !self.enabled {
            return Ok(());
        }
        let key = self
            .customer_hasher
            .hash_one((&customer.publisher_id, &customer.customer_id));
        self.customers.check_key(&key).map_err(|not_until| {
            let retry_after = not_until.wait_time_from(self.customers.clock().now());
            tracing::debug!(
                publisher = %customer.publisher_id,
                customer = %customer.customer_id,
                ?retry_after,
                "customer rate limited"
            );
            Refused { retry_after }
        })
    }

    /// The source of a request whose TCP peer is `peer`. `None` when the peer is
    /// unknown (a transport that does not record it): such requests are not limited
    /// by address, rather than all charged to one shared key.
    pub fn source(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<Source> {
        if !self.enabled {
            return None;
        }
        let addr = self.proxies.source(peer?.ip(), headers);
        Some(Source {
            addr,
            key: SourceKey::of(addr),
        })
    }

    /// Refuses a source that failed to authenticate too often, before any key or
    /// signature is looked at.
    pub fn check_source(&self, source: Option<Source>) -> Result<(), Refused> {
        let Some(source) = source else { return Ok(()) };
        let now = Instant::now();
        let until = match self.blocked.get(&source.key) {
            None => return Ok(()),
            Some(until) => *until,
        };
        if until > now {
            return Err(Refused {
                retry_after: until - now,
            });
        }
        self.blocked.remove_if(&source.key, |_, until| *until <= now);
        Ok(())
    }

    /// Charges a failed authentication to its source. `Err` when that was one too
    /// many: the source is then refused until its budget has refilled by one.
    pub fn charge_failure(&self, source: Option<Source>) -> Result<(), Refused> {
        let Some(source) = source else { return Ok(()) };
        let Err(not_until) = self.failures.check_key(&source.key) else {
            return Ok(());
        };
        let retry_after = not_until.wait_time_from(self.failures.clock().now());
        // Bounded like the limiters: past the cap, an address is still refused on
        // each failure, just not blocked for its valid calls.
        if self.blocked.len() < self.max_keys || self.blocked.contains_key(&source.key) {
            let fresh = self.blocked.insert(source.key, Instant::now() + retry_after).is_none();
            if fresh {
                tracing::debug!(
                    source = %source.addr,
                    ?retry_after,
                    "too many failed authentications from this address: it is refused with 429 until its budget refills"
                );
                if let Some(addresses) = self.newly_blocked.hit() {
                    tracing::warn!(addresses, source = %source.addr, ?retry_after, "{BLOCKED_LINE}");
                }
            }
        }
        Err(Refused { retry_after })
    }

    /// Forgets keys idle long enough that their bucket is full again, and expired
    /// blocks, and gives the memory back.
    pub fn forget_idle(&self) {
        self.customers.retain_recent();
        self.customers.shrink_to_fit();
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
        self.blocked.shrink_to_fit();
    }

    /// How many keys the limiters hold: customers, failing addresses, blocked addresses.
    pub fn tracked(&self) -> (usize, usize, usize) {
        (self.customers.len(), self.failures.len(), self.blocked.len())
    }
}

impl Refused {
    /// Whole seconds for `Retry-After`, rounded up and never 0: "retry now" would
    /// only be refused again.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn limits(configure: impl FnOnce(&mut LimitSettings)) -> Limits {
        let mut s = Settings::defaults().unwrap().limits;
        configure(&mut s);
        Limits::new(&s).unwrap()
    }

    fn customer(id: &str) -> Customer {
        Customer {
            publisher_id: "p".into(),
            customer_id: id.into(),
        }
    }

    fn from(addr: &str) -> Option<Source> {
        let ip: IpAddr = addr.parse().unwrap();
        Some(Source {
            addr: ip,
            key: SourceKey::of(ip),
        })
    }

    #[test]
    fn a_customer_past_its_burst_is_refused_while_another_is_not() {
        let l = limits(|s| s.customer_burst = 3);
        for _ in 0..3 {
            assert!(l.admit_customer(&customer("a")).is_ok());
        }
        let refused = l.admit_customer(&customer("a")).unwrap_err();
        assert!(refused.retry_after <= Duration::from_secs(1), "{refused:?}");
        assert_eq!(refused.retry_after_secs(), 1);
        assert!(l.admit_customer(&customer("b")).is_ok());
    }

    #[test]
    fn at_the_key_cap_new_customers_are_not_throttled_by_each_other_and_known_ones_keep_their_bucket() {
        let l = limits(|s| {
            s.max_keys = 16;
            s.customer_burst = 2;
        });
        for i in 0..16 {
            assert!(l.admit_customer(&customer(&format!("known{i}"))).is_ok());
        }
        assert_eq!(l.tracked().0, 16);
        // Real customers beyond the cap: each is let through as a newcomer.
        for i in 0..100 {
            assert!(l.admit_customer(&customer(&format!("new{i}"))).is_ok());
        }
        assert!(l.admit_customer(&customer("known0")).is_ok());
        assert!(
            l.admit_customer(&customer("known0")).is_err(),
            "known0's own burst of 2 is spent"
        );
        assert_eq!(l.tracked().0, 16, "the store never grows past its cap");
    }

    #[test]
    fn at_the_key_cap_new_addresses_share_one_bucket_of_failures() {
        let l = limits(|s| {
            s.max_keys = 16;
            s.failed_auth_burst = 2;
        });
        for i in 0..16 {
            assert!(l.charge_failure(from(&format!("192.0.2.{i}"))).is_ok());
        }
        // Addresses cost an attacker nothing: beyond the cap they share one budget.
        assert!(l.charge_failure(from("198.51.100.1")).is_ok());
        assert!(l.charge_failure(from("198.51.100.2")).is_ok());
        assert!(l.charge_failure(from("198.51.100.3")).is_err());
    }

    #[test]
    fn an_address_past_its_failures_is_blocked_even_for_valid_calls_and_others_are_not() {
        let l = limits(|s| s.failed_auth_burst = 2);
        let (bad, good) = (from("192.0.2.1"), from("192.0.2.2"));
        assert!(l.charge_failure(bad).is_ok());
        assert!(l.charge_failure(bad).is_ok());
        assert!(l.check_source(bad).is_ok(), "at the budget, not past it");
        let refused = l.charge_failure(bad).unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(1), "{refused:?}");
        assert!(l.check_source(bad).is_err());
        assert!(l.check_source(good).is_ok());
        assert!(l.check_source(None).is_ok());
    }

    #[test]
    fn switched_off_nothing_is_limited() {
        let l = limits(|s| {
            s.enabled = false;
            s.customer_burst = 1;
        });
        for _ in 0..100 {
            assert!(l.admit_customer(&customer("a")).is_ok());
        }
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert!(l.source(Some(peer), &HeaderMap::new()).is_none());
    }

    #[test]
    fn idle_keys_are_forgotten_and_busy_ones_kept() {
        let l = limits(|s| {
            s.customer_per_second = 20;
            s.customer_burst = 5;
        });
        assert!(l.admit_customer(&customer("idle")).is_ok());
        std::thread::sleep(Duration::from_millis(150));
        for _ in 0..5 {
            let _ = l.admit_customer(&customer("busy"));
        }
        l.forget_idle();
        assert_eq!(l.tracked().0, 1, "the idle key is forgotten, the drained one kept");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let secs = |ms| {
            Refused {
                retry_after: Duration::from_millis(ms),
            }
            .retry_after_secs()
        };
        assert_eq!(secs(0), 1);
        assert_eq!(secs(400), 1);
        assert_eq!(secs(1000), 1);
        assert_eq!(secs(5001), 6);
    }
}
