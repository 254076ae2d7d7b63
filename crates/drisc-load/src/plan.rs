//! What a run is asked to do: the options every scenario shares and each
//! scenario's own, as parsed from the command line and handed to every worker.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

/// Options every scenario shares.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct Common {
    /// The server: http://HOST[:PORT] or https://HOST[:PORT]. One that is not on this
    /// machine gets a warning: it is real load on a real server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Trust the CA certificate(s) in this PEM file for https targets and wss
    /// endpoints, besides the bundled web roots (a staging server's own CA).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Do not verify TLS certificates at all (a self-signed staging certificate
    /// whose CA you do not have). Prefer --ca-file.
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// HMAC secret signing the customer tokens (HS256).
    #[arg(long, default_value = "drisc-dev-customer-secret")]
    pub secret: String,
    /// The admin key, to configure the publisher and offers before the run.
    #[arg(long, default_value = "drisc-dev-admin-key")]
    pub admin_key: String,
    /// Do not call the admin API (a server without one, such as the baseline).
    #[arg(long)]
    pub no_admin: bool,
    /// The publisherId of the players; default: a fresh one per run.
    #[arg(long)]
    pub publisher: Option<String>,
    /// The offerId players ask for.
    #[arg(long, default_value = "bench")]
    pub offer: String,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for this run in the output (e.g. "drisc", "baseline").
    #[arg(long, default_value = "drisc")]
    pub label: String,
    /// The server's process id: its RSS, CPU time and open files are sampled from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Worker processes (0: run in this process), so together they can hold more
    /// sockets than one process may open. On loopback each binds its sockets to its
    /// own 127.x.y.* range.
    #[arg(long, default_value_t = 0)]
    pub workers: u32,
    /// New connections per second, over all workers (0: unpaced).
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// The server's PING interval, to report how late PINGs come.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Hard bound on the whole run; past it everything stops.
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    pub max_time: Duration,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Keep this process's runtime from ever sleeping in `epoll_wait`: a task per
    /// worker that yields in a loop, so the runtime polls for I/O without blocking.
    /// On loopback the server's CPU delivers each answer into our socket, and when
    /// our thread sleeps it also pays for waking it; a client that never sleeps
    /// takes that cost out of the server's figure, for every server alike. Costs
    /// this process its cores.
    #[arg(long)]
    pub busy_poll: bool,
    /// Bind client sockets to 127.A.B.* (chosen at random per run when absent; "none": 127.0.0.1).
    /// Loopback targets only: for any other the kernel picks the source address.
    #[arg(long, value_parser = parse_source)]
    pub source_base: Option<SourceBase>,
    /// Set by the coordinator: a fresh id naming this run's customers.
    #[arg(skip)]
    pub run_id: String,
}

/// Where the client sockets are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceBase {
    /// 127.A.B.* (the coordinator), 127.A.B+i.* (worker i).
    Range(u8, u8),
    /// Wherever the kernel picks (127.0.0.1 for a loopback target).
    Kernel,
}

impl Common {
    /// The 127.A.B.* range client sockets are bound to, if any.
    pub fn source_range(&self) -> Option<(u8, u8)> {
        match self.source_base {
            Some(SourceBase::Range(a, b)) => Some((a, b)),
            _ => None,
        }
    }
}

