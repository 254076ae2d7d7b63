//! What the domain needs from the outside world. Stores and transports implement
//! these traits; the domain never names an engine.

use std::sync::Arc;

use async_trait::async_trait;

use super::clock::Millis;
use super::journal::JournalBatch;
use super::listing::{SessionPage, SessionQuery};
use super::pool::{Attached, Granted, Limits, NewSession, Refusal, TakenOver};
use super::session::{Customer, Holder, PoolKey, Session, SessionId, SessionState};
use super::settings::{Catalog, Offer, Publisher};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings database error: {0}")]
    Database(String),
}

/// The live session pools. Each operation applies the rules of
/// [`crate::domain::pool::Pool`] atomically for one pool.
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

    async fn take_over(
        &self,
        pool: &PoolKey,
        victim: SessionId,
        new: NewSession,
        now: Millis,
    ) -> Result<Option<TakenOver>, StoreError>;

    async fn attach(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        now: Millis,
    ) -> Result<Option<Attached>, StoreError>;

    async fn heartbeat(&self, pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError>;

    async fn detach(&self, pool: &PoolKey, id: SessionId, holder: Holder, now: Millis) -> Result<bool, StoreError>;

    /// Ends a session; with `holder`, only if that socket still holds it.
    async fn end(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Option<Holder>,
        now: Millis,
    ) -> Result<Option<Session>, StoreError>;

    /// The sessions of one pool that are alive at `now`.
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

    /// The pool a session id belongs to (for operators, who know only the id).
    async fn locate(&self, id: SessionId) -> Result<Option<PoolKey>, StoreError>;

    /// Removes every session that is dead at `now` and returns them.
    async fn reap(&self, now: Millis) -> Result<Vec<(PoolKey, Session)>, StoreError>;

    /// Every session held, to be saved across a restart.
    async fn snapshot(&self) -> Result<Vec<(PoolKey, Session)>, StoreError>;

    /// Puts saved sessions back (as they are given: the caller sets their state).
    async fn restore(&self, sessions: Vec<(PoolKey, Session)>) -> Result<(), StoreError>;

    /// How many sessions are held, dead or not yet reaped included.
    async fn count(&self) -> Result<usize, StoreError>;

    /// This node is stopping and its sockets are closed: leave the sessions they
    /// held to wait for a reconnect. Where the sessions are kept by this process
    /// (saved with [`SessionStore::snapshot`] or journaled), it only drops the
    /// sessions that died meanwhile, so a restart does not bring them back.
    async fn hand_over(&self, _now: Millis) -> Result<(), StoreError> {
        Ok(())
    }

    /// How many sessions are held in each state, as far as the store knows without
    /// a walk or a round trip (read at every scrape of `/metrics`).
    fn by_state(&self) -> SessionsByState;
}

/// Sessions by state. `None`: the store does not know it cheaply (Redis keeps
/// pending and detached sessions, which no node holds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionsByState {
    pub pending: Option<u64>,
    pub live: u64,
    pub detached: Option<u64>,
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
}

impl EndCause {
    pub const ALL: [Self; 6] = [
        Self::Finished,
        Self::PongTimeout,
        Self::ConnectTimeout,
        Self::GraceExpired,
        Self::TakenOver,
        Self::Kicked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::PongTimeout => "pong_timeout",
            Self::ConnectTimeout => "connect_timeout",
            Self::GraceExpired => "grace_expired",
            Self::TakenOver => "taken_over",
            Self::Kicked => "kicked",
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

/// Told of every session that ends (counted, and logged as an event).
pub trait SessionEvents: Send + Sync + 'static {
    fn ended(&self, pool: &PoolKey, id: SessionId, cause: EndCause);
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
}

/// Where held sessions wait while the server restarts: saved at shutdown and taken
/// at start, or kept up to date all along by the session journal
/// ([`crate::domain::journal`]) so that a crash loses none of them.
#[async_trait]
pub trait SessionArchive: Send + Sync + 'static {
    async fn save(&self, sessions: &[(PoolKey, Session)]) -> Result<(), SettingsError>;
    /// Returns the saved sessions and forgets them.
    async fn take(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError>;
    /// Returns the saved sessions and keeps them: the journal deletes each row
    /// when its session ends.
    async fn held(&self) -> Result<Vec<(PoolKey, Session)>, SettingsError>;
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
pub trait Notifier: Send + Sync + 'static {
    /// Delivers `control` to the socket `holder` if it still holds session `id`;
    /// otherwise drops it. Never blocks.
    fn notify(&self, id: SessionId, holder: Holder, control: Control);
}
