//! The sockets of this process, reachable by their [`Holder`] id. This is the
//! in-process [`Notifier`]: the domain tells a socket something by its id, and a
//! message for a socket that is gone is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::domain::Holder;
use crate::domain::ports::{Control, Notifier};

/// What is waiting for one socket. Not a channel: a socket needs at most one
/// pending PING and one final order (TAKE_OVER, TERMINATE or EXPIRED, after which
/// it closes), and this costs about a hundred bytes where a channel costs a KB.
#[derive(Default)]
pub struct Mailbox {
    wake: Notify,
    ping: AtomicBool,
    last: Mutex<Option<Control>>,
}

impl Mailbox {
    fn post(&self, control: Control) {
        if control == Control::Ping {
            self.ping.store(true, Ordering::Release);
        } else if let Ok(mut last) = self.last.lock() {
            // The first final order wins: the socket closes after it.
            last.get_or_insert(control);
        }
        self.wake.notify_one();
    }

    /// Waits until something is posted.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// The final order, if one was posted.
    pub fn take_final(&self) -> Option<Control> {
        self.last.lock().ok().and_then(|mut last| last.take())
    }

    /// Whether a PING was asked for since the last call.
    pub fn take_ping(&self) -> bool {
        self.ping.swap(false, Ordering::AcqRel)
    }
}

pub struct Hub {
    sockets: DashMap<Holder, Arc<Mailbox>>,
    next_id: AtomicU64,
    bad_messages: AtomicU64,
    flooded_sockets: AtomicU64,
}

impl Hub {
    /// The hub of node `node` (any value below [`Holder::NODES`]).
    pub fn new(node: u64) -> Self {
        Self {
            sockets: DashMap::new(),
            next_id: AtomicU64::new(Holder::first_of_node(node, rand::random())),
            bad_messages: AtomicU64::new(0),
            flooded_sockets: AtomicU64::new(0),
        }
    }

    /// A new socket: its id, and the mailbox it reads its orders from.
    pub fn register(&self) -> (Holder, Arc<Mailbox>) {
        let holder = Holder(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mailbox = Arc::new(Mailbox::default());
        self.sockets.insert(holder, Arc::clone(&mailbox));
        (holder, mailbox)
    }

    pub fn unregister(&self, holder: Holder) {
        self.sockets.remove(&holder);
    }

    /// A malformed or unknown message was ignored.
    pub fn count_bad_message(&self) {
        self.bad_messages.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bad_messages(&self) -> u64 {
        self.bad_messages.load(Ordering::Relaxed)
    }

    /// A socket was closed for sending more messages than its budget.
    pub fn count_flooded_socket(&self) {
        self.flooded_sockets.fetch_add(1, Ordering::Relaxed);
    }

    pub fn flooded_sockets(&self) -> u64 {
        self.flooded_sockets.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

impl Notifier for Hub {
    fn notify(&self, holder: Holder, control: Control) {
        if let Some(mailbox) = self.sockets.get(&holder) {
            mailbox.post(control);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_final_order_wins_and_pings_coalesce() {
        let hub = Hub::new(1);
        let (holder, mailbox) = hub.register();
        hub.notify(holder, Control::Ping);
        hub.notify(holder, Control::Ping);
        hub.notify(holder, Control::Terminate);
        hub.notify(holder, Control::Expire);
        assert!(mailbox.take_ping());
        assert!(!mailbox.take_ping());
        assert_eq!(mailbox.take_final(), Some(Control::Terminate));
        assert_eq!(mailbox.take_final(), None);
    }

    #[test]
    fn a_socket_id_names_the_node_whatever_node_id_is_drawn() {
        for _ in 0..1_000 {
            let node = Holder::random_node();
            assert!((1..Holder::NODES).contains(&node), "{node}");
            let (holder, _) = Hub::new(node).register();
            assert_eq!(holder.node(), node);
        }
    }

    #[test]
    fn orders_for_a_socket_that_left_are_dropped() {
        let hub = Hub::new(1);
        let (holder, mailbox) = hub.register();
        hub.unregister(holder);
        hub.notify(holder, Control::Terminate);
        assert_eq!(mailbox.take_final(), None);
        assert!(hub.is_empty());
    }
}
