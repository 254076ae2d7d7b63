//! The connection to Redis: one server, or a Redis Cluster, chosen by
//! configuration ([`RedisTarget`]) and built in one place ([`connect`]), so
//! the rest of the store runs the same commands on either.
//!
//! On a cluster, the client routes each command by its keys' slot, follows
//! MOVED and ASK redirects and refreshes its map of slots on its own; `SCRIPT
//! LOAD` goes to every node. A pipeline goes to one node: every pipeline this
//! store sends holds the keys of one slot (one shard, or one node's inbox).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::Settings;

/// Where the sessions are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis at this URL.
    Single(String),
    /// A Redis Cluster, found from these seed nodes.
    Cluster(Vec<String>),
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> Self {
        Self::Single(url.to_owned())
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> Self {
        Self::Single(url.clone())
    }
}

impl From<&Settings> for RedisTarget {
    fn from(settings: &Settings) -> Self {
        let storage = &settings.storage;
        if storage.redis_cluster_nodes.is_empty() {
            Self::Single(storage.redis_url.clone())
        } else {
            Self::Cluster(storage.redis_cluster_nodes.clone())
        }
    }
}

impl RedisTarget {
    /// What the logs call it.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Single(_) => "Redis",
            Self::Cluster(_) => "Redis Cluster",
        }
    }
}

/// How long a connection may take to open, and a request to be answered.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a cluster request is retried (redirects, a node that went
/// away, a cluster still electing a new master) before the error reaches the
/// caller: bounded, so a cluster that lost a shard turns into clear errors,
/// and enough for a failover of a second or two (the waits grow from 100 ms).
const CLUSTER_RETRIES: u32 = 5;

/// A connection to one Redis or to a cluster, cheap to clone (both multiplex).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Opens a connection to `target` whose requests give up after `response` (a
/// blocking pop needs longer than the default). A single Redis gets a
/// self-reconnecting manager; a cluster, the crate's cluster client, which
/// reconnects to each node by itself.
pub async fn connect_with(target: &RedisTarget, response: Duration) -> redis::RedisResult<Conn> {
    match target {
        RedisTarget::Single(url) => {
            let client = redis::Client::open(url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(response))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Ok(Conn::Single(ConnectionManager::new_with_config(client, config).await?))
        }
        RedisTarget::Cluster(seeds) => {
            let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(response)
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(100)
                .max_retry_wait(1000)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

/// Opens the connection every session operation uses ([`connect_with`] the
/// default response timeout).
pub async fn connect(target: &RedisTarget) -> redis::RedisResult<Conn> {
    connect_with(target, RESPONSE_TIMEOUT).await
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
