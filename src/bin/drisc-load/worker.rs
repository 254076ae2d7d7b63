//! A worker: the players of one process. It runs as a task of the coordinator,
//! or as a process of its own (`drisc-load worker`, JSON lines on stdin/stdout).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderValue;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::coord::{Assignment, Down, Up};
use crate::http::{Created, HttpConn, HttpPool, Minter, create_body, read_created};
use crate::net::{Pacer, Sources, Target};
use crate::player::{self, Action, Env, Held, Phase, Ws};
use crate::stats::C;
use crate::{AdmitArgs, AttachArgs, ChurnArgs, Plan, Scenario};

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
    let setup = (|| {
        let target = Target::parse(&common.target)?;
        let pool = Arc::new(HttpPool::new(sources.clone(), target.clone())?);
        let publisher = common.publisher.clone().unwrap_or_default();
        let minter = Arc::new(Minter::new(&common.secret, &publisher, Duration::from_secs(86_400)));
        anyhow::Ok((pool, minter))
    })();
    let (pool, minter) = match setup {
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
        Scenario::Admit(args) => admit(&ctx, args).await,
        Scenario::Attach(args) => attach(&ctx, args).await,
        Scenario::Hold(args) => hold(&ctx, &args.stages, false).await,
        Scenario::Reap(args) => hold(&ctx, &[args.sessions], true).await,
        Scenario::Churn(args) => churn(&ctx, args).await,
        Scenario::HotPool(_) => Err(anyhow::anyhow!("hot-pool runs in the coordinator")),
    };
    progress.abort();
    let _ = up.send(Up::Done {
        counters: env.counters.snapshot(),
        hists: env.hists.export(),
        error: result.err().map(|e| format!("{e:#}")),
    });
}

/// Keep-alive connections for the lanes of an open-loop scenario.
async fn open_lanes(ctx: &Ctx, lanes: usize) -> Result<Vec<HttpConn>> {
    let mut conns = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        ctx.env.pacer.wait().await;
        conns.push(ctx.pool.open().await?);
    }
    Ok(conns)
}

/// When request `g` is due: open loop at `rate`, or now (closed loop).
fn due(start: Instant, rate: f64, g: usize) -> Instant {
    if rate > 0.0 {
        start + Duration::from_secs_f64(g as f64 / rate)
    } else {
        Instant::now()
    }
}

/// Waits until `at` and returns the instant latency counts from: `at` itself when
/// the lane is late (the server kept it busy: that wait is the server's), or the
/// moment the timer fired when the lane was idle, because the timer's own
/// millisecond granularity is the generator's, not the server's.
async fn wait_due(at: Instant) -> Instant {
    if Instant::now() >= at {
        return at;
    }
    sleep_until(at).await;
    Instant::now()
}

fn mint_all(ctx: &Ctx, customers: usize) -> Result<Arc<Vec<HeaderValue>>> {
    (0..customers.max(1))
        .map(|c| ctx.minter.bearer(&ctx.customer(c)))
        .collect::<Result<Vec<_>>>()
        .map(Arc::new)
}

/// Opens this worker's share of `connections` keep-alive lanes, reports ready and
/// waits for the coordinator's go: every worker starts its schedule together.
async fn start_open_loop(ctx: &Ctx, connections: usize) -> Result<(Vec<HttpConn>, Instant)> {
    let lanes = ctx.share(connections.max(1)).max(1);
    let conns = open_lanes(ctx, lanes).await?;
    ctx.send(Up::Stage {
        stage: 0,
        held: 0,
        failed: 0,
        sessions: Vec::new(),
    });
    ctx.wait_next().await?;
    Ok((conns, Instant::now()))
}

