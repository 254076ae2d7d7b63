//! Opening the cluster's session store, and the loops a node runs beside it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{self, RedisTarget};
use super::inbox::{self, ClusterNotifier};
use super::{RedisStore, TimeSource, purge, refresh};
use crate::config::Settings;
use crate::domain::ports::Notifier;
use crate::meter::Meter;
use crate::readiness::Probe;
use crate::store::Sessions;
use crate::store::instrumented::Instrumented;

const UNREACHABLE: &str = "cannot reach Redis (storage.redis_url or storage.redis_cluster_nodes)";

/// The session pools in Redis at `storage.redis_url`, or in the Redis Cluster
/// of `storage.redis_cluster_nodes` ([`RedisTarget`]), over TLS with `rediss://`
/// ([`super::tls`]): claims a node id no live node
/// holds, names this process's `sockets` by it, and routes orders for sockets held
/// elsewhere through the holding node's inbox. The loops that keep it all going
/// start with [`Cluster::spawn`].
pub async fn open<L: Notifier>(
    settings: &Settings,
    meter: &Arc<Meter>,
    sockets: impl FnOnce(u64) -> Arc<L>,
) -> anyhow::Result<Sessions<L>> {
    let target = super::tls::target(&settings.storage)?;
    let mut conn = match connection::connect(&target).await {
        Ok(conn) => conn,
        Err(e) => {
            let hint = super::tls::hint(&e.to_string());
            let error = anyhow::Error::new(e).context(UNREACHABLE);
            return Err(match hint {
                Some(hint) => error.context(hint),
                None => error,
            });
        }
    };
    let node = inbox::claim_node_id(&mut conn).await.context(UNREACHABLE)?;
    let sockets = sockets(node);
    let local: Arc<dyn Notifier> = sockets.clone();
    let store = RedisStore::connect(
        target.clone(),
        settings.timings(),
        settings.cluster.tombstone_ttl,
        settings.cluster.node_lost_after,
        TimeSource::Redis,
        local.clone(),
    )
    .await
    .context(UNREACHABLE)?
    .for_node(node)
    .with_events(meter.clone());
    let store = Arc::new(store);
    let (notifier, outbox) = ClusterNotifier::new(node, local.clone());
    tracing::info!(node, store = target.describe(), "cluster mode: sessions in Redis");
    Ok(Sessions {
        store: Arc::new(Instrumented::new(store.clone(), "redis", meter.clone())),
        local: None,
        sockets,
        notifier: Arc::new(notifier),
        journal: None,
        cluster: Some(Cluster {
            store,
            node,
            target,
            local,
            outbox,
            refresh_every: settings.cluster.refresh_interval,
            purge_every: settings.cluster.purge_interval,
        }),
    })
}

/// What a cluster node runs beside its store: the refresh loop, the purge loop,
/// and the reading and writing ends of the node inboxes.
pub struct Cluster {
    store: Arc<RedisStore>,
    node: u64,
    target: RedisTarget,
    /// This process's sockets, where the inbox delivers.
    local: Arc<dyn Notifier>,
    /// Orders for other nodes, queued by the [`ClusterNotifier`].
    outbox: mpsc::Receiver<(u64, String)>,
    refresh_every: Duration,
    purge_every: Duration,
}

impl Cluster {
    /// Redis as `/readyz` checks it: the connection every session operation uses.
    pub fn probe(&self) -> Arc<dyn Probe> {
        self.store.clone()
    }

    /// Starts the loops on `tasks`; each stops when `shutdown` is cancelled.
    pub fn spawn(self, tasks: &TaskTracker, shutdown: &CancellationToken) {
        tasks.spawn(purge::run(
            self.store.clone(),
            self.node,
            self.purge_every,
            shutdown.clone(),
        ));
        tasks.spawn(refresh::run(
            self.store,
            self.node,
            self.refresh_every,
            shutdown.clone(),
        ));
        tasks.spawn(inbox::run_inbox(
            self.target.clone(),
            self.node,
            self.local,
            shutdown.clone(),
        ));
        tasks.spawn(inbox::run_outbox(self.target, self.outbox, shutdown.clone()));
    }
}
