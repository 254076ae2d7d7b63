//! Session control: the operations players and operators trigger, combining the
//! settings, the session store and the sockets.

use std::collections::HashMap;
use std::sync::Arc;

use super::clock::Clock;
use super::clock::Millis;
use super::events::{EventKind, RefusalReason, SessionEvent};
use super::listing::{SessionPage, SessionQuery};
use super::liveness::Timings;
use super::policy::{self, AtLimit, CustomerOverride, EVICT_TRIES, LimitPolicy, OverrideKey};
use super::pool::{ActiveSession, Granted, Limits, NewSession, Refusal, TakenOver};
use super::ports::{
    Control, EndCause, Ended, LocalSessions, Notifier, Pause, SessionArchive, SessionEvents, SessionStore,
    SessionsByState, SettingsError, SettingsRepo, StoreError,
};
use super::session::{Customer, Holder, PoolKey, Session, SessionId, SessionState};
use super::settings::{Catalog, Offer, OfferChoice, Publisher, ResolveError, ResolvedOffer, UnknownOffers};

/// Pools the sweep visits between two chances to rest: with a million customers
/// a pool holds one session or two, and each visit (removing the pool's dead
/// sessions, dropping an emptied pool, a log line per session) costs about 5 µs,
/// so a bite is under a tenth of a millisecond.
pub const REAP_BITE: usize = 16;

/// How long past its deadline a dead session may wait for the sweep before
/// admissions reap it themselves ([`SessionControl::reap_overdue`]): a few sweep
/// intervals, so that on a node with CPU to spare the sweep alone does it.
pub const OVERDUE: Millis = 5_000;

/// Pools an admission reaps when the sweep is [`OVERDUE`]: more than the one
/// expiry an admission can queue, so the backlog shrinks while admissions go on.
pub const ADMISSION_BITE: usize = 2;

/// What a start brought back. Restored sessions all end together when nobody
/// comes back within the reconnect grace, so a publisher's count is also the
/// burst of `session.ended` events its webhook may get at once.
#[derive(Debug, Default)]
pub struct Restored {
    /// Sessions per publisher: publishers are few, sessions up to millions (a
    /// look-up each, with foldhash's cheap hashing).
    pub by_publisher: HashMap<String, usize, foldhash::fast::RandomState>,
}

impl Restored {
    pub fn total(&self) -> usize {
        self.by_publisher.values().sum()
    }

    fn count(&mut self, publisher_id: &str) {
        match self.by_publisher.get_mut(publisher_id) {
            Some(n) => *n += 1,
            None => {
                self.by_publisher.insert(publisher_id.to_owned(), 1);
            }
        }
    }
}

/// How publishers that are not configured are treated.
#[derive(Debug, Clone)]
pub struct PublisherPolicy {
    /// Create a publisher with the defaults on first sight (else: 403).
    pub auto_create: bool,
    pub enabled: bool,
    pub takeover_enabled: bool,
    pub default_session_limit: u32,
    pub unknown_offers: UnknownOffers,
    /// Pools one customer may hold sessions in at once, whatever the publisher.
    pub max_pools_per_customer: u32,
}

impl PublisherPolicy {
    pub fn new_publisher(&self, id: &str) -> Publisher {
        Publisher {
            id: id.to_owned(),
            enabled: self.enabled,
            takeover_enabled: self.takeover_enabled,
            default_session_limit: self.default_session_limit,
            unknown_offers: self.unknown_offers,
            verification_key: None,
            jwks_uri: None,
            on_limit: LimitPolicy::Reject,
            customer_session_limit: None,
        }
    }
}

/// What to do with new sessions while the session store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnavailablePolicy {
    /// Refuse them (503); sessions already held keep playing.
    #[default]
    Refuse,
    /// Let players play without a session: creates answer "DRISC disabled".
    FailOpen,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("publisher '{0}' is not configured on this server")]
    UnknownPublisher(String),
    #[error(transparent)]
    Offer(#[from] ResolveError),
    #[error("session {0} does not exist (it may have ended or been taken over)")]
    SessionNotFound(SessionId),
    #[error("takeover is disabled for this offer")]
    TakeoverDisabled,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// What a player asks for when it creates (or takes over) a session.
#[derive(Debug, Clone, Copy)]
pub struct CreateRequest<'a> {
    pub name: &'a str,
    pub offer: OfferChoice<'a>,
}

