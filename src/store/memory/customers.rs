//! Which pools each customer holds sessions in, so the pools-per-customer cap is
//! checked exactly without scanning every pool.
//!
//! A customer's entry is its lock: a pool of that customer is only ever added to
//! or removed from the pool map while the entry is held, so the list and the map
//! agree, and parallel first sessions on new offers are counted one at a time.
//! Lock order: a customer's entry first, then a pool; never the other way round.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use dashmap::DashMap;

use crate::domain::{Customer, PoolKey};

/// A pool's key seen as its customer only (publisher and customer id). It shares
/// the pool map's allocation, so tracking a customer copies none of its ids.
struct CustomerOf(Arc<PoolKey>);

impl PartialEq for CustomerOf {
    fn eq(&self, other: &Self) -> bool {
        self.0.publisher_id() == other.0.publisher_id() && self.0.customer_id() == other.0.customer_id()
    }
}

impl Eq for CustomerOf {}

impl Hash for CustomerOf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.publisher_id().hash(state);
        self.0.customer_id().hash(state);
    }
}

/// The keys of the pools a customer has in the pool map.
pub(super) type OpenPools = Vec<Arc<PoolKey>>;

pub(super) struct Customers(DashMap<CustomerOf, OpenPools, foldhash::fast::RandomState>);

impl Default for Customers {
    fn default() -> Self {
        Self(crate::store::roster::sharded())
    }
}

impl Customers {
    /// Runs `f` on the pools of `pool`'s customer, holding the customer's lock.
    /// A customer left with no pool is forgotten.
    pub(super) fn with<R>(&self, pool: &Arc<PoolKey>, f: impl FnOnce(&mut OpenPools) -> R) -> R {
        let (result, empty) = {
            let mut entry = self.0.entry(CustomerOf(Arc::clone(pool))).or_default();
            let result = f(entry.value_mut());
            (result, entry.is_empty())
        };
        if empty {
            // Re-checked under the lock: another request may have opened a pool since.
            self.0
                .remove_if(&CustomerOf(Arc::clone(pool)), |_, open| open.is_empty());
        }
        result
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// Gives back the map's room if a burst left it mostly empty.
    pub(super) fn trim(&self) -> bool {
        crate::store::roster::trim(&self.0)
    }

    /// The pools `customer` holds sessions in, as they are now. Read under the
    /// customer's lock and released before the caller visits them (lock order).
    pub(super) fn pools_of(&self, customer: &Customer) -> OpenPools {
        let probe = CustomerOf(Arc::new(PoolKey::new(customer, "")));
        self.0.get(&probe).map(|open| open.clone()).unwrap_or_default()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}
