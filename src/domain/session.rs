//! Sessions, the pools they count against, and the customers who own them.

use std::fmt;
use std::sync::Arc;

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
///
/// Its three ids are kept one after the other in one shared string: a key is
/// copied into every session record, index and socket, so a copy is a
/// reference count rather than three allocations, a comparison one `memcmp`,
/// and a socket keeps 24 bytes of it rather than three strings' 72 (issue 11:
/// the memory store's time went to comparing and hashing three heap strings,
/// and a held socket's task to its copy of them; `bench/analysis.md`).
#[derive(Clone)]
pub struct PoolKey {
    /// The publisher id, the customer id and the offer id, in that order.
    ids: Arc<str>,
    /// Where the customer id starts in `ids`.
    customer_at: u32,
    /// Where the offer id starts in `ids`.
    offer_at: u32,
}

impl PoolKey {
    pub fn new(customer: &Customer, offer_id: impl AsRef<str>) -> Self {
        Self::from_ids(&customer.publisher_id, &customer.customer_id, offer_id.as_ref())
    }

    /// The pool of customer `customer_id` of publisher `publisher_id` on offer `offer_id`.
    pub fn from_ids(publisher_id: &str, customer_id: &str, offer_id: &str) -> Self {
        thread_local! {
            // The three ids are joined here and copied once into the key's own
            // allocation: a `String` of its own would be one allocation more
            // per key made (every admission makes one).
            static JOINED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let ids: Arc<str> = JOINED.with_borrow_mut(|joined| {
            joined.clear();
            joined.push_str(publisher_id);
            joined.push_str(customer_id);
            joined.push_str(offer_id);
            let ids = Arc::from(joined.as_str());
            // Not kept large by one long key.
            joined.shrink_to(256);
            ids
        });
        // Ids are bounded far below 4 GiB (tokens and bodies are a few KiB at
        // most); saturating keeps even an absurd one from panicking.
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Self {
            ids,
            customer_at: at(publisher_id.len()),
            offer_at: at(publisher_id.len() + customer_id.len()),
        }
    }

    pub fn publisher_id(&self) -> &str {
        self.ids.get(..self.customer_at as usize).unwrap_or_default()
    }

    pub fn customer_id(&self) -> &str {
        self.ids
            .get(self.customer_at as usize..self.offer_at as usize)
            .unwrap_or_default()
    }

    pub fn offer_id(&self) -> &str {
        self.ids.get(self.offer_at as usize..).unwrap_or_default()
    }

    /// Whether `other` is a copy of this key sharing its allocation (not merely
    /// equal): what a socket that kept the store's copy holds.
    pub fn shares_ids_with(&self, other: &PoolKey) -> bool {
        Arc::ptr_eq(&self.ids, &other.ids)
    }

    /// The three ids in order, for comparisons.
    fn parts(&self) -> (&str, &str, &str) {
        (self.publisher_id(), self.customer_id(), self.offer_id())
    }

    /// The shard of the pool's customer ([`Customer::shard`]).
    pub fn shard(&self) -> u16 {
        shard_of(self.publisher_id(), self.customer_id())
    }

    pub fn owner(&self) -> Customer {
        Customer {
            publisher_id: self.publisher_id().to_owned(),
            customer_id: self.customer_id().to_owned(),
        }
    }

    /// The same customer's pool on `offer_id`.
    pub fn with_offer(&self, offer_id: &str) -> Self {
        Self::from_ids(self.publisher_id(), self.customer_id(), offer_id)
    }

    /// Whether the pool is `customer`'s.
    pub fn is_of(&self, customer: &Customer) -> bool {
        self.publisher_id() == customer.publisher_id && self.customer_id() == customer.customer_id
    }
}

impl PartialEq for PoolKey {
    fn eq(&self, other: &Self) -> bool {
        // The same text cut at the same places is the same three ids.
        self.customer_at == other.customer_at && self.offer_at == other.offer_at && self.ids == other.ids
    }
}

impl Eq for PoolKey {}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.ids.as_bytes());
        state.write_u32(self.customer_at);
        state.write_u32(self.offer_at);
    }
}