/// Open-loop admission: request g is due at start + g/rate, and its latency is
/// counted from then, so a server that falls behind cannot hide it.
async fn admit(ctx: &Arc<Ctx>, args: &AdmitArgs) -> Result<()> {
    let tokens = mint_all(ctx, if args.hot { 1 } else { args.customers })?;
    let body = create_body(&ctx.plan.common.offer, "drisc-load");
    let (conns, start) = start_open_loop(ctx, args.connections).await?;
    let end = start + args.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for mut conn in conns {
        let (ctx, tokens, body, next) = (ctx.clone(), tokens.clone(), body.clone(), next.clone());
        let rate = args.rate;
        set.spawn(async move {
            let env = &ctx.env;
            loop {
                let g = ctx.global(next.fetch_add(1, Ordering::Relaxed) as usize);
                let at = due(start, rate, g);
                if at >= end {
                    return;
                }
                let at = wait_due(at).await;
                env.counters.inc(C::Sent);
                let token = &tokens[g % tokens.len()];
                let host = ctx.pool.host();
                match conn.send(Method::POST, "/sessions", host, token, body.clone()).await {
                    Ok((status, answer)) => {
                        env.hists.record("admit", at.elapsed());
                        let _ = read_created(status, &answer, &env.counters);
                    }
                    Err(_) => {
                        env.counters.inc(C::NetError);
                        // Reopen, and keep trying until the run ends.
                        loop {
                            if Instant::now() >= end {
                                return;
                            }
                            match ctx.pool.open().await {
                                Ok(c) => {
                                    conn = c;
                                    break;
                                }
                                Err(_) => sleep(Duration::from_millis(100)).await,
                            }
                        }
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    Ok(())
}

/// A session made live: its socket, cached endpoint and id.
pub struct Joined {
    pub ws: Ws,
    pub endpoint: String,
    pub session_id: String,
}

/// Creates a session (taking over the first active one if the pool is full and
/// `take_over` is set), opens its socket, and gets OK.
async fn join(ctx: &Ctx, token: &HeaderValue, name: &str, take_over: bool) -> Result<Joined> {
    let env = &ctx.env;
    let offer = &ctx.plan.common.offer;
    // The whole join is paced, not only the socket: a granted session has only
    // the connect timeout to send REQUESTED, and a burst of creates is a burst
    // on the session store.
    env.pacer.wait().await;
    env.counters.inc(C::Sent);
    let (status, body) = ctx
        .pool
        .send(Method::POST, "/sessions", token, create_body(offer, name))
        .await
        .inspect_err(|_| env.counters.inc(C::NetError))?;
    let created = match read_created(status, &body, &env.counters)? {
        Created::Limit { active } if take_over && !active.is_empty() => {
            let body = serde_json::json!({"sessionName": name, "offerId": offer, "sessionId": active[0]});
            env.counters.inc(C::Sent);
            let (status, body) = ctx
                .pool
                .send(Method::POST, "/takeover", token, Bytes::from(body.to_string()))
                .await
                .inspect_err(|_| env.counters.inc(C::NetError))?;
            let created = read_created(status, &body, &env.counters)?;
            if matches!(created, Created::Granted { .. }) {
                env.counters.inc(C::Takeover);
            }
            created
        }
        other => other,
    };
    let Created::Granted { endpoint, session_id } = created else {
        bail!("not granted: {}", created.describe());
    };
    let mut ws = player::connect(env, &endpoint).await?;
    match player::request(env, &mut ws).await? {
        Action::Ok => Ok(Joined {
            ws,
            endpoint,
            session_id,
        }),
        other => bail!("REQUESTED answered {other:?}"),
    }
}

/// Create → WebSocket → OK, timed from when the attach was due; then FINISHED.
async fn attach(ctx: &Arc<Ctx>, args: &AttachArgs) -> Result<()> {
    let tokens = mint_all(ctx, args.customers)?;
    let body = create_body(&ctx.plan.common.offer, "drisc-load");
    let (conns, start) = start_open_loop(ctx, args.concurrency).await?;
    let end = start + args.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for mut conn in conns {
        let (ctx, tokens, body, next) = (ctx.clone(), tokens.clone(), body.clone(), next.clone());
        let rate = args.rate;
        set.spawn(async move {
            let env = &ctx.env;
            loop {
                let g = ctx.global(next.fetch_add(1, Ordering::Relaxed) as usize);
                let at = due(start, rate, g);
                if at >= end {
                    return;
                }
                let at = wait_due(at).await;
                env.counters.inc(C::Sent);
                let token = &tokens[g % tokens.len()];
                let answer = conn
                    .send(Method::POST, "/sessions", ctx.pool.host(), token, body.clone())
                    .await;
                let endpoint = match answer {
                    Ok((status, answer)) => match read_created(status, &answer, &env.counters) {
                        Ok(Created::Granted { endpoint, .. }) => endpoint,
                        _ => continue,
                    },
                    Err(_) => {
                        env.counters.inc(C::NetError);
                        match ctx.pool.open().await {
                            Ok(c) => conn = c,
                            Err(_) => sleep(Duration::from_millis(100)).await,
                        }
                        continue;
                    }
                };
                let Ok(mut ws) = player::open(env, &endpoint).await else {
                    continue;
                };
                let asked = Instant::now();
                if let Ok(Action::Ok) = player::request(env, &mut ws).await {
                    env.hists.record("attach", at.elapsed());
                    env.hists.record("requested_ok", asked.elapsed());
                    let _ = player::finish(env, &mut ws).await;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    Ok(())
}

/// Holds sessions stage after stage (each player its own customer), then leaves.
/// With `report_sessions` the stage report names the sessions (for `reap`).
async fn hold(ctx: &Arc<Ctx>, stages: &[usize], report_sessions: bool) -> Result<()> {
    let held = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut players = JoinSet::new();
    let mut spawned = 0;
    for (stage, &target) in stages.iter().enumerate() {
        let want = ctx.share(target);
        while spawned < want {
            let (ctx2, held, failed, ids) = (ctx.clone(), held.clone(), failed.clone(), ids.clone());
            let k = ctx.global(spawned);
            let mut phase = ctx.phase();
            players.spawn(async move {
                let ctx = &ctx2;
                let env = &ctx.env;
                let customer = ctx.customer(k);
                let Ok(token) = ctx.minter.bearer(&customer) else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let mut joined = None;
                for attempt in 0..3 {
                    match join(ctx, &token, "drisc-load hold", false).await {
                        Ok(j) => {
                            joined = Some(j);
                            break;
                        }
                        Err(_) => sleep(Duration::from_millis(500 * (attempt + 1))).await,
                    }
                }
                let Some(mut j) = joined else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if let Ok(mut ids) = ids.lock() {
                    ids.push((j.session_id.clone(), customer));
                }
                env.counters.inc(C::Live);
                held.fetch_add(1, Ordering::Relaxed);
                let far = Instant::now() + Duration::from_secs(86_400);
                match player::hold(env, &mut j.ws, far, &mut phase).await {
                    Held::Phase(Phase::Leave) => {
                        let _ = player::finish(env, &mut j.ws).await;
                    }
                    Held::Phase(Phase::Silent) => {
                        // Frozen: the socket stays open, unread, until the run ends.
                        env.counters.dec(C::Live);
                        player::wait_phase(&mut phase, Phase::Silent).await;
                        return;
                    }
                    _ => {}
                }
                env.counters.dec(C::Live);
            });
            spawned += 1;
        }
        // Everyone of this stage has either joined or given up.
        let deadline = Instant::now() + Duration::from_secs(120) + Duration::from_secs_f64(want as f64 / 100.0);
        while held.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < want as u64 {
            if Instant::now() > deadline {
                bail!("stage {stage}: players did not join in time");
            }
            sleep(Duration::from_millis(50)).await;
        }
        let sessions = if report_sessions {
            ids.lock().map(|v| v.clone()).unwrap_or_default()
        } else {
            Vec::new()
        };
        ctx.send(Up::Stage {
            stage,
            held: held.load(Ordering::Relaxed),
            failed: failed.load(Ordering::Relaxed),
            sessions,
        });
        ctx.wait_next().await?;
    }
    ctx.set_phase(Phase::Leave);
    let until = Instant::now() + Duration::from_secs(60);
    while !players.is_empty() {
        if tokio::time::timeout_at(until, players.join_next()).await.is_err() {
            players.abort_all();
            break;
        }
    }
    Ok(())
}

/// A steady population: each seat (its own customer, limit 1) holds a session for
/// a random lifetime, then leaves in one of the ways players do.
async fn churn(ctx: &Arc<Ctx>, args: &ChurnArgs) -> Result<()> {
    let seats = ctx.share(args.population);
    ctx.send(Up::Stage {
        stage: 0,
        held: 0,
        failed: 0,
        sessions: Vec::new(),
    });
    ctx.wait_next().await?;
    let end = Instant::now() + args.duration;
    let mut set = JoinSet::new();
    for s in 0..seats {
        let (ctx, args) = (ctx.clone(), args.clone());
        let mut phase = ctx.phase();
        set.spawn(async move {
            let _ = seat(&ctx, &args, ctx.global(s), end, &mut phase).await;
        });
    }
    while set.join_next().await.is_some() {}
    Ok(())
}

async fn seat(ctx: &Ctx, args: &ChurnArgs, k: usize, end: Instant, phase: &mut watch::Receiver<Phase>) -> Result<()> {
    let env = &ctx.env;
    let token = ctx.minter.bearer(&ctx.customer(k))?;
    let mean = args.lifetime.as_secs_f64().max(0.01);
    // Spread the first joins over one lifetime so the population ramps up smoothly.
    let first = rand::rng().random_range(0.0..mean);
    sleep(Duration::from_secs_f64(first)).await;
    let mut current: Option<Joined> = None;
    while Instant::now() < end {
        let mut j = match current.take() {
            Some(j) => j,
            None => match join(ctx, &token, "drisc-load churn", true).await {
                Ok(j) => j,
                Err(_) => {
                    sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        env.counters.inc(C::Live);
        let life = -mean * (1.0 - rand::rng().random::<f64>()).ln();
        let until = (Instant::now() + Duration::from_secs_f64(life)).min(end);
        let blip = rand::rng().random::<f64>() < args.reconnect;
        let blip_at = Instant::now() + Duration::from_secs_f64(life * rand::rng().random::<f64>());
        let mut outcome = player::hold(env, &mut j.ws, if blip { blip_at.min(until) } else { until }, phase).await;
        if blip && outcome == Held::Deadline && Instant::now() < until {
            // A network blip: the socket drops, the player reconnects with its cached endpoint.
            drop(j.ws);
            match reopen(ctx, &j.endpoint).await {
                Ok(ws) => {
                    env.counters.inc(C::Reconnect);
                    j.ws = ws;
                    outcome = player::hold(env, &mut j.ws, until, phase).await;
                }
                Err(_) => {
                    env.counters.dec(C::Live);
                    continue;
                }
            }
        }
        env.counters.dec(C::Live);
        match outcome {
            Held::Deadline if Instant::now() < end => {
                let r = rand::rng().random::<f64>();
                if r < args.abandon {
                    // Gone without FINISHED: the next player finds the slot held and takes it over.
                    drop(j);
                } else if r < args.abandon + args.takeover {
                    // The next player arrives while this one still plays.
                    match join(ctx, &token, "drisc-load takeover", true).await {
                        Ok(next) => {
                            let _ = player::hold(env, &mut j.ws, Instant::now() + Duration::from_secs(5), phase).await;
                            current = Some(next);
                        }
                        Err(_) => {
                            let _ = player::finish(env, &mut j.ws).await;
                        }
                    }
                } else {
                    let _ = player::finish(env, &mut j.ws).await;
                }
            }
            Held::Deadline | Held::Phase(Phase::Leave) => {
                let _ = player::finish(env, &mut j.ws).await;
            }
            _ => {}
        }
    }
    if let Some(mut j) = current {
        let _ = player::finish(env, &mut j.ws).await;
    }
    Ok(())
}

/// Reconnects to a cached endpoint: OK if the session is still held.
async fn reopen(ctx: &Ctx, endpoint: &str) -> Result<Ws> {
    let mut ws = player::open(&ctx.env, endpoint).await?;
    match player::request(&ctx.env, &mut ws).await.context("reconnect")? {
        Action::Ok => Ok(ws),
        other => bail!("reconnect answered {other:?}"),
    }
}
