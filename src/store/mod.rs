//! Implementations of the domain's storage ports.
//!
//! `memory` keeps the session pools in this process (the embedded default);
//! `sqlite` keeps publisher settings and the sessions saved across a restart.

pub mod memory;
pub mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteSettings;
