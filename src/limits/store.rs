//! A keyed state store for `governor` that cannot grow without bound.
//!
//! governor's own DashMap store adds an entry for every key it is asked about, so a
//! flood of distinct keys (addresses of a large IPv6 network, customers minted by a
//! script) would grow it until the next clean-up. This one holds at most `cap` keys.
//! What a key it has no room for gets is the limiter's choice ([`Overflow`]); keys
//! already tracked keep their own bucket either way, so the customers and addresses
//! that were there before a flood are not slowed by it.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

/// What a key gets when the store is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// It is measured against one bucket shared by every such key: for keys an
    /// attacker can mint at will (source addresses), where letting them through
    /// would switch the limit off.
    Shared,
    /// It is let through, as a key seen for the first time would be: for keys that
    /// only a verified token creates (customers), where a shared bucket would let a
    /// busy hour of real customers, beyond the cap, throttle each other.
    Untracked,
}

/// Shards of the key map. With a million customers, forgetting idle keys and
/// shrinking the map rehashes it shard by shard, each under its write lock, and
/// each growth rehashes one shard: the fewer keys a shard holds, the shorter the
/// wait of a request whose key falls in it. An empty shard costs 128 bytes.
const SHARDS: usize = 64;

pub struct BoundedStore<K: Hash + Eq> {
    keys: DashMap<K, InMemoryState>,
    /// How many keys `keys` holds, kept as they come and go: `DashMap::len` locks
    /// every shard in turn, and a key seen for the first time asks it.
    count: AtomicUsize,
    overflow: InMemoryState,
    policy: Overflow,
    cap: usize,
}

impl<K: Hash + Eq> BoundedStore<K> {
    pub fn new(cap: usize, policy: Overflow) -> Self {
        Self {
            keys: DashMap::with_shard_amount(SHARDS),
            count: AtomicUsize::new(0),
            overflow: InMemoryState::default(),
            policy,
            cap,
        }
    }

    fn is_idle(state: &InMemoryState, drop_below: Nanos) -> bool {
        // The state's theoretical arrival time, read through the public interface: a
        // decision that always declines replaces nothing.
        let tat = state.measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>);
        match tat {
            Err(Some(tat)) => tat <= drop_below,
            _ => true,
        }
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.keys.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if self.count.load(Ordering::Relaxed) >= self.cap {
            return match self.policy {
                Overflow::Shared => self.overflow.measure_and_replace(&NotKeyed::NonKey, f),
                // Decided as for a fresh key, and nothing is kept.
                Overflow::Untracked => f(None).map(|(decision, _)| decision),
            };
        }
        let state = self.keys.entry(key.clone()).or_insert_with(|| {
            self.count.fetch_add(1, Ordering::Relaxed);
            InMemoryState::default()
        });
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.keys.retain(|_, state| {
            let idle = Self::is_idle(state, drop_below);
            if idle {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            !idle
        });
    }

    fn shrink_to_fit(&self) {
        self.keys.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
