//! What the domain needs from the outside world. Stores and transports implement
//! these traits; the domain never names an engine.

use std::sync::Arc;

use async_trait::async_trait;

use super::clock::Millis;
use super::events::{EventKind, SessionEvent};
use super::journal::JournalBatch;
use super::listing::{SessionPage, SessionQuery};
use super::policy::{CustomerOverride, LimitPolicy, OverrideKey};
use super::pool::{Attached, Granted, Limits, NewSession, Refusal, TakenOver};
use super::session::{Customer, Holder, PoolKey, Session, SessionId, SessionState};
use super::settings::{Catalog, Offer, Publisher};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this server cannot read (a record with an
    /// unknown state, a reply of another shape): never guessed at, since a guess
    /// could keep a dead session or drop a live one.
    #[error("session store reply unreadable: {0}")]
    Unreadable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings database error: {0}")]
    Database(String),
}

/// The live session pools, shared by every node that uses the store. Each
/// operation applies the rules of [`crate::domain::pool::Pool`] atomically for one
/// pool, and means the same on every store: `tests/api/conformance.rs` holds each
/// one to every method here.
///
/// What only some stores need is not here: a store that keeps its sessions in
/// this process also implements [`LocalSessions`] (sweeping and saving them);
/// one that keeps them elsewhere (Redis) expires them by itself and keeps them
/// across a node's restart.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Grants `new` if the pool has room and, when the pool holds no live session
    /// yet, if its customer may open one more pool ([`Limits::may_open_pool`],
    /// counting the customer's pools with a session alive at `now`). Both checks
    /// are atomic with the grant: parallel admissions never exceed either limit.
    async fn admit(
        &self,
        pool: &PoolKey,
        new: NewSession,
        limits: Limits,
        now: Millis,
    ) -> Result<Result<Granted, Refusal>, StoreError>;

    /// Ends `victim` (if alive in `pool`) and grants `new` in its place, at once.
    async fn take_over(
        &self,
        pool: &PoolKey,
        victim: SessionId,
        new: NewSession,
        now: Millis,
    ) -> Result<Option<TakenOver>, StoreError>;

    /// Binds socket `holder` to the session, live until `now` + the PONG timeout.
    /// `None` if the session is not alive in `pool`.
    async fn attach(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Option<Attached>, StoreError>;

    /// A PONG from `holder`: keeps the session live for another PONG timeout
    /// from `now`. See [`Heartbeat`] for what the answer promises: a store may
    /// batch the writes, so "accepted" is not always "written".
    async fn heartbeat(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Heartbeat, StoreError>;

    /// The socket closed: the session waits the reconnect grace for its player.
    /// False if `holder` did not hold it.
    async fn detach(&self, pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError>;

    /// Ends a session; with `holder`, only if that socket still holds it. A dead
    /// session cannot be ended: `None`.
    async fn end(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Option<Holder>,
        now: Millis,
    ) -> Result<Option<Session>, StoreError>;

    /// Ends the session socket `holder` holds, for `cause` (FINISHED, no PONG
    /// in time). [`Ended::Now`]: the caller reports the end; [`Ended::Later`]:
    /// the store could not tell yet whether the session was still the
    /// socket's (Redis out of reach while another node may have found it
    /// dead), and reports the end itself once it knows, if it ended it.
    async fn end_by_socket(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        cause: EndCause,
        now: Millis,
    ) -> Result<Ended, StoreError> {
        let _ = cause;
        Ok(self
            .end(pool, id, Some(holder), now)
            .await?
            .map_or(Ended::Gone, Ended::Now))
    }

    /// Ends a session on its owner's order from elsewhere (`DELETE
    /// /me/sessions/{id}`), as [`Self::end`] without a holder; a store that
    /// leaves a trace of how a session ended (Redis's tombstones) records it as
    /// taken over by `session_name`, so that its socket is told `TAKE_OVER` even
    /// if the order to its node is lost.
    async fn end_taken_over(
        &self,
        pool: &PoolKey,
        id: SessionId,
        session_name: &str,
        now: Millis,
    ) -> Result<Option<Session>, StoreError> {
        let _ = session_name;
        self.end(pool, id, None, now).await
    }

    /// The sessions of one pool that are alive at `now`, in creation order.
    async fn list(&self, pool: &PoolKey, now: Millis) -> Result<Vec<Session>, StoreError>;

    /// A page of one customer's sessions alive at `now` (for operators), read from
    /// that customer's pools only.
    async fn customer_sessions(&self, query: &SessionQuery, now: Millis) -> Result<SessionPage, StoreError>;

    /// Ends every session of `customer` (in the pool of `offer_id` only, if given)
    /// and returns them; atomic per pool: a pool's sessions all end at once.
    async fn end_customer(
        &self,
        customer: &Customer,
        offer_id: Option<&str>,
        now: Millis,
    ) -> Result<Vec<(PoolKey, Session)>, StoreError>;

    /// The pool a session id belongs to (for operators, who know only the id),
    /// from its admission (or restore) until it ends.
    async fn locate(&self, id: SessionId) -> Result<Option<PoolKey>, StoreError>;

    /// Puts saved sessions back as they are given (the caller sets their state and
    /// deadline), unless their pool has them already; they count against the
    /// limits at once, whatever the cap on pools.
    async fn restore(&self, sessions: Vec<(PoolKey, Session)>) -> Result<(), StoreError>;

    /// This node is stopping and its sockets are closed: after this, no session is
    /// bound to this node's sockets (each is detached, to wait the reconnect grace
    /// for its player, here after a restart or on another node), and none that is
    /// dead at `now` is kept to be saved or journaled.
    async fn hand_over(&self, now: Millis) -> Result<(), StoreError>;

    /// How many sessions are in each state, as far as this node knows without a
    /// walk or a round trip (read at every scrape of `/metrics` and by `/health`).
    fn by_state(&self) -> SessionsByState;
}

/// What a store did with a PONG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The session's deadline is moved.
    Written,
    /// Accepted for the store's next batched write (Redis: the node's refresh
    /// round). Should the session turn out to be gone by then, the store tells
    /// the socket through its [`Notifier`] (TERMINATE, TAKE_OVER or EXPIRED).
    Queued,
    /// This socket holds no live session any more: the caller closes it.
    NotHeld,
}

impl Heartbeat {
    /// Whether the socket may go on (written or queued).
    pub fn accepted(self) -> bool {
        self != Self::NotHeld
    }
}

/// How work done in bites (the sweep, the journal's flush) leaves the core between two bites. The
/// caller knows where the work runs: on the server's runtime it yields to the
/// requests queued meanwhile, on a thread of its own it sleeps a little.
pub trait Pause: Send + Sync {
    fn pause(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// What a store that keeps the sessions in this process must also do, since
/// nothing outside it will: remove the sessions that die unattended, and hand
/// them over to be saved across a restart. Redis does neither: a dead session
/// there stops counting at its deadline, the scripts that report it or the
/// purge delete it (`store::redis::purge`), and Redis outlives the node.
#[async_trait]
pub trait LocalSessions: Send + Sync + 'static {
    /// Removes the dead sessions of at most `pools` of the pools with a deadline
    /// due by `now`, and returns them. The sweep takes a wave of expiries a
    /// bounded bite at a time and lets requests run between bites: with a million
    /// customers, tens of thousands of sessions can expire in the same second.
    async fn reap_some(&self, now: Millis, pools: usize) -> Result<Reaped, StoreError>;

    /// Whether a pool's deadline is due by `now`, told cheaply (no lock, no
    /// allocation): every admission asks, and [`Self::reap_some`] is called only
    /// when the answer is yes. A wrong "no" only leaves the pool to a later asker.
    fn any_due(&self, now: Millis) -> bool;

    /// Gives back the room a burst left in the store's tables, where they are
    /// mostly empty: a hash table keeps the room of the most entries it ever
    /// held, so a flood of creates that all expired would otherwise keep its
    /// memory until a restart. Returns how many tables were trimmed. The sweep
    /// calls it now and then, never a request.
    fn trim(&self) -> usize;

    /// Removes every session that is dead at `now` and returns them.
    async fn reap(&self, now: Millis) -> Result<Vec<(PoolKey, Session)>, StoreError> {
        Ok(self.reap_some(now, usize::MAX).await?.dead)
    }

    /// Every session held (dead ones not yet reaped included), to be saved across
    /// a restart.
    async fn snapshot(&self) -> Result<Vec<(PoolKey, Session)>, StoreError>;
}

/// What one bite of the sweep removed.
#[derive(Debug, Default)]
pub struct Reaped {
    /// The sessions found dead, each with its pool.
    pub dead: Vec<(PoolKey, Session)>,
    /// Whether pools due by then are left for the next bite.
    pub more: bool,
}

/// Sessions by state. `None`: the store does not know it cheaply (Redis keeps
/// pending and detached sessions, which no node holds). With the memory store,
/// every session this node holds; with Redis, the live ones bound to this node's
/// sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionsByState {
    pub pending: Option<u64>,
    pub live: u64,
    pub detached: Option<u64>,
}

impl SessionsByState {
    /// Every session counted here: what `/health` reports as held.
    pub fn known(&self) -> u64 {
        self.pending.unwrap_or(0) + self.live + self.detached.unwrap_or(0)
    }
}

/// What [`SessionStore::end_by_socket`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Ended: the caller reports it.
    Now(Session),
    /// Not the socket's to end (any more), or already gone: nothing to report.
    Gone,
    /// Ended once the store can say; the store reports it then.
    Later,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndCause {
    /// Its player sent FINISHED.
    Finished,
    /// Live, but its player stopped answering PINGs.
    PongTimeout,
    /// Granted, but no player sent REQUESTED in time.
    ConnectTimeout,
    /// Its socket closed and no player came back within the reconnect grace.
    GraceExpired,
    /// Another device took it over.
    TakenOver,
    /// Ended by an operator, or by its owner without a socket.
    Kicked,
    /// Live, but the node holding its socket stopped (killed, or cut off from the
    /// session store for longer than a PONG timeout): ended by whichever node
    /// found it dead in the shared store.
    NodeLost,
    /// Live and still vouched for by its node, but not checked for so long that
    /// its record ran out: ended by whichever node found it in the shared store.
    Expired,
}

impl EndCause {
    pub const ALL: [Self; 8] = [
        Self::Finished,
        Self::PongTimeout,
        Self::ConnectTimeout,
        Self::GraceExpired,
        Self::TakenOver,
        Self::Kicked,
        Self::NodeLost,
        Self::Expired,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::PongTimeout => "pong_timeout",
            Self::ConnectTimeout => "connect_timeout",
            Self::GraceExpired => "grace_expired",
            Self::TakenOver => "taken_over",
            Self::Kicked => "kicked",
            Self::NodeLost => "node_lost",
            Self::Expired => "expired",
        }
    }

    /// Why a session that nobody ended died: its state says which deadline it missed.
    pub fn of_dead(state: SessionState) -> Self {
        match state {
            SessionState::Pending => Self::ConnectTimeout,
            SessionState::Live => Self::PongTimeout,
            SessionState::Detached => Self::GraceExpired,
        }
    }
}

