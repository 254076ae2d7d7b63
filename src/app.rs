//! Builds the server from its settings and runs it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{CustomerVerifier, SessionTokens, VerificationKey};
use crate::config::{DEV_ADMIN_KEY, DEV_CUSTOMER_KEY, Settings};
use crate::domain::Clock;
use crate::domain::control::{PublisherPolicy, SessionControl};
use crate::state::AppState;
use crate::store::{MemoryStore, SqliteSettings};
use crate::ws::hub::Hub;

pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    database: SqliteSettings,
    background: TaskTracker,
}

impl App {
    /// Opens the database, restores the sessions saved at the last shutdown and
    /// binds the listener (port 0 picks a free one). Nothing is served until [`App::run`].
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.storage.data_dir)
            .with_context(|| format!("cannot create storage.data_dir {:?}", settings.storage.data_dir))?;
        let db_path = settings.storage.data_dir.join("drisc.db");
        let database = SqliteSettings::open(&db_path)
            .await
            .with_context(|| format!("cannot open the database {db_path:?}"))?;

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
        let hub = Arc::new(Hub::new());
        let p = &settings.publishers;
        let policy = PublisherPolicy {
            auto_create: p.auto_create,
            enabled: p.enabled,
            takeover_enabled: p.takeover_enabled,
            default_session_limit: p.default_session_limit,
            unknown_offers: p.unknown_offers,
        };
        let control = Arc::new(SessionControl::new(
            Arc::new(MemoryStore::new(timings)),
            Arc::new(database.clone()),
            hub.clone(),
            Clock::new(),
            timings,
            policy,
        ));
        let restored = control.restore_sessions(&database).await?;
        if restored > 0 {
            tracing::info!(restored, grace = ?timings.reconnect_grace, "sessions from the last run restored as detached");
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
            background: TaskTracker::new(),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancelling this token shuts the server down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then closes every socket with
    /// 1012 and saves the held sessions for the next start.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            addr,
            state,
            database,
            background,
        } = self;
        let shutdown = state.shutdown.clone();
        background.spawn(crate::tasks::sweep::run(
            state.control.clone(),
            state.settings.liveness.sweep_interval,
            shutdown.clone(),
        ));
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
        let saved = state.control.save_sessions(&database).await?;
        tracing::info!(saved, "sessions saved for the next start");
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
