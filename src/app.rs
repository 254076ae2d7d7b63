//! Builds the server from its settings and runs it until shutdown.
//!
//! The composition root, the one module that knows every piece: [`App::build`] and
//! [`App::run`] read as lists of steps, each step a function below, and the stores
//! are opened by one function per backend in [`crate::store`].

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{CustomerVerifier, ServerKeys, SessionTokens, VerificationKey};
use crate::config::{DEV_ADMIN_KEY, DEV_CUSTOMER_KEY, SessionBackend, Settings, SettingsBackend};
use crate::domain::Clock;
use crate::domain::control::{ControlParts, Restored, SessionControl, UnavailablePolicy};
use crate::domain::events::EventType;
use crate::domain::journal::Journal;
use crate::domain::ports::SessionArchive;
use crate::events::{Events, Loops};
use crate::limits::Limits;
use crate::meter::Meter;
use crate::net::{Drain, Server};
use crate::readiness::{Dependency, Readiness};
use crate::state::{AppState, Shared};
use crate::store::cached_settings::CachedSettings;
use crate::store::redis::Cluster;
use crate::store::{self, Sessions, SettingsDb};
use crate::ws::hub::Hub;

pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    /// Open connections beyond this are shed (the file limit minus the reserve).
    max_connections: usize,
    state: AppState,
    /// Cancelled to stop gracefully: drain for `server.drain_period`, then shut down.
    stop: CancellationToken,
    /// Cancelled by a second signal: skip the drain and the wait for connections,
    /// save at once.
    hurry: CancellationToken,
    db: SettingsDb,
    /// The session journal of the memory store, unless switched off.
    journal: Option<Arc<Journal>>,
    /// Cluster mode: the loops that run beside Redis.
    cluster: Option<Cluster>,
    /// The outbox writer and the webhooks' delivery.
    event_loops: Loops,
    background: TaskTracker,
}

impl App {
    /// Opens the stores, restores the sessions held at the end of the last run
    /// (stopped or crashed) and binds the listener (port 0 picks a free one).
    /// Nothing is served until [`App::run`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let max_connections = connection_cap(&settings)?;
        let db = open_settings_db(&settings).await?;
        let tokens = session_tokens(&settings, &db).await?;
        let verifier = customer_verifier(&settings)?;
        warn_about_dev_keys(&settings);
        let meter = Arc::new(Meter::new());
        let settings = Arc::new(settings);
        let (events, event_loops) = session_events(&settings, &db, &meter).await?;
        let sessions = open_sessions(&settings, &meter).await?;
        let control = Arc::new(session_control(&settings, &db, &sessions, &meter));
        if sessions.cluster.is_none() {
            let restored = restore_sessions(&control, &db, sessions.journal.is_some(), &settings).await?;
            warn_of_ends_beyond_the_outbox(&restored, &events, &settings);
        }
        let listener = bind(&settings).await?;
        let addr = listener.local_addr()?;
        let limits = rate_limits(&settings)?;
        let readiness = readiness(&settings, &db, &sessions);
        let state = AppState::new(Shared {
            control,
            verifier: Arc::new(verifier),
            tokens: Arc::new(tokens),
            hub: sessions.sockets,
            limits,
            meter,
            readiness: Arc::new(readiness),
            fallback_ws_url: format!("ws://{addr}/ws").into(),
            settings,
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
            events,
        });
        Ok(Self {
            listener,
            addr,
            max_connections,
            state,
            stop: CancellationToken::new(),
            hurry: CancellationToken::new(),
            db,
            journal: sessions.journal,
            cluster: sessions.cluster,
            event_loops,
            background: TaskTracker::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Cancelling this token shuts the server down gracefully, without a drain:
    /// it stops accepting at once.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Cancelling this token stops the server the way SIGTERM does: `/readyz`
    /// answers 503 at once while everything else goes on working for
    /// `server.drain_period` (load balancers take the node out meanwhile), then
    /// the shutdown of [`App::shutdown_token`] proceeds.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Cancelling this token after [`App::stop_token`] or [`App::shutdown_token`]
    /// skips what is left of the drain and ends the wait for open connections at
    /// once: sessions are saved and `run` returns.
    pub fn hurry_token(&self) -> CancellationToken {
        self.hurry.clone()
    }

    /// Serves until the shutdown token is cancelled (by hand, or by the stop token
    /// after `server.drain_period` of draining), then stops accepting, lets the
    /// requests in flight finish and closes every socket with 1012, for at most
    /// `server.shutdown_timeout` (or until the hurry token), drops what is left, and
    /// leaves the held sessions to wait for their players: in the database
    /// (embedded mode: the journal's last flush, or a snapshot with the journal
    /// off) or detached in Redis (cluster mode).
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            addr,
            max_connections,
            state,
            stop,
            hurry,
            db,
            journal,
            cluster,
            event_loops,
            background,
        } = self;
        let shutdown = state.shutdown.clone();
        if let Some(journal) = &journal {
            spawn_journal(&background, journal, &db, &state);
        }
        spawn_liveness_and_upkeep(&background, &state);
        event_loops.spawn(&background, &shutdown)?;
        if let Some(cluster) = cluster {
            cluster.spawn(&background, &shutdown);
        }
        background.spawn(drain(
            state.readiness.clone(),
            state.settings.server.drain_period,
            stop,
            hurry.clone(),
            shutdown.clone(),
        ));
        tracing::info!(%addr, "drisc is listening; WebSocket endpoint at ws://{addr}/ws");

        let connections = serve(listener, &state, max_connections).await;
        close_connections(&state, connections, &hurry).await;
        background.close();
        background.wait().await;
        keep_sessions(&state, journal.as_deref(), db.archive.as_ref()).await?;
        db.server.close().await;
        Ok(())
    }
}

