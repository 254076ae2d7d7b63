//! Sessions, the pools they count against, and the customers who own them.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::clock::Millis;

/// The end user on whose behalf a player asks for sessions, as named by a
/// verified customer token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Customer {
    pub publisher_id: String,
    pub customer_id: String,
}

/// How many shards customers are spread over. Part of every session id and of
/// the Redis keys: it never changes once shipped (a change would move every
/// customer to another shard while their sessions live in the old one).
pub const SHARDS: u16 = 256;

/// The shard of a customer: FNV-1a (64 bits) over both ids, each prefixed by
/// its length so no two customers are confused, reduced to [`SHARDS`]. Written
/// out rather than taken from a hasher of the standard library, whose output
/// may change between Rust releases: this one must be the same on every node,
/// forever.
fn shard_of(publisher_id: &str, customer_id: &str) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in [publisher_id, customer_id] {
        let len = (part.len() as u64).to_le_bytes();
        for byte in len.iter().chain(part.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    (hash % u64::from(SHARDS)) as u16
}

impl Customer {
    /// Which of the [`SHARDS`] this customer's sessions are kept in: a
    /// partitioned store keeps each shard in one place, and the customer's
    /// session ids say which ([`SessionId::shard`]).
    pub fn shard(&self) -> u16 {
        shard_of(&self.publisher_id, &self.customer_id)
    }
}

/// The set of sessions that share one limit: one customer of one publisher on one offer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PoolKey {
    pub publisher_id: String,
    pub customer_id: String,
    pub offer_id: String,
}

impl PoolKey {
    pub fn new(customer: &Customer, offer_id: impl Into<String>) -> Self {
        Self {
            publisher_id: customer.publisher_id.clone(),
            customer_id: customer.customer_id.clone(),
            offer_id: offer_id.into(),
        }
    }

    /// The shard of the pool's customer ([`Customer::shard`]).
    pub fn shard(&self) -> u16 {
        shard_of(&self.publisher_id, &self.customer_id)
    }

    pub fn owner(&self) -> Customer {
        Customer {
            publisher_id: self.publisher_id.clone(),
            customer_id: self.customer_id.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl SessionId {
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// A random id that carries `shard` (taken modulo [`SHARDS`]) in the low
    /// bits of its last two bytes, so a store partitioned by customer finds a
    /// session from its id alone. Those bits are random in a version 4 UUID,
    /// so the id stays one (114 random bits are left), and players see no
    /// difference.
    pub fn random_in(shard: u16) -> Self {
        let mut bytes = *Uuid::new_v4().as_bytes();
        let mask = SHARDS - 1;
        let tail = u16::from_be_bytes([bytes[14], bytes[15]]) & !mask | (shard & mask);
        [bytes[14], bytes[15]] = tail.to_be_bytes();
        Self(Uuid::from_bytes(bytes))
    }

    /// A random id for a session of `customer` ([`SessionId::random_in`] its shard).
    pub fn for_customer(customer: &Customer) -> Self {
        Self::random_in(customer.shard())
    }

    /// `f` of the id's text as `Display` writes it (hyphenated, lower case), made
    /// without the formatter: the granted answer and every event write it.
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        f(self.0.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
    }

    /// The shard an id was made in by [`SessionId::random_in`] (of any other id,
    /// a shard that means nothing).
    pub fn shard(&self) -> u16 {
        let bytes = self.0.as_bytes();
        u16::from_be_bytes([bytes[14], bytes[15]]) & (SHARDS - 1)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The socket that holds a session: an id unique among the sockets this server
/// has ever accepted. Messages for a socket that no longer holds its session are
/// dropped, so a reconnect can never be hit by what was meant for the old socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Holder(pub u64);

impl Holder {
    /// Bits of a socket id that count sockets; the bits above name the node, so a
    /// socket id says where the socket is.
    pub const NODE_SHIFT: u32 = 40;

    /// How many node ids the bits above [`Holder::NODE_SHIFT`] can name.
    pub const NODES: u64 = 1 << (64 - Self::NODE_SHIFT);

    /// A node id at random, never 0. Embedded mode takes one as it is; a cluster
    /// node claims one in Redis that no live node holds.
    pub fn random_node() -> u64 {
        rand::random::<u64>() % (Self::NODES - 1) + 1
    }

    /// The first socket id of node `node`, from a random start (ids from before a
    /// restart never name a new socket).
    pub fn first_of_node(node: u64, start: u64) -> u64 {
        (node << Self::NODE_SHIFT) | (start >> (64 - Self::NODE_SHIFT + 2))
    }

    /// The node holding this socket.
    pub fn node(self) -> u64 {
        self.0 >> Self::NODE_SHIFT
    }
}

/// The lifecycle states of a session that still holds a slot (PROTOCOL 2.2).
/// An ended session is simply gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Granted, waiting for the player's REQUESTED.
    Pending,
    /// A socket sent REQUESTED and answers PINGs.
    Live,
    /// Its socket closed without FINISHED; it waits for a reconnect.
    Detached,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Live => "live",
            Self::Detached => "detached",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "live" => Some(Self::Live),
            "detached" => Some(Self::Detached),
            _ => None,
        }
    }
}

/// One playback slot of one customer on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    /// The label the player gave (`sessionName`), shown in the takeover list.
    pub name: String,
    pub state: SessionState,
    /// When the session dies unless its player is heard from (epoch ms).
    pub expires_at: Millis,
    /// The socket bound to it, while live.
    pub holder: Option<Holder>,
    pub created_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(publisher: &str, customer: &str) -> Customer {
        Customer {
            publisher_id: publisher.into(),
            customer_id: customer.into(),
        }
    }

    #[test]
    fn an_id_carries_its_customers_shard_and_stays_a_version_4_uuid() {
        assert!(SHARDS.is_power_of_two());
        for n in 0..200 {
            let who = customer("pub", &format!("customer-{n}"));
            let id = SessionId::for_customer(&who);
            assert_eq!(id.shard(), who.shard());
            assert_eq!(id.0.get_version_num(), 4);
            assert_eq!(id.0.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        }
    }

    #[test]
    fn shards_never_change_and_spread_customers() {
        // Pinned: a different shard for a shipped customer would lose their sessions.
        assert_eq!(customer("pub", "c1").shard(), 247);
        assert_eq!(customer("acme", "alice").shard(), 86);
        assert_eq!(customer("pub", "").shard(), shard_of("pub", ""));
        assert_ne!(shard_of("a:b", "c"), shard_of("a", ":bc"));
        let used: std::collections::HashSet<u16> = (0..4096).map(|n| customer("pub", &n.to_string()).shard()).collect();
        assert_eq!(used.len(), usize::from(SHARDS), "4096 customers use every shard");
        assert!(used.iter().all(|s| *s < SHARDS));
    }
}
