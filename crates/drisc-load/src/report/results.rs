//! What a run writes with --json, and what `report` reads back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::server::ProcSample;
use crate::stats::{Snapshot, Summary};

/// What a run writes with --json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    pub label: String,
    pub target: String,
    pub params: serde_json::Value,
    pub workers: u32,
    pub source_addresses: String,
    pub elapsed_s: f64,
    pub counters: Snapshot,
    /// Latency summaries by name, in ms.
    pub latency: BTreeMap<String, Summary>,
    /// Headline numbers, named.
    pub metrics: BTreeMap<String, f64>,
    /// Held-session stages (hold).
    pub stages: Vec<Stage>,
    /// Pass/fail checks (hot-pool).
    pub checks: Vec<Check>,
    /// The server process once a second.
    pub server_samples: Vec<ProcSample>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stage {
    pub sessions: u64,
    pub failed: u64,
    pub rss_kb: u64,
    pub fds: u64,
    /// Server CPU seconds over the stage's hold window.
    pub cpu_s: f64,
    pub window_s: f64,
    pub pongs: u64,
    pub server_sessions: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub expected: u64,
    pub got: u64,
    pub ok: bool,
}