/// The settings database the configuration names (`storage.settings`).
async fn open_settings_db(settings: &Settings) -> anyhow::Result<SettingsDb> {
    match settings.storage.settings {
        SettingsBackend::Sqlite => store::sqlite::open(&settings.storage).await,
        SettingsBackend::Postgres => store::postgres::open(&settings.storage).await,
    }
}

/// Session events: every event the meter hears goes on to the live stream and,
/// through the outbox, to the publishers' webhooks.
async fn session_events(
    settings: &Arc<Settings>,
    db: &SettingsDb,
    meter: &Arc<Meter>,
) -> anyhow::Result<(Arc<Events>, Loops)> {
    let (events, loops) = Events::open(settings, db.webhooks.clone(), meter)
        .await
        .context("cannot read the webhooks from the settings database")?;
    meter.forward_events(events.clone());
    Ok((events, loops))
}

/// The session store the configuration names (`storage.sessions`), its sockets
/// named by the node id the store picks.
async fn open_sessions(settings: &Settings, meter: &Arc<Meter>) -> anyhow::Result<Sessions<Hub>> {
    let tick = crate::ws::hub::tick_for(&settings.timings());
    let hub = |node| {
        let hub = Arc::new(Hub::new(node));
        hub.start_ticker(tick);
        hub
    };
    match settings.storage.sessions {
        SessionBackend::Memory => Ok(store::memory::open(settings, meter, hub)),
        SessionBackend::Redis => store::redis::open(settings, meter, hub).await,
    }
}

/// Session tokens, signed with the configured secret or else with one the
/// database keeps (created on first start), so that tokens survive a restart.
async fn session_tokens(settings: &Settings, db: &SettingsDb) -> anyhow::Result<SessionTokens> {
    let configured = settings.auth.session_secret.expose_secret();
    let secret = if configured.is_empty() {
        db.server.secret("session_token").await?
    } else {
        configured.to_owned()
    };
    Ok(SessionTokens::new(
        secret.as_bytes(),
        settings.auth.session_token_ttl.as_secs(),
    ))
}