#[derive(Debug, Clone)]
pub enum CreateOutcome {
    Granted {
        pool: PoolKey,
        /// The offer as the player knows it (the pool may be the shared one).
        offer_id: String,
        session: Session,
    },
    /// Session control is switched off for this publisher: play without a session.
    Disabled,
    /// The store failed and `cluster.on_store_unavailable` is `fail_open`: play
    /// without a session, as [`Self::Disabled`]. The caller logs the cause
    /// (a line per create while the store is down would be a flood).
    FailedOpen { cause: String },
    LimitExceeded {
        takeover_enabled: bool,
        active: Vec<ActiveSession>,
    },
    /// The customer holds sessions in `max` pools already, and this one is empty.
    TooManyPools { max: u32 },
}

pub struct SessionControl {
    store: Arc<dyn SessionStore>,
    /// The same store's sweeping and saving, when it keeps the sessions in this
    /// process (the memory store); `None` when the store keeps them itself (Redis).
    local: Option<Arc<dyn LocalSessions>>,
    settings: Arc<dyn SettingsRepo>,
    notifier: Arc<dyn Notifier>,
    events: Arc<dyn SessionEvents>,
    clock: Clock,
    timings: Timings,
    policy: PublisherPolicy,
    on_unavailable: UnavailablePolicy,
}

/// How [`SessionControl`] is assembled.
pub struct ControlParts {
    pub store: Arc<dyn SessionStore>,
    /// `store`'s [`LocalSessions`], if it has them.
    pub local: Option<Arc<dyn LocalSessions>>,
    /// Read on every create: a caching repository (`store::cached_settings`) keeps
    /// admission off the database.
    pub settings: Arc<dyn SettingsRepo>,
    pub notifier: Arc<dyn Notifier>,
    /// Told of every session this node ends or reaps.
    pub events: Arc<dyn SessionEvents>,
    pub clock: Clock,
    pub timings: Timings,
    pub policy: PublisherPolicy,
    pub on_unavailable: UnavailablePolicy,
}

impl SessionControl {
    pub fn new(parts: ControlParts) -> Self {
        Self {
            store: parts.store,
            local: parts.local,
            settings: parts.settings,
            notifier: parts.notifier,
            events: parts.events,
            clock: parts.clock,
            timings: parts.timings,
            policy: parts.policy,
            on_unavailable: parts.on_unavailable,
        }
    }

