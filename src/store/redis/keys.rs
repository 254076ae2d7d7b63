//! Every key drisc writes in Redis, in one place: reading this file tells what a
//! `redis-cli --scan --pattern 'drisc:*'` shows.
//!
//! | key                              | type   | what                                          |
//! |----------------------------------|--------|-----------------------------------------------|
//! | `drisc:{<shard>}:cs:<customer>`  | hash   | a customer's sessions, all offers: compact session id → packed record with its offer (`record.rs`) |
//! | `drisc:{<shard>}:ix:<bucket>`    | hash   | one of the shard's [`INDEX_BUCKETS`] session indexes: compact session id → its customer ([`customer_tag`]), for operators' look-ups |
//! | `drisc:{<shard>}:t:<session id>` | string | a tombstone (compact id): why a session ended (`T<name>`, `E`) |
//! | `drisc:{<shard>}:alive:<node>`   | string | a node (hex) vouches for its live sessions in the shard while it lives (`r`: its TTL says until when; [`MOVED`]: the same, and another node ended or moved one of them; a number: until then, in the caller's clock) |
//! | `drisc:{<shard>}:alive:<node>:moved` | set | the compact ids of those sessions, until the node reads them at its next vouch ([`moved`]; one PONG timeout at most) |
//! | `drisc:{<shard>}:epoch`          | string | present while the shard's data is kept        |
//! | `drisc:node:<node>`              | string | a node's lease on its id ([`node`])           |
//! | `drisc:inbox:<node>`             | list   | orders for a node's sockets ([`node`])        |
//! | `drisc:purge`                    | string | the node running this purge round ([`PURGE_LEASE`]) |
//!
//! # Why this layout
//!
//! Every script touches the keys of one hash slot, so the same scripts run on a
//! single Redis and on a Redis Cluster. Customers are spread over
//! [`SHARDS`](crate::domain::SHARDS) shards by a hash of their ids that never
//! changes ([`crate::domain::Customer::shard`]); every key of a shard carries
//! the shard as its hash tag `{<shard>}`, so a shard lives in one slot and an
//! operation sees its customer's sessions, the shard's index, the liveness of
//! the nodes holding them and the shard's epoch atomically. A session id
//! carries its shard ([`crate::domain::SessionId::shard`]): a look-up by id
//! reads one small hash in the right slot, where a key per session used to cost
//! a key's overhead for every session.
//!
//! One hash per customer rather than one per pool plus a set of pools: most
//! customers hold one or two sessions, and a key costs more Redis memory than
//! the record it holds; the cap on pools per customer is counted from the
//! offers of the customer's live records, exactly.
//!
//! A node vouches for its live sessions per shard it holds sessions in (one
//! key per shard and node, set with a TTL of one PONG timeout: one plain
//! command, `SET … XX GET`, no script, and nothing to prune: a stopped node's
//! keys expire by themselves; the epoch is read only when that key was gone),
//! and each shard has its own epoch, so a
//! shard that comes back empty is noticed, and restored from the nodes, for its
//! own sessions alone.
//!
//! 256 shards: vouching costs a node one command per shard it holds sessions
//! in, per third of a PONG timeout (see `refresh.rs`), so fewer shards cost
//! less where sessions are few (at 12,000 sessions on 3 nodes, 1024 shards
//! made it about 4 commands per session-minute, 256 about 1); and 256 slots
//! spread over a cluster's masters evenly enough up to a few dozen masters.
//! Node-level keys (lease, inbox) are only ever read or written by
//! single-key commands and stay outside the shards.
//!
//! # Memory
//!
//! A small hash is kept by Redis as a listpack (`hash-max-listpack-entries`
//! 512 and `hash-max-listpack-value` 64 by default), about half what the same
//! entries cost in a hash table; the layout is made to stay within those
//! defaults, so operators change nothing. Inside Redis a session id is
//! [`compact`] (22 characters for the UUID's 36; players and the API still
//! see the UUID), and a record's times are in base 36 (`record.rs`), so a
//! record with a name of 20 bytes or so stays under 64. A shard's index is
//! split in [`INDEX_BUCKETS`] hashes by the id's first character, so each
//! stays a listpack up to `256 × 8 × 512` ≈ a million sessions (one hash a
//! shard turned into a hash table past 131,072 sessions: +58 B a session,
//! `bench/cluster-keys`), at a fixed cost of 2,048 small keys.
//!
//! The customer's hash (`cs:`) and the index buckets (`ix:<n>`) are named
//! apart from the layout before compact ids (`c:`, `ix`), whose records this
//! code would misread: the two layouts never see each other's sessions.

