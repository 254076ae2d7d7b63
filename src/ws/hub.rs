//! The sockets of this process, reachable by their [`Holder`] id. This is the
//! in-process [`Notifier`]: the domain tells a socket something by its id, and a
//! message for a socket that is gone is dropped.
//!
//! The hub also keeps the sockets' time: each socket publishes in its mailbox when
//! it must next act (its PING, its PONG or REQUESTED deadline), and one ticker per
//! hub ([`Hub::start_ticker`], every [`tick_for`]) wakes those whose time has come. A timer
//! in every socket's task was 120 of its bytes, enough to keep the task in the
//! next allocation size up (`bench/analysis.md`, round seventeen).

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::task::Poll;
use std::time::Duration;

use futures_util::task::AtomicWaker;

use super::deadline::Deadline;
use crate::domain::Holder;
use crate::domain::liveness::Timings;
use crate::domain::ports::{Control, Notifier};

/// [`Mailbox::flags`]: something was posted since the socket last looked.
const POSTED: u8 = 1;
/// [`Mailbox::flags`]: a PING was asked for.
const PING: u8 = 2;

/// What is waiting for one socket. Not a channel: a socket needs at most one
/// pending PING and one final order (TAKE_OVER, TERMINATE or EXPIRED, after which
/// it closes), and this costs 80 bytes where a channel costs a KB.
pub struct Mailbox {
    /// The socket's id, kept here rather than in the socket's task, which is
    /// held for the socket's life at a size this keeps within an allocation
    /// class (`connection.rs`).
    holder: Holder,
    /// The socket's task, while it waits. A waker rather than a `Notify`: waiting
    /// on one is a reference in the task's future, where a `Notify`'s waiter was 64
    /// bytes of every idle socket.
    waker: AtomicWaker,
    flags: AtomicU8,
    /// When the socket must next act ([`Deadline`] milliseconds): the ticker
    /// wakes it once this has passed.
    wake_at: AtomicU64,
    /// Boxed: a final order comes once in a socket's life, and the box keeps the
    /// mailbox in jemalloc's 80-byte class rather than the 96-byte one (a
    /// `TAKE_OVER`'s name inline is 24 bytes of every idle socket).
    last: Mutex<Option<Box<Control>>>,
}

impl Mailbox {
    fn new(holder: Holder) -> Self {
        Self {
            holder,
            waker: AtomicWaker::new(),
            flags: AtomicU8::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            last: Mutex::new(None),
        }
    }

    /// The id of the socket this mailbox is for.
    pub fn holder(&self) -> Holder {
        self.holder
    }

    fn post(&self, control: Control) {
        if control == Control::Ping {
            self.flags.fetch_or(PING, Ordering::AcqRel);
        } else if let Ok(mut last) = self.last.lock() {
            // The first final order wins: the socket closes after it.
            last.get_or_insert_with(|| Box::new(control));
        }
        self.wake();
    }

