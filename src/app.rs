//! Builds the server from its settings and runs it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::sync::mpsc;

use secrecy::ExposeSecret;

use crate::auth::{CustomerVerifier, JwksTimings, ServerKeys, SessionTokens, TokenRules, VerificationKey};
use crate::config::{DEV_ADMIN_KEY, DEV_CUSTOMER_KEY, SessionBackend, Settings, SettingsBackend};
use crate::domain::Clock;
use crate::domain::control::{ControlParts, PublisherPolicy, SessionControl, UnavailablePolicy};
use crate::domain::journal::Journal;
use crate::domain::ports::{LocalSessions, Notifier, SessionArchive, SessionStore, SettingsRepo};
use crate::limits::Limits;
use crate::meter::Meter;
use crate::net::{self, Server};
use crate::readiness::{Dependency, Probe, Readiness};
use crate::state::AppState;
use crate::store::instrumented::Instrumented;
use crate::store::redis::inbox::{self, ClusterNotifier};
use crate::store::redis::{RedisStore, TimeSource, refresh};
use crate::store::{MemoryStore, PostgresSettings, SqliteSettings};
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
    database: Database,
    cluster: Option<Cluster>,
    /// The session journal of the memory store, unless switched off.
    journal: Option<Arc<Journal>>,
    background: TaskTracker,
}

/// Where settings live.
enum Database {
    Sqlite(SqliteSettings),
    Postgres(PostgresSettings),
}

impl Database {
    async fn open(settings: &Settings) -> anyhow::Result<Self> {
        Ok(match settings.storage.settings {
            SettingsBackend::Sqlite => {
                let dir = &settings.storage.data_dir;
                crate::store::private_files::ensure_private_dir(dir)
                    .with_context(|| format!("cannot create storage.data_dir {dir:?} (as 0700)"))?;
                let path = dir.join("drisc.db");
                Self::Sqlite(
                    SqliteSettings::open(&path)
                        .await
                        .with_context(|| format!("cannot open the database {path:?}"))?,
                )
            }
            SettingsBackend::Postgres => Self::Postgres(
                PostgresSettings::connect(&settings.storage.postgres_url)
                    .await
                    .context("cannot open the PostgreSQL database (storage.postgres_url)")?,
            ),
        })
    }

    fn repo(&self) -> Arc<dyn SettingsRepo> {
        match self {
            Self::Sqlite(db) => Arc::new(db.clone()),
            Self::Postgres(db) => Arc::new(db.clone()),
        }
    }

    fn probe(&self) -> Arc<dyn Probe> {
        match self {
            Self::Sqlite(db) => Arc::new(db.clone()),
            Self::Postgres(db) => Arc::new(db.clone()),
        }
    }

    fn archive(&self) -> Arc<dyn SessionArchive> {
        match self {
            Self::Sqlite(db) => Arc::new(db.clone()),
            Self::Postgres(db) => Arc::new(db.clone()),
        }
    }

    async fn secret(&self, name: &str) -> anyhow::Result<String> {
        Ok(match self {
            Self::Sqlite(db) => db.secret(name).await?,
            Self::Postgres(db) => db.secret(name).await?,
        })
    }

    async fn close(&self) {
        match self {
            Self::Sqlite(db) => db.close().await,
            Self::Postgres(db) => db.close().await,
        }
    }
}

/// A session store, and its local sessions if it keeps them in this process.
type SessionPorts = (Arc<dyn SessionStore>, Option<Arc<dyn LocalSessions>>);

/// The pieces of cluster mode that run in the background.
struct Cluster {
    store: Arc<RedisStore>,
    node: u64,
    url: String,
    outbox: mpsc::Receiver<(u64, String)>,
}

impl App {
    /// Opens the stores, restores the sessions held at the end of the last run
    /// (stopped or crashed) and binds the listener (port 0 picks a free one).
    /// Nothing is served until [`App::run`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let max_connections = connection_cap(&settings)?;
        let database = Database::open(&settings).await?;
        let session_secret = if settings.auth.session_secret.expose_secret().is_empty() {
            database.secret("session_token").await?
        } else {
            settings.auth.session_secret.expose_secret().to_owned()
        };
        let verifier = customer_verifier(&settings)?;
        warn_about_dev_keys(&settings);