use crate::domain::{PoolKey, SessionId};

/// The hash tag of shard `shard`.
fn shard_tag(shard: u16) -> String {
    format!("drisc:{{{shard}}}:")
}

/// The customer of a pool as the keys and the index name it: each id prefixed
/// by its length, so no two customers share keys whatever characters their ids
/// contain.
pub fn customer_tag(pool: &PoolKey) -> String {
    let (p, c) = (pool.publisher_id(), pool.customer_id());
    format!("{}:{p}|{}:{c}", p.len(), c.len())
}

/// The hash of the customer's sessions, every offer's.
pub fn customer(pool: &PoolKey) -> String {
    format!("{}cs:{}", shard_tag(pool.shard()), customer_tag(pool))
}

/// What the key of every customer of `shard` starts with (the index's values follow).
pub fn customer_prefix(shard: u16) -> String {
    format!("{}cs:", shard_tag(shard))
}

/// How many hashes a shard's session index is split in (see "Memory" above).
/// The scripts compute the same bucket (`scripts.rs`, `ix_of`).
pub const INDEX_BUCKETS: u8 = 8;

/// The base64url alphabet, in order: a compact id's characters.
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A session id as Redis keeps it: the UUID's 16 bytes in base64url without
/// padding (22 characters). Only inside Redis; the wire keeps the UUID text.
pub fn compact(id: SessionId) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.0.as_bytes())
}

/// A session id from its [`compact`] form; `None` if the text is not one.
pub fn parse_compact(text: &str) -> Option<SessionId> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
    uuid::Uuid::from_slice(&bytes).ok().map(SessionId)
}

/// The index bucket of a session whose compact id is `compact`: its first
/// character's value modulo [`INDEX_BUCKETS`] (the UUID's first 6 bits, random).
fn bucket(compact: &str) -> u8 {
    let first = compact.as_bytes().first().copied().unwrap_or(b'A');
    let value = B64.iter().position(|c| *c == first).unwrap_or(0) as u8;
    value % INDEX_BUCKETS
}

/// What a shard's index buckets start with (the scripts append the bucket).
pub fn index_prefix(shard: u16) -> String {
    format!("{}ix:", shard_tag(shard))
}

/// The index bucket that names session `id`: compact id → [`customer_tag`].
pub fn index(id: SessionId) -> String {
    format!("{}{}", index_prefix(id.shard()), bucket(&compact(id)))
}

pub fn tombstone(pool: &PoolKey, id: SessionId) -> String {
    format!("{}{}", tombstone_prefix(pool), compact(id))
}

/// What the tombstone keys of a shard's sessions start with (the script that
/// ends every session of a pool appends the ids).
pub fn tombstone_prefix(pool: &PoolKey) -> String {
    format!("{}t:", shard_tag(pool.shard()))
}

/// What the liveness keys of a shard's nodes start with: the node follows, in
/// hex, as the scripts read it off a holder (see `record.rs`).
pub fn alive_prefix(shard: u16) -> String {
    format!("{}alive:", shard_tag(shard))
}

/// A node's liveness in a shard: while it lives, the node vouches for its live
/// sessions there.
pub fn alive(shard: u16, node: u64) -> String {
    format!("{}{node:x}", alive_prefix(shard))
}

/// What a node's liveness key in a shard holds once a script ended or moved a
/// session that node holds there (the scripts' `flag_moved`; its next vouch
/// reads it and writes `r` back). A number, not a letter: a node of the
/// previous release, sharing Redis during a rolling restart, reads any value
/// but `r` as a deadline in ms, and this one (the year 2255) makes it count the
/// flagged node's sessions alive for as long as the key lives, as `r` does (the
/// flag keeps the key's TTL). The caller's clock (tests) writes integers, never
/// this.
pub const MOVED: &str = "9e15";

/// The compact ids of the sessions node `node` holds in a shard that another
/// node ended or moved since the node last read it (a set, living one PONG
/// timeout; see [`MOVED`]): the node checks those at once.
pub fn moved(shard: u16, node: u64) -> String {
    format!("{}:moved", alive(shard, node))
}

/// Present while the shard keeps its data; a node that finds it changed knows
/// the shard's Redis restarted empty and restores the sessions it holds there.
pub fn epoch(shard: u16) -> String {
    format!("{}epoch", shard_tag(shard))
}