    /// The settings a publisher gets when it is created without any given.
    pub fn default_publisher(&self, publisher_id: &str) -> Publisher {
        self.policy.new_publisher(publisher_id)
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// The publisher's settings and offers; creates the publisher on first sight
    /// when the policy allows it.
    pub async fn catalog(&self, publisher_id: &str) -> Result<Arc<Catalog>, ControlError> {
        if let Some(c) = self.known_catalog(publisher_id).await? {
            return Ok(c);
        }
        if !self.policy.auto_create {
            return Err(ControlError::UnknownPublisher(publisher_id.to_owned()));
        }
        let publisher = self.policy.new_publisher(publisher_id);
        tracing::info!(
            publisher = publisher_id,
            "publisher seen for the first time: created with default settings"
        );
        let catalog = self.settings.create_publisher(&publisher).await?;
        Ok(Arc::new(catalog))
    }

    /// The publisher's settings and offers if it is configured; never creates it.
    pub async fn known_catalog(&self, publisher_id: &str) -> Result<Option<Arc<Catalog>>, ControlError> {
        if let Some(catalog) = self.settings.catalog_at_hand(publisher_id) {
            return Ok(Some(catalog));
        }
        Ok(self.settings.shared_catalog(publisher_id).await?)
    }

    /// `known`: the publisher's catalog, when the caller has just read it.
    async fn resolve(
        &self,
        customer: &Customer,
        known: Option<Arc<Catalog>>,
        offer: OfferChoice<'_>,
    ) -> Result<Option<ResolvedOffer>, ControlError> {
        let catalog = match known {
            Some(catalog) => catalog,
            None => self.catalog(&customer.publisher_id).await?,
        };
        if !catalog.publisher.enabled {
            return Ok(None);
        }
        Ok(Some(catalog.resolve(offer)?))
    }

    /// `POST /sessions`: grants a session if the customer's pool has room.
    pub async fn create(&self, customer: &Customer, request: CreateRequest<'_>) -> Result<CreateOutcome, ControlError> {
        self.create_in(customer, None, request).await
    }

    /// [`Self::create`] with the publisher's catalog already in hand (`known`), as
    /// it is once the customer's token was verified with the publisher's key: the
    /// settings cache is then read once per create instead of twice.
    pub async fn create_in(
        &self,
        customer: &Customer,
        known: Option<Arc<Catalog>>,
        request: CreateRequest<'_>,
    ) -> Result<CreateOutcome, ControlError> {
        let Some(offer) = self.resolve(customer, known, request.offer).await? else {
            return Ok(CreateOutcome::Disabled);
        };
        let pool = PoolKey::new(customer, offer.pool_offer_id.clone());
        let new = NewSession {
            id: SessionId::for_customer(customer),
            name: request.name.to_owned(),
        };
        let now = self.clock.now();
        let limits = Limits {
            sessions: self.session_limit(&pool, &offer, now).await?,
            pools_per_customer: self.policy.max_pools_per_customer,
            customer_sessions: offer.customer_session_limit,
        };
        let admitted = self.admit(&pool, new, limits, offer.on_limit, now).await;
        self.reap_overdue(now).await;
        let admitted = match self.when_unavailable(admitted)? {
            Ok(admitted) => admitted,
            Err(failed_open) => return Ok(failed_open),
        };
        match admitted {
            Ok(granted) => {
                for (_, holder) in granted.live_others {
                    self.notifier.notify(holder, Control::Ping);
                }
                tracing::info!(
                    event = "session_granted",
                    publisher = %pool.publisher_id(),
                    customer = %pool.customer_id(),
                    offer = %pool.offer_id(),
                    session = %granted.session.id,
                    "session granted"
                );
                self.events.report(SessionEvent::new(
                    EventKind::Granted,
                    &pool,
                    Some(granted.session.id),
                    Some(&granted.session.name),
                ));
                Ok(CreateOutcome::Granted {
                    pool,
                    offer_id: offer.offer_id,
                    session: granted.session,
                })
            }
            Err(Refusal::Full(full)) => {
                tracing::info!(
                    event = "session_refused",
                    reason = "limit_exceeded",
                    publisher = %pool.publisher_id(),
                    customer = %pool.customer_id(),
                    offer = %pool.offer_id(),
                    limit = limits.sessions,
                    "session refused: the customer holds as many sessions as the offer allows"
                );
                self.report_refusal(&pool, RefusalReason::LimitExceeded, request.name);
                Ok(CreateOutcome::LimitExceeded {
                    takeover_enabled: offer.takeover_enabled,
                    active: full.active,
                })
            }
            Err(Refusal::Household(full)) => {
                tracing::info!(
                    event = "session_refused",
                    reason = "household_limit",
                    publisher = %pool.publisher_id(),
                    customer = %pool.customer_id(),
                    offer = %pool.offer_id(),
                    limit = ?limits.customer_sessions,
                    "session refused: the customer holds as many sessions across offers as the publisher allows"
                );
                self.report_refusal(&pool, RefusalReason::HouseholdLimit, request.name);
                // `/takeover` replaces a session of the requested offer's pool
                // only, and these may be in any pool: the player is not offered it
                // (DELETE /me/sessions/{id} frees one of them).
                Ok(CreateOutcome::LimitExceeded {
                    takeover_enabled: false,
                    active: full.active,
                })
            }
            Err(Refusal::TooManyPools) => {
                let max = limits.pools_per_customer;
                // Worth an operator's eye: a real player seldom needs that many
                // offers at once, a script inventing offer ids does.
                tracing::warn!(
                    event = "session_refused",
                    reason = "too_many_pools",
                    publisher = %customer.publisher_id,
                    customer = %customer.customer_id,
                    max,
                    "create refused: the customer holds sessions in publishers.max_pools_per_customer pools"
                );
                self.report_refusal(&pool, RefusalReason::TooManyPools, request.name);
                Ok(CreateOutcome::TooManyPools { max })
            }
        }
    }

    /// The limit of the customer's pool at `now`: their override while it
    /// applies, else the offer's. Looked up only for a publisher with overrides.
    async fn session_limit(&self, pool: &PoolKey, offer: &ResolvedOffer, now: Millis) -> Result<u32, ControlError> {
        if !offer.overridden {
            return Ok(offer.session_limit);
        }
        let key = OverrideKey {
            publisher_id: pool.publisher_id().to_owned(),
            customer_id: pool.customer_id().to_owned(),
            offer_id: pool.offer_id().to_owned(),
        };
        let found = self.settings.customer_override(&key).await?;
        Ok(policy::session_limit(offer.session_limit, found.as_ref(), now))
    }

    /// The store's admission, then what the offer's `policy` does with a full
    /// pool. Every step is one atomic store operation, so the limit holds
    /// whatever the concurrency: `evict_oldest` swaps a session for another with
    /// the store's takeover (never growing the pool), and `monitor` alone lets a
    /// pool past its limit, on purpose, up to a ceiling the store is asked to
    /// hold ([`policy::admission_limit`]): its grant says how many sessions were
    /// beside it, which tells a would-be refusal.
    ///
    /// Evicting through the existing takeover rather than inside the admission
    /// keeps every store's admission as it was (and its Lua small); the price,
    /// a second round trip, is paid only by a create that finds its pool full.
    async fn admit(
        &self,
        pool: &PoolKey,
        new: NewSession,
        limits: Limits,
        on_limit: LimitPolicy,
        now: Millis,
    ) -> Result<Result<Granted, Refusal>, StoreError> {
        // Kept for evict_oldest's takeover and its tries again; the other
        // policies admit once.
        let again = (on_limit == LimitPolicy::EvictOldest).then(|| new.clone());
        let asked = Limits {
            sessions: policy::admission_limit(on_limit, limits.sessions),
            ..limits
        };
        let mut outcome = self.store.admit(pool, new, asked, now).await?;
        for _ in 0..EVICT_TRIES {
            let full = match &outcome {
                Ok(granted) => {
                    if policy::granted_past_limit(on_limit, limits.sessions, granted.others) {
                        self.granted_past_limit(pool, limits.sessions, on_limit, &granted.session.name);
                    }
                    return Ok(outcome);
                }
                Err(Refusal::Full(full)) => full,
                Err(_) => return Ok(outcome),
            };
            match policy::at_limit(on_limit, &full.active) {
                AtLimit::Refuse => return Ok(outcome),
                AtLimit::PastCeiling => {
                    self.past_ceiling(pool, limits.sessions);
                    return Ok(outcome);
                }
                AtLimit::Evict(victim) => {
                    let Some(new) = &again else {
                        return Ok(outcome);
                    };
                    if let Some(done) = self.store.take_over(pool, victim, new.clone(), now).await? {
                        self.evicted(pool, &done);
                        return Ok(Ok(done.granted));
                    }
                    // The oldest ended meanwhile: there may be room now.
                    outcome = self.store.admit(pool, new.clone(), limits, now).await?;
                }
            }
        }
        Ok(outcome)
    }

    /// `monitor` granted a session that `reject` would have refused: counted
    /// (`drisc_sessions_over_limit_total`) and reported as a refusal not enforced.
    fn granted_past_limit(&self, pool: &PoolKey, limit: u32, on_limit: LimitPolicy, name: &str) {
        self.events.over_limit(pool, limit, on_limit);
        let kind = EventKind::Refused {
            reason: RefusalReason::LimitExceeded,
            enforced: false,
        };
        self.events.report(SessionEvent::new(kind, pool, None, Some(name)));
    }

    /// Worth an operator's eye: a pool under `monitor` reached its ceiling, which
    /// no real household does; the create is refused as `reject` would refuse it.
    fn past_ceiling(&self, pool: &PoolKey, limit: u32) {
        tracing::warn!(
            event = "session_past_monitor_ceiling",
            publisher = %pool.publisher_id(),
            customer = %pool.customer_id(),
            offer = %pool.offer_id(),
            limit,
            ceiling = policy::monitor_ceiling(limit),
            "create refused: the pool holds as many sessions as onLimit \"monitor\" ever lets it hold past its limit"
        );
    }

    /// The session `evict_oldest` replaced: it ends as taken over, and its
    /// player is told the new session's name, as after `POST /takeover`.
    fn evicted(&self, pool: &PoolKey, done: &TakenOver) {
        tracing::info!(
            event = "session_taken_over",
            reason = "evict_oldest",
            publisher = %pool.publisher_id(),
            customer = %pool.customer_id(),
            offer = %pool.offer_id(),
            session = %done.granted.session.id,
            victim = %done.victim.id,
            "session taken over: its pool was full and the offer evicts the oldest"
        );
        self.report_taken_over(pool, done);
        if let Some(holder) = done.victim.holder {
            let session_name = done.granted.session.name.clone();
            self.notifier.notify(holder, Control::TakeOver { session_name });
        }
    }

    /// `POST /takeover`: ends `victim`, one of the customer's sessions in the
    /// requested pool, tells its player, and grants a new session in its place.
    pub async fn take_over(
        &self,
        customer: &Customer,
        request: CreateRequest<'_>,
        victim: SessionId,
    ) -> Result<CreateOutcome, ControlError> {
        let Some(offer) = self.resolve(customer, None, request.offer).await? else {
            return Ok(CreateOutcome::Disabled);
        };
        if !offer.takeover_enabled {
            return Err(ControlError::TakeoverDisabled);
        }
        let pool = PoolKey::new(customer, offer.pool_offer_id);
        let new = NewSession {
            id: SessionId::for_customer(customer),
            name: request.name.to_owned(),
        };
        let taken = self.store.take_over(&pool, victim, new, self.clock.now()).await;
        let taken = match self.when_unavailable(taken)? {
            Ok(taken) => taken,
            Err(failed_open) => return Ok(failed_open),
        };
        let done = taken.ok_or(ControlError::SessionNotFound(victim))?;
        tracing::info!(
            event = "session_taken_over",
            publisher = %pool.publisher_id(),
            customer = %pool.customer_id(),
            offer = %pool.offer_id(),
            session = %done.granted.session.id,
            victim = %victim,
            "session taken over"
        );
        self.report_taken_over(&pool, &done);
        let by = &done.granted.session;
        self.events.report(SessionEvent::new(
            EventKind::Granted,
            &pool,
            Some(by.id),
            Some(&by.name),
        ));
        if let Some(holder) = done.victim.holder {
            let session_name = done.granted.session.name.clone();
            self.notifier.notify(holder, Control::TakeOver { session_name });
        }
        for (_, holder) in done.granted.live_others {
            self.notifier.notify(holder, Control::Ping);
        }
        Ok(CreateOutcome::Granted {
            pool,
            offer_id: offer.offer_id,
            session: done.granted.session,
        })
    }

    /// Applies the unavailability policy to a store result: `Err` is the outcome
    /// that lets the player play without a session.
    fn when_unavailable<T>(&self, result: Result<T, StoreError>) -> Result<Result<T, CreateOutcome>, ControlError> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(e) if self.on_unavailable == UnavailablePolicy::FailOpen => {
                Ok(Err(CreateOutcome::FailedOpen { cause: e.to_string() }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// This node is stopping: its sessions are left to wait for their players to
    /// reconnect (here after a restart, or on another node).
    pub async fn hand_over(&self) -> Result<(), ControlError> {
        Ok(self.store.hand_over(self.clock.now()).await?)
    }

    /// REQUESTED: binds the socket `holder` to the session. `None` if the session
    /// is gone; else the pool's key for the socket to keep: the store's own copy
    /// where it has one ([`Attached::key`]), sharing its allocation. A socket that
    /// held the session before is told to stop.
    pub async fn attach(&self, pool: &PoolKey, id: SessionId, holder: Holder) -> Result<Option<PoolKey>, ControlError> {
        let Some(attached) = self.store.attach(pool, id, holder, self.clock.now()).await? else {
            return Ok(None);
        };
        if let Some(previous) = attached.previous {
            self.notifier.notify(previous, Control::Terminate);
        }
        Ok(Some(attached.key.unwrap_or_else(|| pool.clone())))
    }

    /// PONG. False if this socket no longer holds a live session; true if the
    /// store accepted it (written, or queued for the store's next batch).
    pub async fn heartbeat(&self, pool: &PoolKey, id: SessionId, holder: Holder) -> Result<bool, ControlError> {
        let heard = self.store.heartbeat(pool, id, holder, self.clock.now()).await?;
        Ok(heard.accepted())
    }

    /// The socket closed without FINISHED.
    pub async fn detach(&self, pool: &PoolKey, id: SessionId, holder: Holder) -> Result<(), ControlError> {
        self.store.detach(pool, id, holder, self.clock.now()).await?;
        Ok(())
    }

    /// FINISHED, or a live socket that missed its PONG (`cause`): the slot is freed at once.
    pub async fn end_held(
        &self,
        pool: &PoolKey,
        id: SessionId,
        holder: Holder,
        cause: EndCause,
    ) -> Result<bool, ControlError> {
        match self
            .store
            .end_by_socket(pool, id, holder, cause, self.clock.now())
            .await?
        {
            Ended::Now(session) => {
                self.events
                    .report(SessionEvent::ended(pool, id, Some(&session.name), cause));
                Ok(true)
            }
            Ended::Later => Ok(true),
            Ended::Gone => Ok(false),
        }
    }

    /// Ends a session on behalf of an operator (or its owner) and closes its socket.
    pub async fn kick(&self, pool: &PoolKey, id: SessionId) -> Result<Session, ControlError> {
        let session = self
            .store
            .end(pool, id, None, self.clock.now())
            .await?
            .ok_or(ControlError::SessionNotFound(id))?;
        self.report_kicked(pool, &session);
        self.expire(&session);
        Ok(session)
    }

    /// Ends every session of a customer (of one offer, if given) on behalf of an
    /// operator, and closes their sockets, wherever they are held.
    pub async fn kick_customer(&self, customer: &Customer, offer_id: Option<&str>) -> Result<usize, ControlError> {
        let ended = self.store.end_customer(customer, offer_id, self.clock.now()).await?;
        for (pool, session) in &ended {
            self.report_kicked(pool, session);
            self.expire(session);
        }
        Ok(ended.len())
    }

    /// A page of a customer's sessions, for operators.
    pub async fn customer_sessions(&self, query: &SessionQuery) -> Result<SessionPage, ControlError> {
        Ok(self.store.customer_sessions(query, self.clock.now()).await?)
    }

    /// A session replaced by another (a takeover, or `evict_oldest`), as events:
    /// `session.taken_over` then `session.ended` (cause `taken_over`).
    fn report_taken_over(&self, pool: &PoolKey, done: &TakenOver) {
        let by = &done.granted.session;
        let victim = &done.victim;
        self.events.report(SessionEvent::new(
            EventKind::TakenOver {
                by: by.id,
                by_name: by.name.clone(),
            },
            pool,
            Some(victim.id),
            Some(&victim.name),
        ));
        self.events.report(SessionEvent::ended(
            pool,
            victim.id,
            Some(&victim.name),
            EndCause::TakenOver,
        ));
    }

    /// A refused create, as an event (no session was made: no id).
    fn report_refusal(&self, pool: &PoolKey, reason: RefusalReason, name: &str) {
        let kind = EventKind::Refused { reason, enforced: true };
        self.events.report(SessionEvent::new(kind, pool, None, Some(name)));
    }

    /// A session an operator (or its owner) ended: kicked, then ended.
    fn report_kicked(&self, pool: &PoolKey, session: &Session) {
        let name = Some(session.name.as_str());
        self.events
            .report(SessionEvent::new(EventKind::Kicked, pool, Some(session.id), name));
        self.events
            .report(SessionEvent::ended(pool, session.id, name, EndCause::Kicked));
    }

    /// Tells the socket still bound to an ended session, if any: EXPIRED.
    fn expire(&self, session: &Session) {
        if let Some(holder) = session.holder {
            self.notifier.notify(holder, Control::Expire);
        }
    }

    pub async fn locate(&self, id: SessionId) -> Result<Option<PoolKey>, ControlError> {
        Ok(self.store.locate(id).await?)
    }

    pub async fn sessions(&self, pool: &PoolKey) -> Result<Vec<Session>, ControlError> {
        Ok(self.store.list(pool, self.clock.now()).await?)
    }

    /// Ends every session that is dead by now and closes the sockets still bound
    /// to them. Admission never depends on this: it only frees memory and tells
    /// sockets sooner. Nothing to do where the store expires sessions itself.
    ///
    /// A bite of [`REAP_BITE`] pools at a time, each followed by `between_bites`
    /// (see [`Pause`]): when tens of thousands of sessions
    /// expire in the same second (a million customers who were granted a session
    /// and never connected), one burst of removals and `session_ended` lines would
    /// hold up every request queued behind it. The sweep still ends what was due
    /// when it started before it returns; only the requests in between come first.
    pub async fn reap(&self, between_bites: &impl Pause) -> Result<usize, ControlError> {
        let Some(local) = &self.local else {
            return Ok(0);
        };
        let now = self.clock.now();
        let mut reaped = 0;
        loop {
            let bite = local.reap_some(now, REAP_BITE).await?;
            self.end_reaped(&bite.dead);
            reaped += bite.dead.len();
            if !bite.more {
                return Ok(reaped);
            }
            between_bites.pause().await;
        }
    }

    /// Gives back the room a burst left in the local store's tables
    /// ([`LocalSessions::trim`]); how many tables were trimmed.
    pub fn trim(&self) -> usize {
        let trimmed = self.local.as_ref().map_or(0, |local| local.trim());
        if trimmed > 0 {
            tracing::debug!(tables = trimmed, "the store's tables gave back the room a burst left");
        }
        trimmed
    }

    /// Reaps at most [`ADMISSION_BITE`] pools whose sessions died more than
    /// [`OVERDUE`] ago: the sweep's work, done by an admission when the sweep
    /// falls behind. The sweep runs at nice 19 and so gets almost nothing on a
    /// node that admissions keep saturated; then every player granted a session
    /// who never connects (a warm-up's, a flood of new customers') stayed in
    /// memory until the load dropped, however long it lasted. Each admission
    /// queues at most one deadline and reaps up to two overdue ones, so the
    /// dead a saturated node keeps are bounded by the admissions of
    /// `connect_timeout` + [`OVERDUE`], not by how long the saturation lasts.
    /// Where the sweep keeps up, nothing is that overdue, and this is two atomic
    /// reads (`LocalSessions::any_due`).
    async fn reap_overdue(&self, now: Millis) {
        let Some(local) = &self.local else {
            return;
        };
        let overdue = now.saturating_sub(OVERDUE);
        if !local.any_due(overdue) {
            return;
        }
        match local.reap_some(overdue, ADMISSION_BITE).await {
            Ok(bite) => self.end_reaped(&bite.dead),
            // Not the admission's failure: the sweep tries again.
            Err(e) => tracing::debug!(error = %e, "an admission could not reap overdue sessions"),
        }
    }

    /// Tells the events and the sockets of sessions found dead.
    fn end_reaped(&self, dead: &[(PoolKey, Session)]) {
        for (pool, session) in dead {
            let cause = EndCause::of_dead(session.state);
            self.events
                .report(SessionEvent::ended(pool, session.id, Some(&session.name), cause));
            self.expire(session);
        }
    }

    /// Sessions by state, as far as the store knows them cheaply.
    pub fn sessions_by_state(&self) -> SessionsByState {
        self.store.by_state()
    }

    /// The sessions this node knows of without a round trip (see
    /// [`SessionsByState`]): every session of the memory store, the live sessions
    /// of this node's sockets on Redis.
    pub fn held_count(&self) -> usize {
        usize::try_from(self.store.by_state().known()).unwrap_or(usize::MAX)
    }

    /// Saves every held session so a restarted server can bring them back. A
    /// store without local sessions (Redis) keeps them itself: nothing to save.
    pub async fn save_sessions(&self, archive: &dyn SessionArchive) -> Result<usize, ControlError> {
        // A session that died while the server was stopping stays dead.
        let now = self.clock.now();
        let Some(local) = &self.local else {
            return Ok(0);
        };
        let held = local.snapshot().await?;
        let sessions: Vec<_> = held
            .into_iter()
            .filter(|(_, s)| !super::liveness::is_dead(s.expires_at, now))
            .collect();
        archive.save(&sessions).await?;
        Ok(sessions.len())
    }

    /// Brings back the sessions saved at the last shutdown, as detached: their
    /// players reconnect within the grace, or the sessions are reaped.
    pub async fn restore_sessions(&self, archive: &dyn SessionArchive) -> Result<Restored, ControlError> {
        let saved = archive.take().await?;
        let mut restored = Restored::default();
        self.restore(saved, &mut restored).await?;
        Ok(restored)
    }

    /// Brings back the sessions in the journal (the last run stopped or crashed),
    /// as detached. Their rows stay: the journal deletes each when its session ends.
    /// Each chunk is restored as soon as it is read, while the next is read.
    pub async fn restore_journaled(&self, archive: &dyn SessionArchive) -> Result<Restored, ControlError> {
        let (into, mut chunks) = tokio::sync::mpsc::channel(1);
        // Moved in: a restore that fails drops the receiver, which stops the reading.
        let restoring = async move {
            let mut restored = Restored::default();
            while let Some(chunk) = chunks.recv().await {
                self.restore(chunk, &mut restored).await?;
            }
            Ok::<_, ControlError>(restored)
        };
        let (read, restored) = tokio::join!(archive.held_into(into), restoring);
        let restored = restored?;
        read?;
        Ok(restored)
    }

    async fn restore(&self, saved: Vec<(PoolKey, Session)>, restored: &mut Restored) -> Result<(), ControlError> {
        let now = self.clock.now();
        let expires_at = self.timings.deadline(SessionState::Detached, now);
        let sessions: Vec<_> = saved
            .into_iter()
            .map(|(pool, mut s)| {
                s.state = SessionState::Detached;
                s.holder = None;
                s.expires_at = expires_at;
                restored.count(pool.publisher_id());
                (pool, s)
            })
            .collect();
        self.store.restore(sessions).await?;
        Ok(())
    }

    /// A page of publishers, by id, after `after`.
    pub async fn publishers_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<Publisher>, ControlError> {
        Ok(self.settings.publishers_after(after, limit).await?)
    }

    pub async fn put_publisher(&self, publisher: &Publisher) -> Result<(), ControlError> {
        Ok(self.settings.put_publisher(publisher).await?)
    }

    pub async fn put_offer(&self, publisher_id: &str, offer: &Offer) -> Result<(), ControlError> {
        Ok(self.settings.put_offer(publisher_id, offer).await?)
    }

    pub async fn delete_offer(&self, publisher_id: &str, offer_id: &str) -> Result<bool, ControlError> {
        Ok(self.settings.delete_offer(publisher_id, offer_id).await?)
    }

    pub async fn customer_override(&self, key: &OverrideKey) -> Result<Option<CustomerOverride>, ControlError> {
        Ok(self.settings.customer_override(key).await?)
    }

    pub async fn put_override(&self, key: &OverrideKey, value: &CustomerOverride) -> Result<(), ControlError> {
        Ok(self.settings.put_override(key, value).await?)
    }

    pub async fn delete_override(&self, key: &OverrideKey) -> Result<bool, ControlError> {
        Ok(self.settings.delete_override(key).await?)
    }

    /// `DELETE /me/sessions/{id}`: the customer stops one of its own sessions
    /// from elsewhere (another device, a web page). Its player is told
    /// `TAKE_OVER` with `session_name`, as if a device of that name had taken
    /// it over. Another customer's session is [`ControlError::SessionNotFound`],
    /// exactly like one that does not exist.
    pub async fn stop_remotely(
        &self,
        customer: &Customer,
        id: SessionId,
        session_name: &str,
    ) -> Result<(PoolKey, Session), ControlError> {
        let pool = self
            .store
            .locate(id)
            .await?
            .filter(|pool| pool.publisher_id() == customer.publisher_id && pool.customer_id() == customer.customer_id)
            .ok_or(ControlError::SessionNotFound(id))?;
        let session = self
            .store
            .end_taken_over(&pool, id, session_name, self.clock.now())
            .await?
            .ok_or(ControlError::SessionNotFound(id))?;
        tracing::info!(
            event = "session_stopped_remotely",
            publisher = %pool.publisher_id(),
            customer = %pool.customer_id(),
            offer = %pool.offer_id(),
            session = %id,
            "session stopped by its customer from elsewhere"
        );
        // Ended on its owner's order, not by another session: counted as kicked.
        self.events.ended(&pool, id, EndCause::Kicked);
        if let Some(holder) = session.holder {
            let session_name = session_name.to_owned();
            self.notifier.notify(holder, Control::TakeOver { session_name });
        }
        Ok((pool, session))
    }
}
