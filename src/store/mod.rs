//! Implementations of the domain's storage ports.
//!
//! `memory` keeps the session pools in this process (the embedded default), with
//! `roster` counting and indexing its sessions and feeding the session journal;
//! `instrumented` wraps either session store to time and count its operations;
//! `sqlite` keeps publisher settings and the sessions saved across a restart;
//! `postgres` keeps the same for the nodes of a cluster; `private_files` keeps the
//! embedded database readable by the server's user only.

pub mod instrumented;
pub mod memory;
pub mod postgres;
pub mod private_files;
pub mod redis;
mod roster;
mod saved;
pub mod sqlite;

pub use memory::MemoryStore;
pub use postgres::PostgresSettings;
pub use sqlite::SqliteSettings;
