//! drisc: a session-control server for video streaming, speaking the DRISC
//! (Simultaneous Session Control) protocol.
//!
//! Map of the crate, dependencies pointing down only:
//!
//! - [`app`] builds everything from [`config::Settings`] and runs it;
//! - [`net`] owns the accept loop and every connection (deadlines, shedding, drain);
//! - [`http`] (REST API, admin API) and [`ws`] (the player's socket) are the edges;
//! - [`web`] serves the console and the demo player, pages over that API;
//! - [`auth`] verifies customer tokens and signs session tokens;
//! - [`readiness`] says whether the node can admit (`/readyz`): stores reachable, not draining;
//! - [`limits`] rate-limits customers and failed authentications per source address;
//! - [`domain`] holds the rules (pools, admission, liveness) and the ports it needs;
//! - [`store`] implements those ports (memory or Redis pools, SQLite or PostgreSQL
//!   settings, the settings cache), one `open` function per backend;
//! - [`meter`] counts what `GET /metrics` reports and logs the session events;
//! - [`tasks`] runs the background loops;
//! - [`healthcheck`] is `drisc healthcheck`, a client of `/readyz`;
//! - [`json_text`] writes JSON strings by hand on hot paths, as serde_json would;
//! - [`allocator`] reads jemalloc's figures and hands freed pages back.

pub mod allocator;
pub mod app;
pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod event_body;
pub mod events;
pub mod healthcheck;
pub mod http;
pub mod json_text;
pub mod limits;
pub mod meter;
pub mod net;
pub mod readiness;
pub mod state;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod threads;
pub mod utc_text;
pub mod web;
pub mod ws;

pub use app::App;
pub use config::Settings;
