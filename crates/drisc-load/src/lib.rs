//! The load generator for drisc and the benchmarks' baseline server.
//!
//! Organised by what each part does; dependencies run one way, from the top:
//!
//! - [`scenarios`]: the coordinator's side of each scenario (set the server up,
//!   drive the workers' stages, measure, write the results), using
//! - [`coordinator`]: starts the workers (tasks, or processes of this program),
//!   prints progress, merges what they report;
//! - [`worker`]: the players of one process, running a scenario's player side;
//! - [`protocol`]: what the coordinator and its workers say to each other (the
//!   one module both import, so neither imports the other's internals);
//! - [`plan`]: what a run is asked to do (the command line's options);
//! - [`players`]: the DRISC player: its HTTP calls and its WebSocket state machine;
//! - [`target`]: where to connect: URLs, TLS, source addresses, pacing;
//! - [`server`]: watching the server under test (/proc, /health);
//! - [`stats`] and [`report`]: counters and histograms, the summary table, the
//!   JSON results and BENCHMARKS.md;
//! - [`baseline`]: the bare-axum server bench/run measures drisc against.

pub mod baseline;
pub mod coordinator;
pub mod plan;
pub mod players;
pub mod protocol;
pub mod report;
pub mod scenarios;
pub mod server;
pub mod stats;
pub mod target;
pub mod worker;