/// Told of every session that ends (counted, and logged as an event), and of
/// every other [`SessionEvent`] control reports. Both are called on the request
/// path, some under a pool's lock: an implementation never blocks or waits (a
/// push onto a bounded queue at most).
pub trait SessionEvents: Send + Sync + 'static {
    fn ended(&self, pool: &PoolKey, id: SessionId, cause: EndCause);

    /// A session of `pool` would have been refused at `limit` but was granted,
    /// the offer's `policy` being `monitor` (shadow mode): counted, logged, and
    /// the place a session event for it belongs.
    fn over_limit(&self, pool: &PoolKey, limit: u32, policy: LimitPolicy) {
        let _ = (pool, limit, policy);
    }

    /// One event. By default only ends are heard, through [`Self::ended`].
    fn report(&self, event: SessionEvent) {
        if let (EventKind::Ended { cause }, Some(id)) = (&event.kind, event.session_id) {
            self.ended(&event.pool, id, *cause);
        }
    }
}

/// For stores and tests that report to nobody.
pub struct NoEvents;

impl SessionEvents for NoEvents {
    fn ended(&self, _: &PoolKey, _: SessionId, _: EndCause) {}
}

/// Where publisher and offer settings live.
#[async_trait]
pub trait SettingsRepo: Send + Sync + 'static {
    async fn catalog(&self, publisher_id: &str) -> Result<Option<Catalog>, SettingsError>;
    /// The catalog as admission reads it, on every create: shared, not copied, so
    /// that a caching repository answers without a copy.
    async fn shared_catalog(&self, publisher_id: &str) -> Result<Option<Arc<Catalog>>, SettingsError> {
        Ok(self.catalog(publisher_id).await?.map(Arc::new))
    }
    /// The catalog if it is at hand in memory and fresh, without waiting: `None`
    /// means "ask [`Self::shared_catalog`]", never "not configured". Admission asks
    /// this first on every create, which spares a caching repository's hits the
    /// boxed future of an async call.
    fn catalog_at_hand(&self, _publisher_id: &str) -> Option<Arc<Catalog>> {
        None
    }
    /// Creates the publisher with these settings unless it exists; returns what is stored.
    async fn create_publisher(&self, publisher: &Publisher) -> Result<Catalog, SettingsError>;
    async fn put_publisher(&self, publisher: &Publisher) -> Result<(), SettingsError>;
    /// Every publisher, by id.
    async fn list_publishers(&self) -> Result<Vec<Publisher>, SettingsError> {
        self.publishers_after(None, u32::MAX).await
    }
    /// At most `limit` publishers whose id sorts after `after` (by bytes), by id:
    /// keyset pagination, so a page costs the same however far the walk has gone.
    async fn publishers_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Publisher>, SettingsError>;
    async fn put_offer(&self, publisher_id: &str, offer: &Offer) -> Result<(), SettingsError>;
    async fn delete_offer(&self, publisher_id: &str, offer_id: &str) -> Result<bool, SettingsError>;
    /// A customer's own limit on one offer, expired or not (admission decides).
    async fn customer_override(&self, key: &OverrideKey) -> Result<Option<CustomerOverride>, SettingsError>;
    /// Creates or replaces it.
    async fn put_override(&self, key: &OverrideKey, value: &CustomerOverride) -> Result<(), SettingsError>;
    /// False if there was none.
    async fn delete_override(&self, key: &OverrideKey) -> Result<bool, SettingsError>;
}

