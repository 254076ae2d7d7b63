//! Every key drisc writes in Redis, in one place: reading this file tells what a
//! `redis-cli --scan --pattern 'drisc:*'` shows.
//!
//! | key                              | type       | what                                          |
//! |----------------------------------|------------|-----------------------------------------------|
//! | `drisc:{tag}:s:<offer>`          | hash       | a pool: session id → packed record (`record.rs`) |
//! | `drisc:{tag}:pools`              | sorted set | the customer's offers with a pool, scored by the latest its sessions may live |
//! | `drisc:{tag}:t:<session id>`     | string     | a tombstone: why a session ended (`T<name>`, `E`) |
//! | `drisc:sid:<session id>`         | string     | the pool of a session ([`index_value`]), for operators |
//! | `drisc:alive:<node, hex>`        | string     | until when (ms) a node vouches for its live sessions |
//! | `drisc:epoch`                    | string     | present while Redis keeps its data            |
//! | `drisc:node:<node>`              | string     | a node's lease on its id ([`node`])           |
//! | `drisc:inbox:<node>`             | list       | orders for a node's sockets ([`node`])        |
//!
//! `{tag}` is the customer's hash tag: every key of one customer is in one slot of
//! a Redis Cluster, so one script may touch them all atomically.

use crate::domain::{PoolKey, SessionId};

/// The hash tag of a customer: each id prefixed by its length, so no two
/// customers share keys whatever characters their ids contain. The offer stays
/// outside the tag: every pool of a customer is in the slot of its set of pools.
fn customer_tag(pool: &PoolKey) -> String {
    let (p, c) = (&pool.publisher_id, &pool.customer_id);
    format!("{}:{p}|{}:{c}", p.len(), c.len())
}

/// The pool's session hash. Everything after the tag's end (fixed by its lengths)
/// is the offer id, so distinct pools never share a key.
pub fn pool(pool: &PoolKey) -> String {
    format!("drisc:{{{}}}:s:{}", customer_tag(pool), pool.offer_id)
}

/// What the key of every pool of `customer` starts with: the offer id follows.
#[cfg(test)]
fn pool_prefix(customer: &crate::domain::Customer) -> String {
    pool(&PoolKey::new(customer, ""))
}

/// The customer's pools: each pool's offer id, scored by the latest its sessions
/// may live. (The scripts find a pool's key from this one's: see `scripts.rs`.)
pub fn pools(pool: &PoolKey) -> String {
    format!("drisc:{{{}}}:pools", customer_tag(pool))
}

pub fn tombstone(pool: &PoolKey, id: SessionId) -> String {
    format!("{}{id}", tombstone_prefix(pool))
}

/// What the tombstone keys of a customer's sessions start with (the script that
/// ends every session of a pool appends the ids).
pub fn tombstone_prefix(pool: &PoolKey) -> String {
    format!("drisc:{{{}}}:t:", customer_tag(pool))
}

/// Where an operator's look-up by session id finds the pool. In a slot of its own
/// (no hash tag): the id is all the operator knows.
pub fn session_index(id: SessionId) -> String {
    format!("drisc:sid:{id}")
}

/// The index's value: the customer's tag, then the offer (the tag's lengths say
/// where each id ends), a third of the JSON it replaces.
pub fn index_value(pool: &PoolKey) -> String {
    format!("{}|{}", customer_tag(pool), pool.offer_id)
}

/// Reads [`index_value`] back; `None` if it is not one.
pub fn parse_index_value(value: &str) -> Option<PoolKey> {
    fn sized(text: &str) -> Option<(&str, &str)> {
        let (len, rest) = text.split_once(':')?;
        let len: usize = len.parse().ok()?;
        Some((rest.get(..len)?, rest.get(len..)?))
    }
    let (publisher, rest) = sized(value)?;
    let (customer, rest) = sized(rest.strip_prefix('|')?)?;
    let offer = rest.strip_prefix('|')?;
    Some(PoolKey {
        publisher_id: publisher.to_owned(),
        customer_id: customer.to_owned(),
        offer_id: offer.to_owned(),
    })
}

