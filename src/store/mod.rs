//! Implementations of the domain's storage ports, and one function per backend
//! that opens them for the app.
//!
//! `memory` keeps the session pools in this process (the embedded default), with
//! `roster` counting and indexing its sessions and feeding the session journal;
//! `redis` keeps them for a cluster of nodes; `instrumented` wraps either session
//! store to time and count its operations; `sqlite` keeps publisher settings and
//! the sessions saved across a restart; `postgres` keeps the same for the nodes of
//! a cluster; `cached_settings` keeps the publishers' settings admission reads;
//! `outbox` keeps the publishers' webhooks and the durable outbox of their
//! events (both databases); `private_files` keeps the embedded database readable by the server's user only.
//!
//! `sqlite::open` and `postgres::open` return a [`SettingsDb`]; `memory::open` and
//! `redis::open` return [`Sessions`]: the port trait objects the app wires, so
//! nothing outside `store/` names an engine's type.

pub mod cached_settings;
pub mod instrumented;
pub mod memory;
mod outbox;
mod packing;
pub mod postgres;
pub mod private_files;
pub mod redis;
mod roster;
mod saved;
pub mod sqlite;
pub mod sqlite_journal;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::events::WebhookOutbox;
use crate::domain::journal::Journal;
use crate::domain::ports::{LocalSessions, Notifier, SessionArchive, SessionStore, SettingsError, SettingsRepo};
use crate::readiness::Probe;

pub use memory::MemoryStore;
pub use postgres::PostgresSettings;
pub use sqlite::SqliteSettings;

/// The settings database, opened: the domain's ports on it, its readiness probe,
/// and what the server itself keeps there. Every field is the same database.
pub struct SettingsDb {
    pub repo: Arc<dyn SettingsRepo>,
    pub archive: Arc<dyn SessionArchive>,
    pub probe: Arc<dyn Probe>,
    pub server: Arc<dyn ServerData>,
    /// The publishers' webhooks and the outbox of their events.
    pub webhooks: Arc<dyn WebhookOutbox>,
    /// Whether the session journal may be written from a thread of its own (and
    /// its runtime): SQLite's connection works on a thread of its own that any
    /// runtime may drive; a PostgreSQL pool's sockets belong to the runtime that
    /// opened them, so that journal is written from the server's runtime (its
    /// work is on the database's machine anyway).
    pub journal_off_runtime: bool,
}

impl SettingsDb {
    fn of<D: SettingsRepo + SessionArchive + Probe + ServerData + WebhookOutbox>(
        db: D,
        journal_off_runtime: bool,
    ) -> Self {
        let db = Arc::new(db);
        Self {
            journal_off_runtime,
            repo: db.clone(),
            archive: db.clone(),
            probe: db.clone(),
            server: db.clone(),
            webhooks: db,
        }
    }
}

/// What the server keeps in its settings database for itself, beside the
/// domain's data: no port of the domain, so a trait of its own.
#[async_trait]
pub trait ServerData: Send + Sync + 'static {
    /// The secret named `name`, created at random on first use so it survives restarts.
    async fn secret(&self, name: &str) -> Result<String, SettingsError>;
    /// Closes the connections, at the end of a run.
    async fn close(&self);
}

/// A session store, opened: the port, the sockets of this process under the node
/// id the backend chose (`L`, the app's hub: the stores never name it), how orders
/// reach any socket, and what the backend keeps beside the store.
pub struct Sessions<L> {
    /// Instrumented: every call is timed and counted.
    pub store: Arc<dyn SessionStore>,
    /// The same store as [`LocalSessions`], where it keeps its sessions in this
    /// process (memory): reaped by the sweep, saved at shutdown.
    pub local: Option<Arc<dyn LocalSessions>>,
    pub sockets: Arc<L>,
    pub notifier: Arc<dyn Notifier>,
    /// Embedded mode: the session journal, unless `storage.journal` is off.
    pub journal: Option<Arc<Journal>>,
    /// Cluster mode: Redis, and the loops that run beside it.
    pub cluster: Option<redis::Cluster>,
}
