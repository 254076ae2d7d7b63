//! The rules of session control, free of any framework or storage engine.
//!
//! `pool` holds the admission and lifecycle rules as pure functions of a pool's
//! state and the current time; `ports` names what the rules need from the outside
//! (a session store, a settings repository, a way to reach a player's socket);
//! `control` is the one place that combines them into the operations the HTTP and
//! WebSocket layers call; `journal` buffers which sessions exist, for the database
//! to keep across a crash.

pub mod budget;
pub mod clock;
pub mod control;
pub mod events;
pub mod journal;
pub mod listing;
pub mod liveness;
pub mod policy;
pub mod pool;
pub mod ports;
pub mod session;
pub mod settings;

pub use budget::MessageBudget;
pub use clock::{Clock, Millis};
pub use liveness::Timings;
pub use session::{Customer, Holder, PoolKey, SHARDS, Session, SessionId, SessionState};