impl PartialOrd for PoolKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// By publisher, then customer, then offer, as when they were three fields.
impl Ord for PoolKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolKey")
            .field("publisher_id", &self.publisher_id())
            .field("customer_id", &self.customer_id())
            .field("offer_id", &self.offer_id())
            .finish()
    }
}

/// The form a key is written in: an object of the three ids, as when they were
/// three fields, so what was saved before reads back.
mod pool_key_form {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize)]
    #[serde(rename = "PoolKey")]
    pub(super) struct Written<'a> {
        pub publisher_id: &'a str,
        pub customer_id: &'a str,
        pub offer_id: &'a str,
    }

    #[derive(Deserialize)]
    #[serde(rename = "PoolKey")]
    pub(super) struct Read {
        pub publisher_id: String,
        pub customer_id: String,
        pub offer_id: String,
    }
}

impl Serialize for PoolKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        pool_key_form::Written {
            publisher_id: self.publisher_id(),
            customer_id: self.customer_id(),
            offer_id: self.offer_id(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PoolKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let read = pool_key_form::Read::deserialize(deserializer)?;
        Ok(Self::from_ids(&read.publisher_id, &read.customer_id, &read.offer_id))
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
    fn a_pool_key_gives_back_its_three_ids_and_tells_apart_keys_whose_ids_join_alike() {
        let key = PoolKey::from_ids("pub", "cust\u{e9}|1", "offer");
        assert_eq!(
            (key.publisher_id(), key.customer_id(), key.offer_id()),
            ("pub", "cust\u{e9}|1", "offer")
        );
        let empty = PoolKey::from_ids("", "", "");
        assert_eq!(
            (empty.publisher_id(), empty.customer_id(), empty.offer_id()),
            ("", "", "")
        );
        // "abc" + "d" + "o" and "ab" + "cd" + "o" join to the same text.
        let (one, other) = (PoolKey::from_ids("abc", "d", "o"), PoolKey::from_ids("ab", "cd", "o"));
        assert_ne!(one, other);
        let state = std::hash::RandomState::new();
        let hash = |k: &PoolKey| std::hash::BuildHasher::hash_one(&state, k);
        let set: std::collections::HashSet<PoolKey> = [one.clone(), other.clone(), one.clone()].into();
        assert_eq!(set.len(), 2);
        assert_eq!(hash(&one), hash(&one.clone()));
        assert_eq!(one, PoolKey::new(&customer("abc", "d"), "o"));
        assert_eq!(one.with_offer("x"), PoolKey::from_ids("abc", "d", "x"));
        assert!(one.is_of(&customer("abc", "d")) && !other.is_of(&customer("abc", "d")));
    }

    #[test]
    fn pool_keys_sort_by_publisher_then_customer_then_offer_as_three_fields_did() {
        // Joined, "a" + "z" sorts after "ab" + "a"; by fields, publisher "a" comes first.
        let mut keys = [
            PoolKey::from_ids("ab", "a", "o"),
            PoolKey::from_ids("a", "z", "o"),
            PoolKey::from_ids("a", "z", "b"),
            PoolKey::from_ids("a", "", "zz"),
        ];
        keys.sort();
        let parts: Vec<_> = keys
            .iter()
            .map(|k| (k.publisher_id(), k.customer_id(), k.offer_id()))
            .collect();
        assert_eq!(
            parts,
            [("a", "", "zz"), ("a", "z", "b"), ("a", "z", "o"), ("ab", "a", "o")]
        );
    }

    #[test]
    fn a_pool_key_is_written_and_read_as_the_object_of_three_ids_it_was() {
        let key = PoolKey::from_ids("p", "c\"1", "o");
        let text = serde_json::to_string(&key).unwrap();
        assert_eq!(text, r#"{"publisher_id":"p","customer_id":"c\"1","offer_id":"o"}"#);
        assert_eq!(serde_json::from_str::<PoolKey>(&text).unwrap(), key);
        assert!(serde_json::from_str::<PoolKey>(r#"{"publisher_id":"p","customer_id":"c"}"#).is_err());
        assert_eq!(
            format!("{key:?}"),
            r#"PoolKey { publisher_id: "p", customer_id: "c\"1", offer_id: "o" }"#
        );
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
