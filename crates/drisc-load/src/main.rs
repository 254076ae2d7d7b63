//! `drisc-load`: a load generator that behaves like real DRISC players.
//!
//! Each player creates a session over HTTP, opens the WebSocket it is handed,
//! sends REQUESTED, waits for OK and answers every PING with PONG; by scenario it
//! finishes, reconnects with its cached endpoint, takes over, or dies. Every
//! loop is bounded in count and time. The modules are in the library
//! (`src/lib.rs`); this is the command line.
//!
//! Scenarios: `admit`, `attach`, `hold`, `churn`, `hot-pool`, `reap`; `report`
//! turns a directory of results into BENCHMARKS.md and its charts, `soak-report`
//! judges a soak. Run `drisc-load help <scenario>`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use drisc_load::plan::{AdmitArgs, AttachArgs, ChurnArgs, Common, HoldArgs, HotPoolArgs, Plan, ReapArgs, Scenario};
use drisc_load::{report, scenarios, worker};

#[derive(Parser)]
#[command(
    name = "drisc-load",
    version,
    about = "Load generator for drisc: players that create sessions, hold WebSockets and answer PINGs",
    long_about = "Load generator for drisc. Players create sessions (POST /sessions with a customer JWT), \
                  open the WebSocket endpoint, send REQUESTED, wait for OK and answer every PING with PONG.\n\n\
                  Targets are http:// or https:// (certificates verified; --ca-file or \
                  --insecure-skip-verify for a self-signed one); one not on this machine gets a warning, as it is \
                  real load on a real server. Progress goes to stderr once a second, a summary table to stdout, and --json writes the results for machines.\n\n\
                  Example: drisc-load hold --target http://127.0.0.1:8080 --stages 1000,5000 --workers 2"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open-loop POST /sessions at a fixed offered rate (or closed loop with --rate 0).
    Admit {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: AdmitArgs,
    },
    /// Create → WebSocket → REQUESTED → OK → FINISHED, per second and its latency.
    Attach {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: AttachArgs,
    },
    /// Hold N live sessions answering PINGs, in stages, then leave; watches the server's memory and CPU.
    Hold {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: HoldArgs,
    },
    /// A steady population joining and leaving (FINISHED, abandon, takeover, reconnect).
    Churn {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: ChurnArgs,
    },
    /// Thousands of parallel creates on one pool of limit L: exactly L must be granted.
    HotPool {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: HotPoolArgs,
    },
    /// Players die (SIGSTOP, SIGKILL, silent, dropped); measures until a new create for each pool succeeds.
    Reap {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: ReapArgs,
    },
    /// Writes BENCHMARKS.md (and its charts) from the JSON results of bench/run.
    Report(report::ReportArgs),
    /// Judges a soak (a long churn run): are RSS and held slots flat? Writes bench/soak-results.md and a chart.
    SoakReport(report::soak::SoakArgs),
    /// Draws bench/tail's chart: admission p99 and p99.9 against offered rate, per server.
    TailChart(report::tail::TailArgs),
    /// Redis memory per held session against held sessions, from bench/cluster runs (a table and a chart).
    RedisMemoryReport(report::redis_memory::RedisMemoryArgs),
    /// A line chart (SVG) from files of `x y` lines, one series each (bench/flood's held sessions).
    LineChart(report::line_chart::LineChartArgs),
    /// (internal) A worker process, driven over stdin/stdout by its coordinator.
    #[command(hide = true)]
    Worker,
}

/// The exit of a command that writes a report: its error, if any, on stderr.
fn reported(command: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drisc-load {command}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drisc-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (common, scenario) = match cli.command {
        Cmd::Worker => return runtime.block_on(worker::main()),
        Cmd::Report(args) => return reported("report", report::run(&args)),
        Cmd::SoakReport(args) => return reported("soak-report", report::soak::run(&args)),
        Cmd::TailChart(args) => return reported("tail-chart", report::tail::run(&args)),
        Cmd::RedisMemoryReport(args) => return reported("redis-memory-report", report::redis_memory::run(&args)),
        Cmd::LineChart(args) => return reported("line-chart", report::line_chart::run(&args)),
        Cmd::Admit { common, args } => (common, Scenario::Admit(args)),
        Cmd::Attach { common, args } => (common, Scenario::Attach(args)),
        Cmd::Hold { common, args } => (common, Scenario::Hold(args)),
        Cmd::Churn { common, args } => (common, Scenario::Churn(args)),
        Cmd::HotPool { common, args } => (common, Scenario::HotPool(args)),
        Cmd::Reap { common, args } => (common, Scenario::Reap(args)),
    };
    let max_time = common.max_time;
    if common.busy_poll {
        drisc_load::target::busy_poll(runtime.handle());
    }
    let plan = Plan { common, scenario };
    let outcome = runtime.block_on(async {
        tokio::time::timeout(max_time, scenarios::run(plan))
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "the run passed --max-time {max_time:?} and was stopped"
                ))
            })
    });
    // Worker processes are killed on drop; nothing else may keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drisc-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
