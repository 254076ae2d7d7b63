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