fn parse_source(s: &str) -> Result<SourceBase, String> {
    if s == "none" {
        return Ok(SourceBase::Kernel);
    }
    let (a, b) = s.split_once('.').ok_or("give A.B, as in 127.A.B.*, or none")?;
    Ok(SourceBase::Range(
        a.parse().map_err(|e| format!("{e}"))?,
        b.parse().map_err(|e| format!("{e}"))?,
    ))
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct AdmitArgs {
    /// Offered creates per second, open loop (0: closed loop, as fast as answers come).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many requests, over all workers, if the duration has not
    /// ended the run first (to fill a server with a known number of sessions).
    #[arg(long)]
    #[serde(default)]
    pub creates: Option<u64>,
    /// Keep-alive HTTP connections (in-flight requests at most).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Distinct customers, taken in turn.
    #[arg(long, default_value_t = 100_000)]
    pub customers: usize,
    /// One hot pool: every request from one customer for one offer.
    #[arg(long)]
    pub hot: bool,
    /// The pool limit set for the run (publisher default; the offer's for --hot).
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct AttachArgs {
    /// Offered attaches per second, open loop (0: closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Attaches in flight at most.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Distinct customers, taken in turn.
    #[arg(long, default_value_t = 10_000)]
    pub customers: usize,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct HoldArgs {
    /// Live sessions to hold, stage after stage (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub stages: Vec<usize>,
    /// How long each stage is held (server CPU and PONGs are counted over it).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub stage_hold: Duration,
    /// Pause after a stage is reached, before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Pause after everyone left, before the last memory sample.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub leave_settle: Duration,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct ChurnArgs {
    /// Players at any time.
    #[arg(long, default_value_t = 1000)]
    pub population: usize,
    /// Mean time a player stays (exponential).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Share of leaves that drop the socket without FINISHED (the next player takes the slot over).
    #[arg(long, default_value_t = 0.15)]
    pub abandon: f64,
    /// Share of leaves where the next player takes over the live session (TAKE_OVER).
    #[arg(long, default_value_t = 0.15)]
    pub takeover: f64,
    /// Chance per life of a network blip: the socket drops and reconnects with the cached endpoint.
    #[arg(long, default_value_t = 0.2)]
    pub reconnect: f64,
    /// Share of leaves that die silently: the socket stays open but nobody answers
    /// PINGs, until `--silent-for` has passed (the server must expire the session on
    /// its pong timeout); only then does the seat's next player join.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub silent: f64,
    /// How long a silently dead player keeps its socket open (longer than the server's pong timeout).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(default = "default_silent_for")]
    pub silent_for: Duration,
    /// Ramp-up before the steady window the run reports on (default: two lifetimes).
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(default)]
    pub warmup: Option<Duration>,
}

fn default_silent_for() -> Duration {
    Duration::from_secs(30)
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct HotPoolArgs {
    /// Creates fired at once, each on its own connection.
    #[arg(long, default_value_t = 2000)]
    pub parallel: usize,
    /// The pool's limit.
    #[arg(long, default_value_t = 3)]
    pub limit: u32,
    /// Rounds, each on a fresh pool.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Death {
    /// SIGSTOP the worker processes: sockets stay open, nobody answers (silent).
    Stop,
    /// SIGKILL the worker processes: the kernel closes every socket (loud).
    Kill,
    /// Players stop answering PINGs in-process (silent).
    Silent,
    /// Players drop their sockets without FINISHED in-process (loud).
    Drop,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct ReapArgs {
    /// Players (each its own pool of limit 1) that die together.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    #[arg(long, value_enum, default_value = "stop")]
    pub die: Death,
    /// The server's bound for this death (pongTimeout for silent, reconnectGrace for loud): reported against.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expect: Option<Duration>,
    /// Give up probing this long after the deaths.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub probe_for: Duration,
}

/// Everything a worker needs to know about the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub common: Common,
    pub scenario: Scenario,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Scenario {
    Admit(AdmitArgs),
    Attach(AttachArgs),
    Hold(HoldArgs),
    Churn(ChurnArgs),
    HotPool(HotPoolArgs),
    Reap(ReapArgs),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Admit(_) => "admit",
            Scenario::Attach(_) => "attach",
            Scenario::Hold(_) => "hold",
            Scenario::Churn(_) => "churn",
            Scenario::HotPool(_) => "hot-pool",
            Scenario::Reap(_) => "reap",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_base_is_a_range_or_none() {
        assert_eq!(parse_source("40.7"), Ok(SourceBase::Range(40, 7)));
        assert_eq!(parse_source("none"), Ok(SourceBase::Kernel));
        assert!(parse_source("40").is_err());
        assert!(parse_source("300.1").is_err());
    }
}
