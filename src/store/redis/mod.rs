//! The session pools on Redis, for a cluster of drisc nodes, in rooms:
//!
//! - [`keys`]: every key and the hash-tag layout (each shard of customers is
//!   one slot of a Redis Cluster, so every script runs on one slot), and the
//!   node's lease;
//! - `connection`: one Redis or a Redis Cluster ([`RedisTarget`]), behind one
//!   connection type;
//! - `record`: the one codec of the session record and of the scripts' replies;
//! - `scripts`: the pool rules in Lua, one script per operation;
//! - `store`: the [`RedisStore`], the [`SessionStore`](crate::domain::ports::SessionStore)
//!   that runs them;
//! - [`refresh`]: the node's loop that vouches for its live sessions, writes the
//!   ends its sockets queued, checks its sessions every ten minutes (at once,
//!   those another node ended or moved), and puts them back if Redis lost its
//!   data;
//! - [`purge`]: the loop that deletes, and reports ended, the sessions that died
//!   in Redis with no node to end them;
//! - [`inbox`]: orders for sockets held by other nodes;
//! - [`tls`]: the CA and client certificate of a `rediss://` connection;
//! - `open`: opens the store for the app, and [`Cluster`] starts the loops above.

mod connection;
pub mod inbox;
pub mod keys;
mod open;
pub mod purge;
pub(crate) mod record;
pub mod refresh;
mod scripts;
mod store;
pub mod tls;

pub use connection::RedisTarget;
pub use open::{Cluster, open};
pub use store::{RedisStore, TimeSource};
