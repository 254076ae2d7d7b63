//! Builds the server from its settings and runs it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::sync::mpsc;

use crate::auth::{CustomerVerifier, SessionTokens, VerificationKey};
use crate::config::{DEV_ADMIN_KEY, DEV_CUSTOMER_KEY, SessionBackend, Settings, SettingsBackend};
use crate::domain::Clock;
use crate::domain::control::{ControlParts, PublisherPolicy, SessionControl};
use crate::domain::journal::Journal;
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
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create storage.data_dir {dir:?}"))?;
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
        let database = Database::open(&settings).await?;
        let session_secret = if settings.auth.session_secret.is_empty() {
            database.secret("session_token").await?
        } else {
            settings.auth.session_secret.clone()
        };
        let customer_key = settings
            .customer_key()?
            .map(|k| VerificationKey::parse(&k))
            .transpose()
            .context("invalid configuration: auth.customer_key")?;
        warn_about_dev_keys(&settings);

        let timings = settings.timings();
        let journal = (settings.storage.sessions == SessionBackend::Memory && settings.storage.journal)
            .then(|| Arc::new(Journal::new()));
        let (hub, store, notifier, cluster): (Arc<Hub>, Arc<dyn SessionStore>, Arc<dyn Notifier>, _) =
            match settings.storage.sessions {
                SessionBackend::Memory => {
                    let hub = Arc::new(Hub::new(rand::random::<u64>() % (1 << 23) + 1));
                    let store = match &journal {
                        Some(journal) => MemoryStore::with_journal(timings, Arc::clone(journal)),
                        None => MemoryStore::new(timings),
                    };
                    (hub.clone(), Arc::new(store), hub, None)
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
        let state = AppState {
            control,
            verifier: Arc::new(CustomerVerifier::new(customer_key, settings.auth.leeway.as_secs())),
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
            journal,
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
    /// 1012 and leaves the held sessions to wait for their players: in the
    /// database (embedded mode: the journal's last flush, or a snapshot with the
    /// journal off) or detached in Redis (cluster mode).
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            addr,
            state,
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
        match &journal {
            Some(journal) => {
                let held = state.control.held_count().await?;
                if let Err(e) = journal.flush(archive.as_ref()).await {
                    tracing::error!(error = %e, held, "could not write the session journal at shutdown");
                    return Err(e.into());
                }
                if held > 0 {
                    tracing::info!(held, "sessions kept in the journal for the next start");
                }
            }
            None => {
                let saved = state.control.save_sessions(archive.as_ref()).await?;
                if saved > 0 {
                    tracing::info!(saved, "sessions saved for the next start");
                }
            }
        }
        database.close().await;
        served.context("the HTTP server failed")
    }
}

fn warn_about_dev_keys(settings: &Settings) {
    if settings.auth.customer_key == DEV_CUSTOMER_KEY && settings.auth.customer_key_file.is_empty() {
        tracing::warn!(
            "customer tokens are verified with the published DEVELOPMENT secret {DEV_CUSTOMER_KEY:?}: \
             anyone can mint them. Mint one with `drisc token --publisher <id> --customer <id>`; \
             set auth.customer_key (DRISC__AUTH__CUSTOMER_KEY) before going to production"
        );
    }
    if settings.auth.admin_key == DEV_ADMIN_KEY {
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
