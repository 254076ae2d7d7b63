//! What the coordinator and its workers say to each other (JSON lines over a
//! worker process's stdin/stdout, or channels for an in-process worker). Both
//! sides import this module and neither imports the other's internals: the
//! coordinator starts workers, workers only answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::stats::{HistData, Snapshot};

/// What the coordinator hands one worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub plan: Plan,
    pub index: u32,
    pub count: u32,
    /// `127.a.b.*` for this worker's client sockets; `None`: the kernel's choice.
    pub source: Option<(u8, u8)>,
}

/// Worker → coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Up {
    Progress {
        counters: Snapshot,
    },
    /// A stage is reached (everyone ramped up, or ready to start).
    Stage {
        stage: usize,
        held: u64,
        failed: u64,
        /// Session ids and customers held, when the scenario needs them.
        #[serde(default)]
        sessions: Vec<(String, String)>,
    },
    Done {
        counters: Snapshot,
        hists: BTreeMap<String, HistData>,
        error: Option<String>,
    },
}

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Down {
    /// Go on to the next stage (or start).
    Next,
    /// Tell every player of the worker.
    Phase { phase: Phase },
}

/// What the coordinator tells every player of a process at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Keep answering PINGs.
    Hold,
    /// Send FINISHED and close.
    Leave,
    /// Stop answering, keep the socket open: a player that froze.
    Silent,
    /// Close the socket without FINISHED: a player that crashed or lost its network.
    Drop,
    /// Let go of everything now (end of run).
    Stop,
}
