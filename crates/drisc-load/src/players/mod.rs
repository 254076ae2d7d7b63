//! The DRISC player: the HTTP calls it makes (create, takeover, and the admin
//! setup before a run), and its state machine on the WebSocket.

mod api;
mod http;
mod messages;
mod socket;

use std::sync::Arc;
use std::time::Duration;

pub use api::{Admin, Created, Minter, create_body, read_created};
pub use http::{HttpConn, HttpPool};
pub use messages::Action;
pub use socket::{Held, Ws, connect, finish, hold, open, request, wait_phase};

use crate::stats::{Counters, Hists};
use crate::target::{Pacer, Resolved, Sources, Tls};

/// What every player of a process shares.
pub struct Env {
    pub sources: Arc<Sources>,
    /// How https targets and wss endpoints are verified.
    pub tls: Tls,
    /// The addresses of the endpoints' hosts, looked up once.
    pub resolved: Resolved,
    pub pacer: Pacer,
    pub counters: Counters,
    pub hists: Hists,
    /// The server's configured PING interval, when known: PING lateness is
    /// measured against it.
    pub ping_interval: Option<Duration>,
}
