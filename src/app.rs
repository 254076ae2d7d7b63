//! Builds the server from its settings and runs it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::sync::mpsc;

use secrecy::ExposeSecret;

use crate::auth::{CustomerVerifier, JwksTimings, ServerKeys, SessionTokens, TokenRules, VerificationKey};
use crate::config::{DEV_ADMIN_KEY, DEV_CUSTOMER_KEY, SessionBackend, Settings, SettingsBackend};
use crate::domain::Clock;
use crate::domain::control::{ControlParts, PublisherPolicy, SessionControl};
use crate::domain::ports::{Notifier, SessionArchive, SessionStore, SettingsRepo};
use crate::state::AppState;
use crate::store::redis::inbox::{self, ClusterNotifier};
use crate::store::redis::{RedisStore, TimeSource, refresh};
use crate::store::{MemoryStore, PostgresSettings, SqliteSettings};
use crate::ws::hub::Hub;

pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    database: Database,
    cluster: Option<Cluster>,
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

    fn archive(&self) -> &dyn SessionArchive {
        match self {
            Self::Sqlite(db) => db,
            Self::Postgres(db) => db,
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

/// The pieces of cluster mode that run in the background.
struct Cluster {
    store: Arc<RedisStore>,
    node: u64,
    url: String,
    outbox: mpsc::Receiver<(u64, String)>,
}

impl App {
    /// Opens the stores, restores the sessions saved at the last shutdown and
    /// binds the listener (port 0 picks a free one). Nothing is served until [`App::run`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let database = Database::open(&settings).await?;
        let session_secret = if settings.auth.session_secret.expose_secret().is_empty() {
            database.secret("session_token").await?
        } else {
            settings.auth.session_secret.expose_secret().to_owned()
        };
        let verifier = customer_verifier(&settings)?;
        warn_about_dev_keys(&settings);

        let timings = settings.timings();
        let (hub, store, notifier, cluster): (Arc<Hub>, Arc<dyn SessionStore>, Arc<dyn Notifier>, _) =
            match settings.storage.sessions {
                SessionBackend::Memory => {
                    let hub = Arc::new(Hub::new(rand::random::<u64>() % (1 << 23) + 1));
                    (hub.clone(), Arc::new(MemoryStore::new(timings)), hub, None)
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
                    (hub, store, Arc::new(notifier), Some(cluster))
                }
            };
        let p = &settings.publishers;
        let control = Arc::new(SessionControl::new(ControlParts {
            store,
            settings: database.repo(),
            notifier,
            clock: Clock::new(),
            timings,
            policy: PublisherPolicy {
                auto_create: p.auto_create,
                enabled: p.enabled,
                takeover_enabled: p.takeover_enabled,
                default_session_limit: p.default_session_limit,
                unknown_offers: p.unknown_offers,
            },
            on_unavailable: settings.cluster.on_store_unavailable,
            catalog_ttl: settings.cluster.settings_cache_ttl,
        }));
        if cluster.is_none() {
            let restored = control.restore_sessions(database.archive()).await?;
            if restored > 0 {
                tracing::info!(restored, grace = ?timings.reconnect_grace, "sessions from the last run restored as detached");
            }
        }

        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (server.host, server.port)"))?;
        let addr = listener.local_addr()?;
        let state = AppState {
            control,
            verifier: Arc::new(verifier),
            tokens: Arc::new(SessionTokens::new(
                session_secret.as_bytes(),
                settings.auth.session_token_ttl.as_secs(),
            )),
            hub,
            fallback_ws_url: format!("ws://{addr}/ws").into(),
            settings: Arc::new(settings),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        };
        Ok(Self {
            listener,
            addr,
            state,
            database,
            cluster,
            background: TaskTracker::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Cancelling this token shuts the server down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then closes every socket with
    /// 1012 and leaves the held sessions to wait for their players: saved to the
    /// database (embedded mode) or detached in Redis (cluster mode).
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            addr,
            state,
            database,
            cluster,
            background,
        } = self;
        let shutdown = state.shutdown.clone();
        background.spawn(crate::tasks::sweep::run(
            state.control.clone(),
            state.settings.liveness.sweep_interval,
            shutdown.clone(),
        ));
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
        log_file_limit();
        tracing::info!(%addr, "drisc is listening; WebSocket endpoint at ws://{addr}/ws");

        let router = crate::http::router(state.clone());
        let listener = listener.tap_io(|tcp| {
            // Protocol messages are tiny and latency matters more than packet count.
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, router.into_make_service())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await;

        // axum's graceful shutdown does not wait for upgraded sockets: each socket
        // task watches the token and closes itself with 1012.
        shutdown.cancel();
        state.connections.close();
        let timeout = state.settings.server.shutdown_timeout;
        if tokio::time::timeout(timeout, state.connections.wait()).await.is_err() {
            tracing::warn!(?timeout, "some sockets did not close in time; saving sessions anyway");
        }
        background.close();
        background.wait().await;
        if let Err(e) = state.control.hand_over().await {
            tracing::warn!(error = %e, "could not detach the sessions of this node; they expire by their own deadlines");
        }
        let saved = state.control.save_sessions(database.archive()).await?;
        if saved > 0 {
            tracing::info!(saved, "sessions saved for the next start");
        }
        database.close().await;
        served.context("the HTTP server failed")
    }
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

/// Logs the open-file limit: each held socket costs one file descriptor.
fn log_file_limit() {
    match std::fs::read_to_string("/proc/self/limits") {
        Ok(limits) => {
            if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
                let soft = line.split_whitespace().nth(3).unwrap_or("?");
                tracing::info!(
                    open_files_limit = soft,
                    "each held socket uses one file descriptor (RLIMIT_NOFILE); \
                     beyond it new connections wait and are retried"
                );
            }
        }
        Err(_) => tracing::debug!("open-file limit unknown on this platform"),
    }
}
