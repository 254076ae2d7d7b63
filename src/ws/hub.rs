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
pub struct Mailbox {
    /// The socket's id, kept here rather than in the socket's task, which is
    /// held for the socket's life at a size this keeps within an allocation
    /// class (`connection.rs`).
    holder: Holder,
    wake: Notify,
    ping: AtomicBool,
    /// Boxed: a final order comes once in a socket's life, and the box keeps the
    /// mailbox in jemalloc's 80-byte class rather than the 96-byte one (a
    /// `TAKE_OVER`'s name inline is 24 bytes of every idle socket).
    last: Mutex<Option<Box<Control>>>,
}

impl Mailbox {
    fn new(holder: Holder) -> Self {
        Self {
            holder,
            wake: Notify::new(),
            ping: AtomicBool::new(false),
            last: Mutex::new(None),
        }
    }

    /// The id of the socket this mailbox is for.
    pub fn holder(&self) -> Holder {
        self.holder
    }

    fn post(&self, control: Control) {
        if control == Control::Ping {
            self.ping.store(true, Ordering::Release);
        } else if let Ok(mut last) = self.last.lock() {
            // The first final order wins: the socket closes after it.
            last.get_or_insert_with(|| Box::new(control));
        }
        self.wake.notify_one();
    }

    /// Waits until something is posted.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// The final order, if one was posted.
    pub fn take_final(&self) -> Option<Control> {
        self.last
            .lock()
            .ok()
            .and_then(|mut last| last.take())
            .map(|order| *order)
    }

    /// Whether a PING was asked for since the last call.
    pub fn take_ping(&self) -> bool {
        self.ping.swap(false, Ordering::AcqRel)
    }
}

pub struct Hub {
    sockets: DashMap<Holder, Arc<Mailbox>>,
    /// Set once the server shuts down: every socket closes with 1012.
    closing: AtomicBool,
    next_id: AtomicU64,
    bad_messages: AtomicU64,
    flooded_sockets: AtomicU64,
}

impl Hub {
    /// The hub of node `node` (any value below [`Holder::NODES`]).
    pub fn new(node: u64) -> Self {
        Self {
            sockets: DashMap::new(),
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(Holder::first_of_node(node, rand::random())),
            bad_messages: AtomicU64::new(0),
            flooded_sockets: AtomicU64::new(0),
        }
    }

    /// A new socket: the mailbox it reads its orders from, which carries its id.
    pub fn register(&self) -> Arc<Mailbox> {
        let holder = Holder(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mailbox = Arc::new(Mailbox::new(holder));
        self.sockets.insert(holder, Arc::clone(&mailbox));
        mailbox
    }

    pub fn unregister(&self, holder: Holder) {
        self.sockets.remove(&holder);
    }

    /// Tells every socket, present and to come, that the server is shutting down.
    /// Through the mailboxes the sockets already wait on, not a shutdown signal of
    /// their own: a signal's future in every socket's select was 80 bytes of each
    /// idle socket, enough to put its task in a larger allocation (`connection.rs`).
    pub fn close_all(&self) {
        // Set before the walk: a socket registered after the walk passed it reads
        // the flag when it first waits (`is_closing`), so none is missed.
        self.closing.store(true, Ordering::SeqCst);
        for socket in &self.sockets {
            socket.value().wake.notify_one();
        }
    }

    /// Whether [`Hub::close_all`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
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

    /// Every held socket has one: with its `Arc`'s two counts it must stay within
    /// jemalloc's 80-byte class (96 with a final order kept inline).
    #[test]
    fn a_mailbox_stays_within_80_bytes() {
        assert!(
            std::mem::size_of::<Mailbox>() + 16 <= 80,
            "{}",
            std::mem::size_of::<Mailbox>()
        );
    }

    #[test]
    fn the_first_final_order_wins_and_pings_coalesce() {
        let hub = Hub::new(1);
        let mailbox = hub.register();
        let holder = mailbox.holder();
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
            let holder = Hub::new(node).register().holder();
            assert_eq!(holder.node(), node);
        }
    }

    #[tokio::test]
    async fn closing_wakes_every_socket_and_is_seen_by_sockets_registered_after() {
        let hub = Hub::new(1);
        let before = hub.register();
        assert!(!hub.is_closing());
        hub.close_all();
        // The wake is kept for a socket not yet waiting: this returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), before.wait())
            .await
            .expect("a registered socket is woken");
        assert_eq!(before.take_final(), None, "closing is not an order");
        let _after = hub.register();
        assert!(hub.is_closing());
    }

    #[test]
    fn orders_for_a_socket_that_left_are_dropped() {
        let hub = Hub::new(1);
        let mailbox = hub.register();
        let holder = mailbox.holder();
        hub.unregister(holder);
        hub.notify(holder, Control::Terminate);
        assert_eq!(mailbox.take_final(), None);
        assert!(hub.is_empty());
    }
}