    /// Wakes the socket with nothing posted: to look at the clock or the hub.
    fn wake(&self) {
        self.flags.fetch_or(POSTED, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Waits until something is posted, or the socket's time ([`Self::wake_at`])
    /// has come, or the hub closes. A wake that came while nobody waited is kept,
    /// so none is lost between two waits.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + '_ {
        poll_fn(move |cx| {
            if self.flags.fetch_and(!POSTED, Ordering::AcqRel) & POSTED != 0 {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Posted between the check and the registration: seen here.
            if self.flags.fetch_and(!POSTED, Ordering::AcqRel) & POSTED != 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// Asks the hub's ticker to wake this socket once `deadline` has passed.
    pub fn wake_at(&self, deadline: Deadline) {
        self.wake_at.store(deadline.as_millis(), Ordering::Release);
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
        self.flags.fetch_and(!PING, Ordering::AcqRel) & PING != 0
    }
}

/// How often a hub's ticker looks at its sockets' deadlines: a twentieth of the
/// shortest of them, between 1 and 250 ms. How late a PING or a deadline may
/// come, at most, against walking every socket's mailbox (one atomic read each)
/// four times a second at the defaults (`benches/hub_tick.rs`: a walk of 100,000
/// sockets took 0.32 ms).
pub fn tick_for(timings: &Timings) -> Duration {
    let shortest = timings
        .ping_interval
        .min(timings.pong_timeout)
        .min(timings.connect_timeout);
    (shortest / 20).clamp(Duration::from_millis(1), Duration::from_millis(250))
}

/// How many parts the hub's map of sockets is split in. The ticker walks one part
/// at a time and lets other tasks run between two: a walk of 100,000 sockets in one
/// piece held a runtime worker for 6–8 ms (`benches/hub_tick.rs`).
const SHARDS: usize = 64;

type Shard = RwLock<HashMap<Holder, Arc<Mailbox>, foldhash::fast::RandomState>>;

/// The sockets by id, in [`SHARDS`] maps by the id's low bits (a node's ids count
/// up, so they spread evenly). Not a `DashMap`: its only walk is one iterator over
/// every shard, which cannot pause between them.
struct Sockets(Box<[Shard]>);

impl Sockets {
    fn new() -> Self {
        Self((0..SHARDS).map(|_| Shard::default()).collect())
    }

    fn shard(&self, holder: Holder) -> &Shard {
        &self.0[(holder.0 % SHARDS as u64) as usize]
    }

    fn read(shard: &Shard) -> RwLockReadGuard<'_, HashMap<Holder, Arc<Mailbox>, foldhash::fast::RandomState>> {
        // Each change is one insert or remove: a panic elsewhere leaves the map whole.
        shard.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, holder: Holder, mailbox: Arc<Mailbox>) {
        let mut shard = self.shard(holder).write().unwrap_or_else(PoisonError::into_inner);
        shard.insert(holder, mailbox);
    }

    fn remove(&self, holder: Holder) {
        let mut shard = self.shard(holder).write().unwrap_or_else(PoisonError::into_inner);
        shard.remove(&holder);
    }

    /// Runs `f` on the mailbox of `holder`, if it is here.
    fn with(&self, holder: Holder, f: impl FnOnce(&Mailbox)) {
        if let Some(mailbox) = Self::read(self.shard(holder)).get(&holder) {
            f(mailbox);
        }
    }

    /// Runs `f` on every mailbox of shard `index`.
    fn each_in(&self, index: usize, mut f: impl FnMut(&Mailbox)) {
        if let Some(shard) = self.0.get(index) {
            Self::read(shard).values().for_each(|mailbox| f(mailbox));
        }
    }

    fn len(&self) -> usize {
        self.0.iter().map(|shard| Self::read(shard).len()).sum()
    }

    /// Gives back the room of shard `index` if a burst left it: room for more
    /// than [`SHARD_TRIM_FLOOR`] sockets and under a quarter of it used (the
    /// store's tables follow the same rule, `store::roster::roomy`). A map never
    /// shrinks on its own, so a node that once held a connection flood kept
    /// about 17 bytes a socket of its peak for good. True if it gave it back.
    fn trim(&self, index: usize) -> bool {
        let Some(shard) = self.0.get(index) else {
            return false;
        };
        let roomy = |map: &HashMap<_, _, _>| map.capacity() > SHARD_TRIM_FLOOR && map.len() < map.capacity() / 4;
        if !roomy(&*Self::read(shard)) {
            return false;
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        // Looked at again: sockets may have come between the two locks.
        if !roomy(&*map) {
            return false;
        }
        map.shrink_to_fit();
        true
    }
}

/// Sockets a shard may keep room for however few it holds: a sixty-fourth of
/// the store's floor (`store::roster::TRIM_FLOOR`), the hub being split in
/// [`SHARDS`] maps. Below it a rebuild would save less than it costs.
const SHARD_TRIM_FLOOR: usize = 1 << 10;

pub struct Hub {
    sockets: Sockets,
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
            sockets: Sockets::new(),
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
        self.sockets.remove(holder);
    }

    /// Tells every socket, present and to come, that the server is shutting down.
    /// Through the mailboxes the sockets already wait on, not a shutdown signal of
    /// their own: a signal's future in every socket's select was 80 bytes of each
    /// idle socket, enough to put its task in a larger allocation (`connection.rs`).
    pub fn close_all(&self) {
        // Set before the walk: a socket registered after the walk passed it reads
        // the flag when it first waits (`is_closing`), so none is missed.
        self.closing.store(true, Ordering::SeqCst);
        for shard in 0..SHARDS {
            self.sockets.each_in(shard, Mailbox::wake);
        }
    }

    /// How many shards [`Self::tick_shard`] takes.
    pub fn shards(&self) -> usize {
        SHARDS
    }

    /// Wakes every socket of shard `shard` (`0..self.shards()`) whose time ([`Mailbox::wake_at`]) is at most `now`. A
    /// socket that is busy when woken (a PONG at the store) is woken again at the
    /// next tick while its time stays passed; the wake is a flag, so that costs
    /// nothing more. Then gives back the shard's room if a burst left it
    /// ([`Sockets::trim`]).
    pub fn tick_shard(&self, shard: usize, now: Deadline) {
        let now = now.as_millis();
        self.sockets.each_in(shard, |mailbox| {
            if mailbox.wake_at.load(Ordering::Acquire) <= now {
                mailbox.wake();
            }
        });
        if self.sockets.trim(shard) {
            tracing::debug!(shard, "the hub's map gave back the room a burst of sockets left");
        }
    }

    /// Walks every shard with [`Self::tick_shard`] every `every` until the hub is dropped, a shard at a
    /// time, letting the runtime's other tasks run between two shards.
    pub fn start_ticker(self: &Arc<Self>, every: Duration) {
        let hub: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = Deadline::now();
                for shard in 0..SHARDS {
                    let Some(hub) = hub.upgrade() else { return };
                    hub.tick_shard(shard, now);
                    drop(hub);
                    tokio::task::yield_now().await;
                }
            }
        });
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
        self.len() == 0
    }
}

impl Notifier for Hub {
    fn notify(&self, holder: Holder, control: Control) {
        self.sockets.with(holder, |mailbox| mailbox.post(control));
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
    fn a_tick_gives_back_the_room_a_burst_of_sockets_left_and_only_that() {
        let hub = Hub::new(1);
        let room = |hub: &Hub| -> usize { hub.sockets.0.iter().map(|s| Sockets::read(s).capacity()).sum() };
        let burst: Vec<_> = (0..SHARDS * SHARD_TRIM_FLOOR * 2).map(|_| hub.register()).collect();
        let full = room(&hub);
        let now = Deadline::now();
        for shard in 0..SHARDS {
            hub.tick_shard(shard, now);
        }
        assert_eq!(room(&hub), full, "a full map keeps its room");
        // All but a few leave.
        let mut kept = Vec::new();
        for (n, mailbox) in burst.into_iter().enumerate() {
            if n % 100 == 0 {
                kept.push(mailbox);
            } else {
                hub.unregister(mailbox.holder);
            }
        }
        // Five times what a tick leaves, at least: a map's capacity counts its free
        // room, and a removal in a crowded group leaves a tombstone that no longer
        // counts as room (by the hash's random seed: as much as 40% of it in 300
        // runs, and over 10% in 5 of 150, which an earlier bound of 90% failed).
        assert!(
            room(&hub) * 4 > full,
            "leaving alone gives nothing back: {} of {full}",
            room(&hub)
        );
        for shard in 0..SHARDS {
            hub.tick_shard(shard, now);
        }
        assert!(room(&hub) * 20 < full, "{} of {full}", room(&hub));
        // The sockets left are all still there.
        assert_eq!(hub.sockets.len(), kept.len());
        for mailbox in &kept {
            let mut found = false;
            hub.sockets.with(mailbox.holder, |_| found = true);
            assert!(found);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticker_wakes_a_socket_once_its_time_has_passed_and_not_before() {
        let hub = Arc::new(Hub::new(1));
        let (due, idle) = (hub.register(), hub.register());
        due.wake_at(Deadline::after(Duration::from_millis(250)));
        idle.wake_at(Deadline::after(Duration::from_secs(3_600)));
        hub.start_ticker(Duration::from_millis(10));
        let woken = |mailbox: &Arc<Mailbox>| {
            let mailbox = Arc::clone(mailbox);
            tokio::spawn(async move { mailbox.wait().await })
        };
        let (due_woken, idle_woken) = (woken(&due), woken(&idle));
        tokio::time::sleep(Duration::from_millis(240)).await;
        assert!(!due_woken.is_finished(), "woken before its time");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(due_woken.is_finished(), "not woken within a tick of its time");
        assert!(!idle_woken.is_finished());
        assert!(
            !due.take_ping() && due.take_final().is_none(),
            "a wake is neither a PING nor an order"
        );
        idle_woken.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_ticker_stops_with_its_hub() {
        let hub = Arc::new(Hub::new(1));
        hub.start_ticker(Duration::from_millis(10));
        let weak = Arc::downgrade(&hub);
        drop(hub);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(weak.upgrade().is_none(), "the ticker keeps no hub alive");
    }

    #[test]
    fn the_tick_is_a_twentieth_of_the_shortest_deadline_within_1_to_250_ms() {
        let timings = |ping: u64, pong: u64, connect: u64| Timings {
            ping_interval: Duration::from_millis(ping),
            pong_timeout: Duration::from_millis(pong),
            reconnect_grace: Duration::from_secs(30),
            connect_timeout: Duration::from_millis(connect),
        };
        assert_eq!(tick_for(&Timings::default()), Duration::from_millis(250));
        assert_eq!(tick_for(&timings(1_000, 4_000, 30_000)), Duration::from_millis(50));
        assert_eq!(tick_for(&timings(5_000, 400, 30_000)), Duration::from_millis(20));
        assert_eq!(tick_for(&timings(10, 10, 10)), Duration::from_millis(1));
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