/// The rules, wired to the stores: settings read through a cache
/// (`cluster.settings_cache_ttl`), orders to sockets through the notifier.
fn session_control(
    settings: &Settings,
    db: &SettingsDb,
    sessions: &Sessions<Hub>,
    meter: &Arc<Meter>,
) -> SessionControl {
    SessionControl::new(ControlParts {
        store: sessions.store.clone(),
        local: sessions.local.clone(),
        settings: Arc::new(CachedSettings::new(
            db.repo.clone(),
            settings.cluster.settings_cache_ttl,
        )),
        notifier: sessions.notifier.clone(),
        events: meter.clone(),
        clock: Clock::new(),
        timings: settings.timings(),
        policy: (&settings.publishers).into(),
        on_unavailable: settings.cluster.on_store_unavailable,
    })
}

/// Embedded mode: brings back the sessions held when the last run ended, as
/// detached (the journal's, or with the journal off the ones saved at a graceful
/// stop). In cluster mode they never left Redis.
async fn restore_sessions(
    control: &SessionControl,
    db: &SettingsDb,
    journaled: bool,
    settings: &Settings,
) -> anyhow::Result<Restored> {
    let archive = db.archive.as_ref();
    let restored = if journaled {
        control.restore_journaled(archive).await?
    } else {
        control.restore_sessions(archive).await?
    };
    let total = restored.total();
    if total > 0 {
        let grace = settings.liveness.reconnect_grace;
        tracing::info!(
            restored = total,
            ?grace,
            "sessions from the last run restored as detached"
        );
    }
    if journaled {
        tracing::info!(
            interval = ?settings.storage.journal_interval,
            "session journal on: held sessions survive a crash (storage.journal)"
        );
    }
    Ok(restored)
}

/// The restored sessions of a publisher whose players do not come back within
/// the grace all end at once, and a `session.ended` event each goes to its
/// webhook's outbox: more of them than `webhooks.outbox_cap` and the excess is
/// refused (counted and logged, but only then). Said at the start, while the
/// operator can still raise the cap before it matters.
fn warn_of_ends_beyond_the_outbox(restored: &Restored, events: &Events, settings: &Settings) {
    let cap = settings.webhooks.outbox_cap;
    for (publisher, &held) in &restored.by_publisher {
        if u64::try_from(held).unwrap_or(u64::MAX) > cap && events.wanted(publisher, EventType::Ended) {
            tracing::warn!(
                publisher = %publisher,
                restored = held,
                outbox_cap = cap,
                "more sessions restored for this publisher than its webhook outbox holds (webhooks.outbox_cap): \
                 if their players do not come back within the reconnect grace, they all end at once and the \
                 session.ended events beyond the outbox's room are refused; raise webhooks.outbox_cap above \
                 the sessions a node holds to keep them all"
            );
        }
    }
}

async fn bind(settings: &Settings) -> anyhow::Result<TcpListener> {
    let addr = format!("{}:{}", settings.server.host, settings.server.port);
    TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (server.host, server.port)"))
}

fn rate_limits(settings: &Settings) -> anyhow::Result<Arc<Limits>> {
    let limits = Limits::new(&settings.limits)?;
    if !limits.enabled() {
        tracing::warn!("rate limits are off (limits.enabled = false): for load tests only");
    }
    Ok(Arc::new(limits))
}

/// What `/readyz` checks: the settings database always; Redis too, required
/// unless the node admits without it (`cluster.on_store_unavailable`).
fn readiness(settings: &Settings, db: &SettingsDb, sessions: &Sessions<Hub>) -> Readiness {
    let mut dependencies = vec![Dependency {
        probe: db.probe.clone(),
        required: true,
    }];
    if let Some(cluster) = &sessions.cluster {
        dependencies.push(Dependency {
            probe: cluster.probe(),
            required: settings.cluster.on_store_unavailable == UnavailablePolicy::Refuse,
        });
    }
    Readiness::new(dependencies)
}