/// What a node's liveness key starts with; the node's id follows in hex, as the
/// scripts read it off a holder (hex too: `record.rs`).
pub const ALIVE_PREFIX: &str = "drisc:alive:";

/// A node's liveness: until when (ms) it vouches for the live sessions its
/// sockets hold, rewritten every refresh round.
pub fn alive(node: u64) -> String {
    format!("{ALIVE_PREFIX}{node:x}")
}

/// Present while Redis keeps its data; a node that finds it missing knows Redis
/// restarted empty and restores the sessions its sockets hold.
pub const EPOCH: &str = "drisc:epoch";

/// A node's lease on its id and its inbox: the names and how long each lives.
pub mod node {
    /// How long a node's claim on its id lives unless renewed; each refresh round
    /// renews it, so a node that stops frees its id a minute later.
    pub const LEASE_TTL_MS: u64 = 60_000;
    /// How long an unread inbox survives its node: as long as the lease, so no
    /// new node with the same id inherits old orders.
    pub const INBOX_TTL_MS: u64 = LEASE_TTL_MS;

    /// The lease: set (NX) when a node claims its id, renewed by its refresh loop.
    pub fn lease(node: u64) -> String {
        format!("drisc:node:{node}")
    }

    pub fn inbox(node: u64) -> String {
        format!("drisc:inbox:{node}")
    }

    /// The name the inbox connection gives itself (`CLIENT LIST` shows it).
    pub fn inbox_client_name(node: u64) -> String {
        format!("drisc-inbox-{node}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(publisher: &str, customer: &str, offer: &str) -> PoolKey {
        PoolKey {
            publisher_id: publisher.into(),
            customer_id: customer.into(),
            offer_id: offer.into(),
        }
    }

    #[test]
    fn ids_that_a_naive_join_would_confuse_get_distinct_keys() {
        assert_ne!(pool(&key("a:b", "c", "o")), pool(&key("a", "b:c", "o")));
        assert_ne!(pools(&key("a|1:b", "c", "o")), pools(&key("a", "1:b|c", "o")));
    }

    #[test]
    fn every_key_of_a_customer_shares_its_hash_tag_and_the_offer_is_read_back() {
        let p = key("pub", "cus{x}", "off:er");
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        let id = SessionId::random();
        assert_eq!(tag(&pool(&p)), tag(&pools(&p)));
        assert_eq!(tag(&pool(&p)), tag(&tombstone(&p, id)));
        let prefix = |c: &str| {
            pool_prefix(&crate::domain::Customer {
                publisher_id: "pub".into(),
                customer_id: c.into(),
            })
        };
        assert_eq!(pool(&p).strip_prefix(&prefix("cus{x}")), Some("off:er"));
        assert_eq!(pool(&p).strip_prefix(&prefix("cus")), None);
    }

    #[test]
    fn an_index_value_reads_back_as_its_pool_whatever_its_ids_contain() {
        for p in [key("pub", "cus", "S1"), key("a|1:b", "c|", "o|f:f"), key("ü", "", "")] {
            assert_eq!(parse_index_value(&index_value(&p)), Some(p));
        }
        assert_eq!(parse_index_value("3:pub|9:short|o"), None);
        assert_eq!(parse_index_value("{\"publisher_id\":\"p\"}"), None);
    }

    #[test]
    fn a_nodes_liveness_key_names_it_as_the_scripts_read_a_holder() {
        let holder = crate::domain::Holder(0xabc << crate::domain::Holder::NODE_SHIFT | 7);
        assert_eq!(alive(holder.node()), "drisc:alive:abc");
        // The scripts take what is left of the hex holder after its 10 socket digits.
        assert_eq!(crate::domain::Holder::NODE_SHIFT / 4, 10);
    }
}