/// Reads a located session's pool back from its [`customer_tag`] and offer;
/// `None` if the tag is not one.
pub fn parse_customer_tag(tag: &str, offer: &str) -> Option<PoolKey> {
    fn sized(text: &str) -> Option<(&str, &str)> {
        let (len, rest) = text.split_once(':')?;
        let len: usize = len.parse().ok()?;
        Some((rest.get(..len)?, rest.get(len..)?))
    }
    let (publisher, rest) = sized(tag)?;
    let (customer, rest) = sized(rest.strip_prefix('|')?)?;
    if !rest.is_empty() {
        return None;
    }
    Some(PoolKey::from_ids(publisher, customer, offer))
}

/// Held (`SET NX PX`, one purge interval) by the node that runs the current
/// purge round (`purge.rs`), so that one node walks the shards per interval
/// however many there are. Outside the shards: one plain command reads and
/// writes it.
pub const PURGE_LEASE: &str = "drisc:purge";

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
        PoolKey::from_ids(publisher, customer, offer)
    }

    /// The hash tag Redis Cluster hashes: the text between the first `{` and the next `}`.
    fn tag(k: &str) -> String {
        let open = k.find('{').unwrap();
        let close = open + k[open..].find('}').unwrap();
        k[open..=close].to_owned()
    }

    #[test]
    fn ids_that_a_naive_join_would_confuse_get_distinct_keys() {
        assert_ne!(customer(&key("a:b", "c", "o")), customer(&key("a", "b:c", "o")));
        assert_ne!(customer(&key("a|1:b", "c", "o")), customer(&key("a", "1:b|c", "o")));
    }

    #[test]
    fn every_key_a_script_touches_shares_the_shard_of_its_customer_and_of_its_session_ids() {
        let p = key("pub", "cus{x}", "off:er");
        let id = SessionId::for_customer(&p.owner());
        let shard = p.shard();
        assert_eq!(id.shard(), shard);
        let t = tag(&customer(&p));
        assert_eq!(t, format!("{{{shard}}}"));
        for other in [
            index(id),
            index_prefix(id.shard()),
            tombstone(&p, id),
            alive(shard, 0xabc),
            alive_prefix(shard),
            epoch(shard),
            customer_prefix(shard),
        ] {
            assert_eq!(tag(&other), t, "{other}");
        }
        // The index's value names the customer's hash after the shard's prefix.
        assert_eq!(format!("{}{}", customer_prefix(shard), customer_tag(&p)), customer(&p));
    }

    #[test]
    fn a_customer_tag_reads_back_as_its_pool_whatever_its_ids_contain() {
        for p in [key("pub", "cus", "S1"), key("a|1:b", "c|", "o|f:f"), key("ü", "", "")] {
            assert_eq!(parse_customer_tag(&customer_tag(&p), p.offer_id()), Some(p));
        }
        assert_eq!(parse_customer_tag("3:pub|9:short", "o"), None);
        assert_eq!(parse_customer_tag("3:pub|1:cX", "o"), None);
        assert_eq!(parse_customer_tag("{\"publisher_id\":\"p\"}", "o"), None);
    }

    #[test]
    fn a_compact_id_reads_back_and_is_shorter_and_its_buckets_spread() {
        let mut counts = [0u32; INDEX_BUCKETS as usize];
        for _ in 0..4096 {
            let id = SessionId::random();
            let c = compact(id);
            assert_eq!(c.len(), 22);
            assert_eq!(parse_compact(&c), Some(id));
            counts[bucket(&c) as usize] += 1;
            assert!(index(id).ends_with(&format!("ix:{}", bucket(&c))));
        }
        assert_eq!(
            parse_compact(&SessionId::random().to_string()),
            None,
            "a UUID's text is not compact"
        );
        // 512 a bucket on average: none far from it.
        assert!(counts.iter().all(|n| (384..640).contains(n)), "{counts:?}");
    }

    #[test]
    fn a_nodes_liveness_key_names_it_as_the_scripts_read_a_holder() {
        let holder = crate::domain::Holder(0xabc << crate::domain::Holder::NODE_SHIFT | 7);
        assert_eq!(alive(5, holder.node()), "drisc:{5}:alive:abc");
        // The scripts take what is left of the hex holder after its 10 socket digits.
        assert_eq!(crate::domain::Holder::NODE_SHIFT / 4, 10);
    }
}
