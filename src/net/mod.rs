//! The transport under the HTTP API and the player's socket: this module owns the
//! accept loop and every connection, so that no client, slow, idle or hostile, can
//! hold a file descriptor or a shutdown for long.
//!
//! - [`file_limit`] raises the open-file limit at start and says what it is;
//! - `table` counts open connections, knows what each is doing, and picks the
//!   cheapest to close when files run short;
//! - `connection` drives one HTTP connection (hyper) with its deadlines, and is the
//!   door every request passes: load shedding, `ConnectInfo`;
//! - `listener` is the accept loop (with back-off) and the drain at shutdown.
//!
//! We own the loop instead of using `axum::serve` because it has no timeout on
//! request heads or idle connections, and its graceful shutdown waits forever for a
//! request that will never finish.

pub mod file_limit;

mod connection;
mod listener;
mod table;

pub use connection::Socket;
pub use listener::{Drain, Limits, Server};

/// What every connection serves: a request in, an answer out (`http::router`'s).
pub type HttpService = tower::util::BoxCloneSyncService<
    axum::http::Request<hyper::body::Incoming>,
    axum::response::Response,
    std::convert::Infallible,
>;
