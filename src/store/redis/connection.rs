//! The connection to Redis: one server, or a Redis Cluster, chosen by
//! configuration ([`RedisTarget`], made by [`super::tls::target`] with the TLS
//! settings) and built in one place ([`connect`]), so the rest of the store
//! runs the same commands on either, over TLS or not.
//!
//! On a cluster, the client routes each command by its keys' slot, follows
//! MOVED and ASK redirects and refreshes its map of slots on its own; `SCRIPT
//! LOAD` goes to every node. A pipeline goes to one node: every pipeline this
//! store sends holds the keys of one slot (one shard, or one node's inbox).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value};

/// Where the sessions are kept.
#[derive(Clone)]
pub enum RedisTarget {
    /// One Redis (a `rediss://` one carries its certificates: see [`super::tls`]).
    Single(ConnectionInfo),
    /// A Redis Cluster, found from these seed nodes; with `rediss://` seeds, the
    /// CA and client certificate every node connection uses (`None`: the
    /// system's roots, no client certificate).
    Cluster {
        seeds: Vec<String>,
        certs: Option<TlsCertificates>,
    },
}

/// Shown without the passwords the URLs may carry, nor the certificates' bytes.
impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(info) => f.debug_tuple("Single").field(&info.addr()).finish(),
            Self::Cluster { seeds, certs } => f
                .debug_struct("Cluster")
                .field(
                    "seeds",
                    &seeds.iter().map(|u| crate::config::redact_url(u)).collect::<Vec<_>>(),
                )
                .field("certs", &certs.is_some())
                .finish(),
        }
    }
}

/// What [`crate::store::redis::RedisStore::connect`] takes: a target, or the
/// URL of one Redis (tests).
pub trait IntoRedisTarget {
    fn into_target(self) -> redis::RedisResult<RedisTarget>;
}

impl IntoRedisTarget for RedisTarget {
    fn into_target(self) -> redis::RedisResult<RedisTarget> {
        Ok(self)
    }
}

impl IntoRedisTarget for ConnectionInfo {
    fn into_target(self) -> redis::RedisResult<RedisTarget> {
        Ok(RedisTarget::Single(self))
    }
}

impl IntoRedisTarget for &str {
    fn into_target(self) -> redis::RedisResult<RedisTarget> {
        self.into_connection_info().map(RedisTarget::Single)
    }
}

impl IntoRedisTarget for &String {
    fn into_target(self) -> redis::RedisResult<RedisTarget> {
        self.as_str().into_target()
    }
}

impl IntoRedisTarget for String {
    fn into_target(self) -> redis::RedisResult<RedisTarget> {
        self.as_str().into_target()
    }
}

impl RedisTarget {
    /// A Redis Cluster without TLS certificates of its own.
    pub fn cluster(seeds: Vec<String>) -> Self {
        Self::Cluster { seeds, certs: None }
    }

    /// What the logs call it.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Single(_) => "Redis",
            Self::Cluster { .. } => "Redis Cluster",
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

/// How long a cluster request may take over and above one attempt's response
/// timeout, retries and redirects included. The cluster client otherwise uses
/// the response timeout as this overall bound too, so a request that has to be
/// retried (MOVED after a failover, CLUSTERDOWN while a replica is elected, a
/// node reconnected) must finish within what is left of its first attempt's
/// two seconds, and on a loaded machine answers "timed out" instead: the
/// retries above were mostly never made. Room for a few of them, and bounded:
/// a request to a master that stopped answering ends in an error (503) after
/// four seconds, as it did with one replay of two seconds each.
const CLUSTER_RETRY_TIME: Duration = Duration::from_secs(2);

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
        RedisTarget::Single(info) => {
            let client = redis::Client::open(info.clone())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(response))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Ok(Conn::Single(ConnectionManager::new_with_config(client, config).await?))
        }
        RedisTarget::Cluster { seeds, certs } => {
            let mut builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(response)
                .overall_response_timeout(Some(response + CLUSTER_RETRY_TIME))
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(100)
                .max_retry_wait(1000);
            // The same CA and client certificate for every node the cluster names
            // (the seeds' `rediss://` alone would trust the system's roots).
            if let Some(certs) = certs {
                builder = builder.certs(certs.clone());
            }
            let client = builder.build()?;
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
