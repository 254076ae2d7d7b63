//! Orders for sockets held by other nodes (TAKE_OVER, TERMINATE, EXPIRED, PING).
//!
//! Each node reads its own inbox, a Redis list, with a blocking pop. A list
//! rather than pub/sub: an order pushed while the node's reading connection is
//! down waits in the list instead of being lost, so a dropped connection delays
//! delivery by one reconnect instead of losing it. The list expires if its node
//! stops reading it. The refresh loop's tombstones remain the backstop for an
//! order lost in any other way.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::{self, Conn, RedisTarget};
use super::keys::node::{self, INBOX_TTL_MS, LEASE_TTL_MS};
use crate::domain::Holder;
use crate::domain::ports::{Control, Notifier};
use crate::telemetry::throttle::{self, Throttle};

const FULL_LINE: &str = "outbox full: orders for other nodes dropped; the refresh backstop delivers them \
     (one line per 10 s at most, with the count since the last; each at debug)";
const UNSENT_LINE: &str = "orders for other nodes dropped (or sent twice); the refresh backstop delivers them \
     (one line per 10 s at most, with the count since the last; each batch at debug)";

/// How long one blocking pop waits before it is issued again.
const BLOCK_SECS: f64 = 1.0;
/// Orders waiting to be pushed; beyond it an order is dropped (and the refresh
/// backstop tells the socket later).
const OUTBOX_CAPACITY: usize = 65_536;

fn encode(holder: Holder, control: &Control) -> String {
    match control {
        Control::Ping => format!("{}|P|", holder.0),
        Control::TakeOver { session_name } => format!("{}|T|{session_name}", holder.0),
        Control::Terminate => format!("{}|X|", holder.0),
        Control::Expire => format!("{}|E|", holder.0),
    }
}

fn decode(message: &str) -> Option<(Holder, Control)> {
    let mut parts = message.splitn(3, '|');
    let holder = Holder(parts.next()?.parse().ok()?);
    let control = match (parts.next()?, parts.next().unwrap_or("")) {
        ("P", _) => Control::Ping,
        ("T", name) => Control::TakeOver {
            session_name: name.to_owned(),
        },
        ("X", _) => Control::Terminate,
        ("E", _) => Control::Expire,
        _ => return None,
    };
    Some((holder, control))
}

/// Routes an order to this node's hub, or to the holding node's inbox.
pub struct ClusterNotifier {
    node: u64,
    local: Arc<dyn Notifier>,
    outbox: mpsc::Sender<(u64, String)>,
    /// The outbox fills while Redis does not take its pushes, and every order
    /// then finds it full: a line per 10 s with the count, not one per order.
    dropped: Throttle,
}

