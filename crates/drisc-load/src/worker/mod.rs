//! A worker: the players of one process. It runs as a task of the coordinator,
//! or as a process of its own (`drisc-load worker`, JSON lines on stdin/stdout).
//! It knows the coordinator only through [`crate::protocol`].

mod open_loop;
mod population;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc, watch};

use crate::plan::{Plan, Scenario};
use crate::players::{Env, HttpPool, Minter};
use crate::protocol::{Assignment, Down, Phase, Up};
use crate::target::{Pacer, Sources, Target, Tls};

/// `drisc-load worker`: reads its assignment, then commands, from stdin; writes
/// progress and results to stdout. Exits when stdin closes.
pub async fn main() -> ExitCode {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let assignment: Assignment = match lines.next_line().await {
        Ok(Some(line)) => match serde_json::from_str(&line) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("drisc-load worker: bad assignment: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => return ExitCode::FAILURE,
    };
    let (down_tx, down) = mpsc::unbounded_channel();
    let (up, mut up_rx) = mpsc::unbounded_channel::<Up>();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Down>(&line) {
                Ok(d) => {
                    if down_tx.send(d).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("drisc-load worker: bad command: {e}"),
            }
        }
        // The coordinator is gone: stop everything.
        std::process::exit(3);
    });
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(m) = up_rx.recv().await {
            let Ok(line) = serde_json::to_string(&m) else { continue };
            if stdout.write_all((line + "\n").as_bytes()).await.is_err() {
                return;
            }
            let _ = stdout.flush().await;
        }
    });
    if assignment.plan.common.busy_poll {
        crate::target::busy_poll(&tokio::runtime::Handle::current());
    }
    let max_time = assignment.plan.common.max_time;
    if tokio::time::timeout(max_time, run(assignment, down, up)).await.is_err() {
        eprintln!("drisc-load worker: passed --max-time, stopping");
        return ExitCode::FAILURE;
    }
    let _ = writer.await;
    ExitCode::SUCCESS
}

/// What a worker's scenario code can use.
pub struct Ctx {
    pub plan: Plan,
    pub index: u32,
    pub count: u32,
    pub env: Arc<Env>,
    pub pool: Arc<HttpPool>,
    pub minter: Arc<Minter>,
    down: Mutex<mpsc::UnboundedReceiver<Down>>,
    up: mpsc::UnboundedSender<Up>,
    phase: watch::Sender<Phase>,
}

impl Ctx {
    /// How many of `total` items this worker takes (items i with i % count == index).
    pub fn share(&self, total: usize) -> usize {
        let (n, i) = (self.count as usize, self.index as usize);
        if total > i { (total - i).div_ceil(n) } else { 0 }
    }

    /// The global number of this worker's `local`-th item.
    pub fn global(&self, local: usize) -> usize {
        local * self.count as usize + self.index as usize
    }

    pub fn customer(&self, n: usize) -> String {
        format!("{}-{n}", self.plan.common.run_id)
    }

    pub fn send(&self, up: Up) {
        let _ = self.up.send(up);
    }

    /// Waits for `Next`, passing phase changes on to the players meanwhile.
    pub async fn wait_next(&self) -> Result<()> {
        let mut down = self.down.lock().await;
        loop {
            match down.recv().await {
                Some(Down::Next) => return Ok(()),
                Some(Down::Phase { phase }) => {
                    let _ = self.phase.send(phase);
                }
                None => bail!("the coordinator has gone"),
            }
        }
    }

    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub fn set_phase(&self, phase: Phase) {
        let _ = self.phase.send(phase);
    }
}

/// Runs one worker to the end and reports its results.
pub async fn run(a: Assignment, down: mpsc::UnboundedReceiver<Down>, up: mpsc::UnboundedSender<Up>) {
    let common = &a.plan.common;
    let sources = Arc::new(match a.source {
        Some((x, y)) => Sources::range(x, y),
        None => Sources::kernel(),
    });
    let setup = async {
        let target = Target::resolve(&common.target).await?;
        let tls = Tls::new(common.ca_file.as_deref(), common.insecure_skip_verify)?;
        let pool = Arc::new(HttpPool::new(sources.clone(), target, tls.clone())?);
        let publisher = common.publisher.clone().unwrap_or_default();
        let minter = Arc::new(Minter::new(&common.secret, &publisher, Duration::from_secs(86_400)));
        anyhow::Ok((pool, minter, tls))
    }
    .await;
    let (pool, minter, tls) = match setup {
        Ok(s) => s,
        Err(e) => {
            let _ = up.send(Up::Done {
                counters: Default::default(),
                hists: Default::default(),
                error: Some(format!("{e:#}")),
            });
            return;
        }
    };
    let env = Arc::new(Env {
        sources: sources.clone(),
        tls,
        resolved: Default::default(),
        pacer: Pacer::new(common.connect_rate / f64::from(a.count.max(1))),
        counters: Default::default(),
        hists: Default::default(),
        ping_interval: common.ping_interval,
    });
    let (phase, _) = watch::channel(Phase::Hold);
    let ctx = Arc::new(Ctx {
        plan: a.plan.clone(),
        index: a.index,
        count: a.count,
        env: env.clone(),
        pool,
        minter,
        down: Mutex::new(down),
        up: up.clone(),
        phase,
    });
    let progress = {
        let (env, up) = (env.clone(), up.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                if up
                    .send(Up::Progress {
                        counters: env.counters.snapshot(),
                    })
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let result = match &a.plan.scenario {
        Scenario::Admit(args) => open_loop::admit(&ctx, args).await,
        Scenario::Attach(args) => open_loop::attach(&ctx, args).await,
        Scenario::Hold(args) => population::hold(&ctx, &args.stages, false).await,
        Scenario::Reap(args) => population::hold(&ctx, &[args.sessions], true).await,
        Scenario::Churn(args) => population::churn(&ctx, args).await,
        Scenario::HotPool(_) => Err(anyhow::anyhow!("hot-pool runs in the coordinator")),
    };
    progress.abort();
    let _ = up.send(Up::Done {
        counters: env.counters.snapshot(),
        hists: env.hists.export(),
        error: result.err().map(|e| format!("{e:#}")),
    });
}