/// Embedded mode: writes the session journal to the database every
/// `storage.journal_interval`, from a thread of its own at nice 19 where the
/// database allows it (see [`crate::tasks::journal::THREAD`]).
fn spawn_journal(background: &TaskTracker, journal: &Arc<Journal>, db: &SettingsDb, state: &AppState) {
    let (journal, archive) = (Arc::clone(journal), Arc::clone(&db.archive));
    let (every, cancel) = (state.settings.storage.journal_interval, state.shutdown.clone());
    if db.journal_off_runtime {
        crate::tasks::spawn_lowered(
            background,
            crate::tasks::journal::THREAD,
            "drisc-jflush-io",
            move |rest| crate::tasks::journal::run(journal, archive, every, cancel, rest),
        );
    } else {
        background.spawn(crate::tasks::journal::run(
            journal,
            archive,
            every,
            cancel,
            crate::threads::Rest::Yield,
        ));
    }
}

/// The loops every node runs: the sweep of dead sessions, the metrics, and the
/// forgetting of idle rate-limit keys.
fn spawn_liveness_and_upkeep(background: &TaskTracker, state: &AppState) {
    let shutdown = &state.shutdown;
    crate::tasks::sweep::spawn(
        background,
        state.control.clone(),
        state.settings.liveness.sweep_interval,
        shutdown.clone(),
    );
    background.spawn(crate::tasks::metrics::run(state.meter.clone(), shutdown.clone()));
    if state.limits.enabled() {
        background.spawn(crate::tasks::rate_limits::run(
            state.limits.clone(),
            state.settings.limits.forget_idle_every,
            shutdown.clone(),
        ));
    }
}

/// Accepts connections until the shutdown token is cancelled; returns what is
/// left to drain.
async fn serve(listener: TcpListener, state: &AppState, max_connections: usize) -> Drain {
    let limits = state.settings.server.connection_limits(max_connections);
    let router = crate::http::router(state.clone());
    Server::new(listener, router, limits, state.shutdown.clone(), state.meter.clone())
        .accept_until_shutdown()
        .await
}

/// Closes every socket with 1012 and waits for the open connections, for at most
/// `server.shutdown_timeout` or until `hurry`; drops what is left.
async fn close_connections(state: &AppState, drain: Drain, hurry: &CancellationToken) {
    // Sockets are told through their mailboxes and close themselves with 1012:
    // the HTTP server does not own them once upgraded.
    state.shutdown.cancel();
    state.hub.close_all();
    state.connections.close();
    let timeout = state.settings.server.shutdown_timeout;
    tracing::info!(
        ?timeout,
        sockets = state.connections.len(),
        "shutdown: closing sockets with 1012 and waiting for connections (a second signal skips the wait)"
    );
    let all_closed = async {
        drain.closed().await;
        state.connections.wait().await;
    };
    tokio::select! {
        () = all_closed => tracing::info!("shutdown: every connection closed"),
        () = tokio::time::sleep(timeout) => {
            let dropped = drain.abort();
            tracing::warn!(?timeout, dropped, sockets = state.connections.len(), "shutdown: connections still open after server.shutdown_timeout were dropped");
        }
        () = hurry.cancelled() => {
            let dropped = drain.abort();
            tracing::info!(dropped, sockets = state.connections.len(), "shutdown: second signal, not waiting any longer");
        }
    }
}

/// Leaves the held sessions to wait for their players: detached in the store,
/// then in the database (the journal's last flush, or a snapshot with it off).
async fn keep_sessions(
    state: &AppState,
    journal: Option<&Journal>,
    archive: &dyn SessionArchive,
) -> anyhow::Result<()> {
    if let Err(e) = state.control.hand_over().await {
        tracing::warn!(error = %e, "could not detach the sessions of this node; they expire by their own deadlines");
    }
    match journal {
        Some(journal) => {
            let held = state.control.held_count();
            if let Err(e) = journal.flush(archive).await {
                tracing::error!(error = %e, held, "could not write the session journal at shutdown");
                return Err(e.into());
            }
            if held > 0 {
                tracing::info!(held, "shutdown: sessions kept in the journal for the next start");
            }
        }
        None => {
            let saved = state.control.save_sessions(archive).await?;
            if saved > 0 {
                tracing::info!(saved, "shutdown: sessions saved for the next start");
            }
        }
    }
    Ok(())
}