/// Where a start's sessions go as they are read, a chunk of at most
/// [`HELD_CHUNK`] at a time: the store fills while the archive reads, so a start
/// never holds every session twice (once read, once restored).
pub type HeldSink = tokio::sync::mpsc::Sender<Vec<(PoolKey, Session)>>;

/// Sessions one chunk of [`SessionArchive::held_into`] carries at most.
pub const HELD_CHUNK: usize = 4096;

/// Where held sessions wait while the server restarts: saved at shutdown and taken
/// at start, or kept up to date all along by the session journal
/// ([`crate::domain::journal`]) so that a crash loses none of them.
#[async_trait]
pub trait SessionArchive: Send + Sync + 'static {
    async fn save(&self, sessions: &[(PoolKey, Session)]) -> Result<(), SettingsError>;
    /// Returns the saved sessions and forgets them.
    async fn take(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError>;
    /// Sends the saved sessions to `into` in chunks as they are read, and keeps
    /// them: the journal deletes each row when its session ends. Stops early,
    /// without an error, once `into` is closed (the start gave up).
    async fn held_into(&self, into: HeldSink) -> Result<(), SettingsError>;
    /// Every saved session at once ([`Self::held_into`] gathered), kept.
    async fn held(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError> {
        let (into, mut chunks) = tokio::sync::mpsc::channel(1);
        // Moved in: the receiver is dropped when the gathering ends.
        let gather = async move {
            let mut all = Vec::new();
            while let Some(chunk) = chunks.recv().await {
                all.extend(chunk);
            }
            all
        };
        let (read, all) = tokio::join!(self.held_into(into), gather);
        read.map(|()| all)
    }
    /// Applies one batch of the journal in one transaction.
    async fn write(&self, batch: &JournalBatch) -> Result<(), SettingsError>;
}

/// What the server tells a player's socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Control {
    /// Send PING.
    Ping,
    /// Another device took this session over: send TAKE_OVER and close.
    TakeOver { session_name: String },
    /// A newer socket holds this session: send TERMINATE and close.
    Terminate,
    /// The session ended elsewhere (reaped, kicked): send EXPIRED and close.
    Expire,
}

/// Reaches the socket that holds a session, wherever it is.
///
/// Addressed by socket alone: a socket is bound to the one session its token
/// names for its whole life, and socket ids are never reused, so the holder says
/// which session too. (An order for a socket that closed meanwhile is dropped.)
pub trait Notifier: Send + Sync + 'static {
    /// Delivers `control` to the socket `holder` if it is still open; otherwise
    /// drops it. Never blocks.
    fn notify(&self, holder: Holder, control: Control);
}