        let timings = settings.timings();
        let journal = (settings.storage.sessions == SessionBackend::Memory && settings.storage.journal)
            .then(|| Arc::new(Journal::new()));
        let meter = Arc::new(Meter::new());
        let (hub, (store, local), notifier, cluster): (Arc<Hub>, SessionPorts, Arc<dyn Notifier>, _) =
            match settings.storage.sessions {
                SessionBackend::Memory => {
                    let hub = Arc::new(Hub::new(rand::random::<u64>() % (1 << 23) + 1));
                    let store = match &journal {
                        Some(journal) => MemoryStore::with_journal(timings, Arc::clone(journal)),
                        None => MemoryStore::new(timings),
                    };
                    let store = store.observed(meter.clone());
                    let store = Arc::new(Instrumented::new(Arc::new(store), "memory", meter.clone()));
                    (hub.clone(), (store.clone(), Some(store)), hub, None)
                }
                SessionBackend::Redis => {
                    let url = settings.storage.redis_url.clone();
                    let mut conn = RedisStore::connection(&url)
                        .await
                        .context("cannot reach Redis (storage.redis_url)")?;
                    let node = inbox::claim_node_id(&mut conn)
                        .await
                        .context("cannot reach Redis (storage.redis_url)")?;
                    let hub = Arc::new(Hub::new(node));
                    let store = Arc::new(
                        RedisStore::connect(
                            &url,
                            timings,
                            settings.cluster.tombstone_ttl,
                            settings.auth.session_token_ttl,
                            TimeSource::Redis,
                            hub.clone(),
                        )
                        .await
                        .context("cannot reach Redis (storage.redis_url)")?,
                    );
                    let (notifier, outbox) = ClusterNotifier::new(node, hub.clone());
                    tracing::info!(node, "cluster mode: sessions in Redis");
                    let cluster = Cluster {
                        store: store.clone(),
                        node,
                        url,
                        outbox,
                    };
                    let store = Instrumented::new(store, "redis", meter.clone());
                    (hub, (Arc::new(store), None), Arc::new(notifier), Some(cluster))
                }
            };
        let p = &settings.publishers;
        let control = Arc::new(SessionControl::new(ControlParts {
            store,
            local,
            settings: database.repo(),
            notifier,
            events: meter.clone(),
            clock: Clock::new(),
            timings,
            policy: PublisherPolicy {
                auto_create: p.auto_create,
                enabled: p.enabled,
                takeover_enabled: p.takeover_enabled,
                default_session_limit: p.default_session_limit,
                unknown_offers: p.unknown_offers,
                max_pools_per_customer: p.max_pools_per_customer,
            },
            on_unavailable: settings.cluster.on_store_unavailable,
            catalog_ttl: settings.cluster.settings_cache_ttl,
        }));
        if cluster.is_none() {
            let archive = database.archive();
            let restored = match &journal {
                Some(_) => control.restore_journaled(archive.as_ref()).await?,
                None => control.restore_sessions(archive.as_ref()).await?,
            };
            if restored > 0 {
                tracing::info!(restored, grace = ?timings.reconnect_grace, "sessions from the last run restored as detached");
            }
        }
        if journal.is_some() {
            tracing::info!(
                interval = ?settings.storage.journal_interval,
                "session journal on: held sessions survive a crash (storage.journal)"
            );
        }

        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (server.host, server.port)"))?;
        let addr = listener.local_addr()?;
        let limits = Arc::new(Limits::new(&settings.limits)?);
        if !limits.enabled() {
            tracing::warn!("rate limits are off (limits.enabled = false): for load tests only");
        }
        let mut dependencies = vec![Dependency {
            probe: database.probe(),
            required: true,
        }];
        if let Some(c) = &cluster {
            dependencies.push(Dependency {
                probe: c.store.clone(),
                required: settings.cluster.on_store_unavailable == UnavailablePolicy::Refuse,
            });
        }
        let state = AppState {
            control,
            verifier: Arc::new(verifier),
            tokens: Arc::new(SessionTokens::new(
                session_secret.as_bytes(),
                settings.auth.session_token_ttl.as_secs(),
            )),
            hub,
            limits,
            meter,
            readiness: Arc::new(Readiness::new(dependencies)),
            fallback_ws_url: format!("ws://{addr}/ws").into(),
            settings: Arc::new(settings),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        };
        Ok(Self {
            listener,
            addr,
            max_connections,
            state,
            stop: CancellationToken::new(),
            hurry: CancellationToken::new(),
            database,
            cluster,
            journal,
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
            database,
            cluster,
            journal,
            background,
        } = self;
        let shutdown = state.shutdown.clone();
        let archive = database.archive();
        if let Some(journal) = &journal {
            background.spawn(crate::tasks::journal::run(
                Arc::clone(journal),
                Arc::clone(&archive),
                state.settings.storage.journal_interval,
                shutdown.clone(),
            ));
        }
        background.spawn(crate::tasks::sweep::run(
            state.control.clone(),
            state.settings.liveness.sweep_interval,
            shutdown.clone(),
        ));
        background.spawn(crate::tasks::metrics::run(state.meter.clone(), shutdown.clone()));
        if state.limits.enabled() {
            background.spawn(crate::tasks::rate_limits::run(
                state.limits.clone(),
                state.settings.limits.forget_idle_every,
                shutdown.clone(),
            ));
        }
        if let Some(c) = cluster {
            let every = state.settings.cluster.refresh_interval;
            background.spawn(refresh::run(c.store, c.node, every, shutdown.clone()));
            background.spawn(inbox::run_inbox(
                c.url.clone(),
                c.node,
                state.hub.clone(),
                shutdown.clone(),
            ));
            background.spawn(inbox::run_outbox(c.url, c.outbox, shutdown.clone()));
        }
        background.spawn(drain(
            state.readiness.clone(),
            state.settings.server.drain_period,
            stop,
            hurry.clone(),
            shutdown.clone(),
        ));
        tracing::info!(%addr, "drisc is listening; WebSocket endpoint at ws://{addr}/ws");

        let s = &state.settings.server;
        let connection_limits = net::Limits {
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_header_bytes: s.max_header_bytes,
            max_requests_in_flight: s.max_requests_in_flight,
            max_connections,
        };
        let router = crate::http::router(state.clone());
        let drain = Server::new(
            listener,
            router,
            connection_limits,
            shutdown.clone(),
            state.meter.clone(),
        )
        .accept_until_shutdown()
        .await;

        // Sockets watch the same token and close themselves with 1012: the HTTP
        // server does not own them once upgraded.
        shutdown.cancel();
        state.connections.close();
        let timeout = s.shutdown_timeout;
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
        background.close();
        background.wait().await;
        if let Err(e) = state.control.hand_over().await {
            tracing::warn!(error = %e, "could not detach the sessions of this node; they expire by their own deadlines");
        }
        match &journal {
            Some(journal) => {
                let held = state.control.held_count();
                if let Err(e) = journal.flush(archive.as_ref()).await {
                    tracing::error!(error = %e, held, "could not write the session journal at shutdown");
                    return Err(e.into());
                }
                if held > 0 {
                    tracing::info!(held, "shutdown: sessions kept in the journal for the next start");
                }
            }
            None => {
                let saved = state.control.save_sessions(archive.as_ref()).await?;
                if saved > 0 {
                    tracing::info!(saved, "shutdown: sessions saved for the next start");
                }
            }
        }
        database.close().await;
        Ok(())
    }
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
    let rules = TokenRules {
        leeway_secs: auth.leeway.as_secs(),
        audience: auth.audience.clone(),
        issuer: auth.issuer.clone(),
        max_lifetime_secs: auth.max_token_lifetime.as_secs(),
        max_token_bytes: auth.max_token_bytes,
    };
    let timings = JwksTimings {
        cache_ttl: auth.jwks_cache_ttl,
        min_refresh: auth.jwks_min_refresh,
    };
    CustomerVerifier::new(server, rules, timings).context("cannot build the HTTPS client that fetches JWKS")
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