/// Once `stop` is cancelled: `/readyz` turns 503 at once, and everything else goes
/// on for `period` (or until `hurry`), so that load balancers take the node out
/// before it stops accepting; then the shutdown begins.
async fn drain(
    readiness: Arc<Readiness>,
    period: std::time::Duration,
    stop: CancellationToken,
    hurry: CancellationToken,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = shutdown.cancelled() => {
            readiness.start_draining();
            return;
        }
    }
    readiness.start_draining();
    if !period.is_zero() {
        tracing::info!(
            ?period,
            "draining: /readyz answers 503 while requests and sockets go on for server.drain_period \
             (a second signal skips it)"
        );
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = hurry.cancelled() => tracing::info!("drain skipped"),
            () = shutdown.cancelled() => {}
        }
    }
    shutdown.cancel();
}

/// Raises the open-file limit and derives how many connections may be open at once;
/// refuses to start when `server.connection_reserve` leaves no room under the limit.
fn connection_cap(settings: &Settings) -> anyhow::Result<usize> {
    let reserve = settings.server.connection_reserve;
    let Some(limit) = crate::net::file_limit::raise() else {
        return Ok(usize::MAX);
    };
    if reserve >= limit.soft {
        bail!(
            "invalid configuration: server.connection_reserve ({reserve}) must be smaller than the \
             open-file limit ({}, RLIMIT_NOFILE, hard limit {}): lower it, or raise the limit \
             (ulimit -n, systemd LimitNOFILE=)",
            limit.soft,
            limit.hard
        );
    }
    let cap = limit.soft - reserve;
    tracing::info!(
        max_connections = cap,
        reserve,
        "open connections beyond the file limit minus server.connection_reserve are shed, idle ones first"
    );
    Ok(usize::try_from(cap).unwrap_or(usize::MAX))
}

/// The verifier of customer tokens, with the server-wide key or JWKS and the rules
/// of `[auth]`.
fn customer_verifier(settings: &Settings) -> anyhow::Result<CustomerVerifier> {
    let auth = &settings.auth;
    let server = if !auth.jwks_uri.is_empty() {
        ServerKeys::Jwks(auth.jwks_uri.clone())
    } else {
        match settings.customer_key()? {
            Some(key) => {
                ServerKeys::Key(VerificationKey::parse(&key).context("invalid configuration: auth.customer_key")?)
            }
            None => ServerKeys::None,
        }
    };
    CustomerVerifier::new(server, auth.into(), auth.into()).context("cannot build the HTTPS client that fetches JWKS")
}

fn warn_about_dev_keys(settings: &Settings) {
    let auth = &settings.auth;
    if auth.customer_key.expose_secret() == DEV_CUSTOMER_KEY
        && auth.customer_key_file.is_empty()
        && auth.jwks_uri.is_empty()
    {
        tracing::warn!(
            "customer tokens are verified with the published DEVELOPMENT secret {DEV_CUSTOMER_KEY:?}: \
             anyone can mint them. Mint one with `drisc token --publisher <id> --customer <id>`; \
             set auth.customer_key (DRISC__AUTH__CUSTOMER_KEY) before going to production"
        );
    }
    if auth.admin_key.expose_secret() == DEV_ADMIN_KEY {
        tracing::warn!(
            "the admin API accepts the published DEVELOPMENT key {DEV_ADMIN_KEY:?}; \
             set auth.admin_key (DRISC__AUTH__ADMIN_KEY) before going to production"
        );
    }
}