impl ClusterNotifier {
    /// The notifier, and the receiving end that [`run_outbox`] drains.
    pub fn new(node: u64, local: Arc<dyn Notifier>) -> (Self, mpsc::Receiver<(u64, String)>) {
        let (outbox, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let dropped = Throttle::new(throttle::EVERY, |dropped| tracing::warn!(dropped, "{FULL_LINE}"));
        (
            Self {
                node,
                local,
                outbox,
                dropped,
            },
            rx,
        )
    }
}

impl Notifier for ClusterNotifier {
    fn notify(&self, holder: Holder, control: Control) {
        let node = holder.node();
        if node == self.node {
            self.local.notify(holder, control);
        } else if self.outbox.try_send((node, encode(holder, &control))).is_err() {
            tracing::debug!(socket = holder.0, node, "outbox full: an order is dropped");
            if let Some(dropped) = self.dropped.hit() {
                tracing::warn!(dropped, socket = holder.0, node, "{FULL_LINE}");
            }
        }
    }
}

/// One pipeline per destination node: each inbox is a key of its own (its own
/// slot on a Redis Cluster), and one RPUSH takes all of a node's orders.
fn pipelines(batch: &[(u64, String)]) -> Vec<redis::Pipeline> {
    let mut by_node: std::collections::BTreeMap<u64, Vec<&str>> = std::collections::BTreeMap::new();
    for (to, message) in batch {
        by_node.entry(*to).or_default().push(message);
    }
    by_node
        .into_iter()
        .map(|(to, messages)| {
            let key = node::inbox(to);
            let mut pipe = redis::pipe();
            pipe.rpush(&key, messages)
                .ignore()
                .pexpire(&key, INBOX_TTL_MS as i64)
                .ignore();
            pipe
        })
        .collect()
}

/// Pushes queued orders to the holding nodes' inboxes, in pipelined batches.
pub async fn run_outbox(target: RedisTarget, mut rx: mpsc::Receiver<(u64, String)>, cancel: CancellationToken) {
    let mut conn: Option<Conn> = None;
    // A batch a try while Redis is out of reach: a line per 10 s, with the orders.
    let unsent = Throttle::new(throttle::EVERY, |dropped| tracing::warn!(dropped, "{UNSENT_LINE}"));
    let mut batch = Vec::with_capacity(256);
    loop {
        batch.clear();
        tokio::select! {
            _ = cancel.cancelled() => return,
            n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
        }
        let pipes = pipelines(&batch);
        // Twice: a connection found dead is replaced once before giving up.
        let mut delivered = false;
        for _ in 0..2 {
            if conn.is_none() {
                conn = connection::connect(&target).await.ok();
            }
            let Some(c) = conn.as_ref() else { break };
            let sent = futures_util::future::join_all(pipes.iter().map(|pipe| {
                let mut c = c.clone();
                async move { pipe.query_async::<()>(&mut c).await }
            }))
            .await;
            match sent.into_iter().find_map(Result::err) {
                None => {
                    delivered = true;
                    break;
                }
                Some(e) => {
                    tracing::debug!(error = %e, "outbox connection failed");
                    conn = None;
                }
            }
        }
        if !delivered {
            tracing::debug!(dropped = batch.len(), "orders for other nodes dropped (or sent twice)");
            unsent.count(batch.len() as u64);
        }
    }
}

/// Reads this node's inbox and hands each order to the local hub.
pub async fn run_inbox(target: RedisTarget, node: u64, local: Arc<dyn Notifier>, cancel: CancellationToken) {
    let key = node::inbox(node);
    while !cancel.is_cancelled() {
        // The reply to a blocking pop may take the whole pop timeout: give it
        // more. A connection of its own, since the pop holds it while it waits
        // (on a cluster, its link to the inbox's master).
        let response = Duration::from_secs(BLOCK_SECS as u64 + 2);
        let mut conn = match connection::connect_with(&target, response).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "inbox connection failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                }
            }
        };
        let _: Result<(), _> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(node::inbox_client_name(node))
            .query_async(&mut conn)
            .await;
        loop {
            let popped: redis::RedisResult<Option<(String, String)>> = tokio::select! {
                _ = cancel.cancelled() => return,
                r = conn.blpop(&key, BLOCK_SECS) => r,
            };
            match popped {
                Ok(Some((_, message))) => match decode(&message) {
                    Some((holder, control)) => local.notify(holder, control),
                    None => tracing::warn!(message, "unreadable order in the inbox"),
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "inbox connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Claims a node id no other live node uses (a lease the refresh loop renews,
/// [`node::lease`]), and returns it.
pub async fn claim_node_id(conn: &mut Conn) -> Result<u64, redis::RedisError> {
    loop {
        let id = Holder::random_node();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(node::lease(id))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_TTL_MS)
            .query_async(conn)
            .await?;
        if claimed.is_some() {
            return Ok(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_survive_the_round_trip_through_an_inbox() {
        let holder = Holder(42 << Holder::NODE_SHIFT | 7);
        for control in [
            Control::Ping,
            Control::Terminate,
            Control::Expire,
            Control::TakeOver {
                session_name: "TV | kitchen".into(),
            },
        ] {
            assert_eq!(decode(&encode(holder, &control)), Some((holder, control)));
        }
        assert_eq!(holder.node(), 42);
    }
}
