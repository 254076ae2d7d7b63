//! The coordinator's side of each scenario: set the server up, start the workers,
//! drive their stages, measure the server, and write the results.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper::Method;
use hyper::header::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::coord::{Down, ProcSample, Run, Up};
use crate::http::{Admin, Created, HttpConn, HttpPool, Minter, create_body, read_created};
use crate::net::{Pacer, Sources, Target};
use crate::player::Phase;
use crate::stats::{C, Counters, Hists, Snapshot, Summary, merge_hists};
use crate::{Death, HotPoolArgs, Plan, ReapArgs, Scenario};

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

pub async fn run(mut plan: Plan) -> Result<()> {
    let target = Target::parse(&plan.common.target)?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    plan.common.run_id = format!("load-{run_id}");
    if plan.common.publisher.is_none() {
        plan.common.publisher = Some(format!("load-{run_id}"));
    }
    if plan.common.source_base.is_none() {
        // A fresh 127.A.B.* per run: the TIME_WAIT sockets of the last run are elsewhere.
        plan.common.source_base = Some((rand::random_range(16..=250), rand::random()));
    }
    let workers = plan.common.workers;
    let sources = Arc::new(Sources::range(
        plan.common.source_base.map_or(1, |s| s.0),
        plan.common.source_base.map_or(1, |s| s.1.wrapping_add(workers as u8)),
    ));
    let pool = Arc::new(HttpPool::new(sources.clone(), target.clone())?);
    let started = Instant::now();
    let mut result = RunResult {
        scenario: plan.scenario.name().into(),
        label: plan.common.label.clone(),
        target: plan.common.target.clone(),
        params: serde_json::to_value(&plan.scenario)?,
        workers,
        source_addresses: format!("{} (coordinator); workers: the next 127.A.B+i.*", sources.describe()),
        ..Default::default()
    };
    eprintln!(
        "drisc-load {}: target {} ({}), publisher {}, {} worker process(es), sources {}",
        plan.scenario.name(),
        target.addr,
        plan.common.label,
        plan.common.publisher.as_deref().unwrap_or_default(),
        workers,
        result.source_addresses
    );
    setup(&plan, &pool).await?;
    match plan.scenario.clone() {
        Scenario::Admit(_) | Scenario::Attach(_) => lanes(&plan, &pool, &mut result).await?,
        Scenario::Hold(args) => hold(&plan, &pool, &args, &mut result).await?,
        Scenario::Churn(args) => churn(&plan, &pool, &args, &mut result).await?,
        Scenario::HotPool(args) => hot_pool(&plan, &pool, &sources, &args, &mut result).await?,
        Scenario::Reap(args) => reap(&plan, &pool, &args, &mut result).await?,
    }
    result.elapsed_s = started.elapsed().as_secs_f64();
    print_summary(&result);
    if let Some(path) = &plan.common.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("cannot write {path:?}"))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// Configures the publisher (and the hot offer) through the admin API.
async fn setup(plan: &Plan, pool: &HttpPool) -> Result<()> {
    if plan.common.no_admin {
        return Ok(());
    }
    let admin = Admin {
        pool,
        key: HeaderValue::from_str(&format!("Bearer {}", plan.common.admin_key))?,
    };
    let publisher = plan.common.publisher.as_deref().unwrap_or_default();
    let (default_limit, offer_limit) = match &plan.scenario {
        Scenario::Admit(a) if a.hot => (1, Some(a.limit.unwrap_or(5))),
        Scenario::Admit(a) => (a.limit.unwrap_or(1_000_000), None),
        Scenario::Attach(_) => (1_000_000, None),
        _ => (1, None),
    };
    admin
        .put(
            &format!("/admin/v1/publishers/{publisher}"),
            serde_json::json!({"defaultSessionLimit": default_limit, "takeoverEnabled": true}),
        )
        .await
        .context("configuring the publisher (use --no-admin for a server without the admin API)")?;
    if let Some(limit) = offer_limit {
        admin
            .put(
                &format!("/admin/v1/publishers/{publisher}/offers/{}", plan.common.offer),
                serde_json::json!({"sessionLimit": limit}),
            )
            .await?;
    }
    Ok(())
}

fn cpu_between(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(b?.cpu_s - a?.cpu_s)
}

/// admit and attach: one start signal, then lanes until the duration is over.
async fn lanes(plan: &Plan, pool: &Arc<HttpPool>, result: &mut RunResult) -> Result<()> {
    let mut run = Run::start(plan, &plan.common.label, Some(pool.clone())).await?;
    run.stage(0, Duration::from_secs(120)).await?;
    let before = run.sample();
    let t0 = Instant::now();
    run.send(Down::Next);
    let latency = run.finish(plan.common.max_time).await;
    let secs = t0.elapsed().as_secs_f64();
    let after = run.sample();
    let c = run.totals();
    let m = &mut result.metrics;
    let answered = c.get(C::Granted) + c.get(C::Limit) + c.get(C::Disabled);
    m.insert("window_s".into(), secs);
    m.insert("granted_per_s".into(), c.get(C::Granted) as f64 / secs);
    m.insert("answered_per_s".into(), answered as f64 / secs);
    if let Scenario::Admit(a) = &plan.scenario {
        m.insert("offered_per_s".into(), a.rate);
    }
    if let Scenario::Attach(a) = &plan.scenario {
        m.insert("offered_per_s".into(), a.rate);
        m.insert("attached_per_s".into(), c.get(C::Ok) as f64 / secs);
    }
    if let Some(cpu) = cpu_between(before, after) {
        m.insert("server_cpu_s".into(), cpu);
        m.insert("server_cores_busy".into(), cpu / secs);
        if cpu > 0.0 {
            m.insert("granted_per_core_s".into(), c.get(C::Granted) as f64 / cpu);
            m.insert("answered_per_core_s".into(), answered as f64 / cpu);
            m.insert("attached_per_core_s".into(), c.get(C::Ok) as f64 / cpu);
        }
    }
    finish_result(result, run, latency, c);
    Ok(())
}

fn finish_result(result: &mut RunResult, run: Run, latency: BTreeMap<String, Summary>, c: Snapshot) {
    result.latency.extend(latency);
    result.counters = c;
    result.server_samples = run.samples;
    result.errors.extend(run.errors);
}

/// Stage after stage: ramp, settle, measure memory, count CPU and PONGs over the
/// hold window; then everyone leaves and memory is measured once more.
async fn hold(plan: &Plan, pool: &Arc<HttpPool>, args: &crate::HoldArgs, result: &mut RunResult) -> Result<()> {
    let per_worker = args.stages.iter().max().copied().unwrap_or(0) / plan.common.workers.max(1) as usize;
    if per_worker > 19_000 {
        bail!("{per_worker} sockets per process is over the 20,000 open-file limit: use more --workers");
    }
    let mut run = Run::start(plan, &plan.common.label, Some(pool.clone())).await?;
    run.wait(Duration::from_secs(1)).await;
    if let Some(s) = run.sample() {
        result.metrics.insert("rss_kb_before".into(), s.rss_kb as f64);
    }
    for (i, _) in args.stages.iter().enumerate() {
        let limit = Duration::from_secs(300);
        let reports = run.stage(i, limit).await?;
        let (held, failed) = reports.iter().fold((0, 0), |(h, f), r| match r {
            Up::Stage { held, failed, .. } => (h + held, f + failed),
            _ => (h, f),
        });
        run.wait(args.settle).await;
        let a = run.sample();
        let pongs_a = run.totals().get(C::Pong);
        let t = Instant::now();
        run.wait(args.stage_hold).await;
        let b = run.sample();
        let stage = Stage {
            sessions: held,
            failed,
            rss_kb: b.map_or(0, |s| s.rss_kb),
            fds: b.map_or(0, |s| s.fds),
            cpu_s: cpu_between(a, b).unwrap_or(0.0),
            window_s: t.elapsed().as_secs_f64(),
            pongs: run.totals().get(C::Pong) - pongs_a,
            server_sessions: b.and_then(|s| s.sessions),
        };
        eprintln!(
            "stage {i}: {} sessions held ({} failed), server rss {:.1} MB, {} PONGs in {:.1}s for {:.2} CPU-s",
            stage.sessions,
            stage.failed,
            stage.rss_kb as f64 / 1024.0,
            stage.pongs,
            stage.window_s,
            stage.cpu_s
        );
        let key = args.stages[i];
        if stage.cpu_s > 0.0 {
            result
                .metrics
                .insert(format!("pongs_per_core_s_{key}"), stage.pongs as f64 / stage.cpu_s);
        }
        result.stages.push(stage);
        run.send(Down::Next);
    }
    let latency = run.finish(Duration::from_secs(120)).await;
    run.wait(args.leave_settle).await;
    if let Some(s) = run.sample() {
        result.metrics.insert("rss_kb_after_leave".into(), s.rss_kb as f64);
        result.metrics.insert("fds_after_leave".into(), s.fds as f64);
        if let Some(n) = s.sessions {
            result.metrics.insert("sessions_after_leave".into(), n as f64);
        }
    }
    let m = &mut result.metrics;
    let points: Vec<(f64, f64)> = result
        .stages
        .iter()
        .filter(|s| s.rss_kb > 0)
        .map(|s| (s.sessions as f64, s.rss_kb as f64 * 1024.0))
        .collect();
    if let Some(slope) = slope(&points) {
        m.insert("rss_bytes_per_session".into(), slope);
    }
    if let (Some(first), Some(last)) = (result.stages.first(), result.stages.last())
        && last.sessions > first.sessions
        && last.rss_kb > 0
    {
        m.insert(
            "rss_bytes_per_session_first_last".into(),
            (last.rss_kb as f64 - first.rss_kb as f64) * 1024.0 / (last.sessions - first.sessions) as f64,
        );
    }
    if let Some(last) = result.stages.last() {
        m.insert("max_sessions_held".into(), last.sessions as f64);
        if last.cpu_s > 0.0 {
            m.insert("pongs_per_core_s".into(), last.pongs as f64 / last.cpu_s);
            m.insert("cpu_us_per_pong".into(), last.cpu_s * 1e6 / last.pongs.max(1) as f64);
        }
        m.insert("pongs_per_s".into(), last.pongs as f64 / last.window_s.max(1e-3));
    }
    let c = run.totals();
    finish_result(result, run, latency, c);
    Ok(())
}

/// Least-squares slope of y over x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

async fn churn(plan: &Plan, pool: &Arc<HttpPool>, args: &crate::ChurnArgs, result: &mut RunResult) -> Result<()> {
    let mut run = Run::start(plan, &plan.common.label, Some(pool.clone())).await?;
    run.stage(0, Duration::from_secs(60)).await?;
    let t0 = run.elapsed();
    run.send(Down::Next);
    let latency = run.finish(args.duration + Duration::from_secs(120)).await;
    // The steady part: after one lifetime of ramp-up, until the end of the duration.
    let steady_from = t0 + args.lifetime.as_secs_f64() * 2.0;
    let steady_to = t0 + args.duration.as_secs_f64() - 1.0;
    let steady: Vec<&ProcSample> = run
        .samples
        .iter()
        .filter(|s| s.t >= steady_from && s.t <= steady_to)
        .collect();
    let m = &mut result.metrics;
    if let (Some(first), Some(last)) = (steady.first(), steady.last()) {
        m.insert("rss_kb_steady_first".into(), first.rss_kb as f64);
        m.insert("rss_kb_steady_last".into(), last.rss_kb as f64);
        let points: Vec<(f64, f64)> = steady.iter().map(|s| (s.t, s.rss_kb as f64)).collect();
        if let Some(kb_per_s) = slope(&points) {
            m.insert("rss_kb_per_min_steady".into(), kb_per_s * 60.0);
        }
        let sessions: Vec<u64> = steady.iter().filter_map(|s| s.sessions).collect();
        if let (Some(min), Some(max)) = (sessions.iter().min(), sessions.iter().max()) {
            m.insert("server_sessions_min".into(), *min as f64);
            m.insert("server_sessions_max".into(), *max as f64);
            m.insert(
                "server_sessions_mean".into(),
                sessions.iter().sum::<u64>() as f64 / sessions.len() as f64,
            );
        }
        m.insert("steady_window_s".into(), last.t - first.t);
    }
    let c = run.totals();
    m.insert("joins_per_s".into(), c.get(C::Ok) as f64 / args.duration.as_secs_f64());
    finish_result(result, run, latency, c);
    Ok(())
}

/// Rounds of `parallel` creates fired at once at a fresh pool of limit L.
async fn hot_pool(
    plan: &Plan,
    pool: &Arc<HttpPool>,
    sources: &Arc<Sources>,
    args: &HotPoolArgs,
    result: &mut RunResult,
) -> Result<()> {
    if plan.common.no_admin {
        bail!("hot-pool configures its offers through the admin API");
    }
    let admin = Admin {
        pool,
        key: HeaderValue::from_str(&format!("Bearer {}", plan.common.admin_key))?,
    };
    let publisher = plan.common.publisher.clone().unwrap_or_default();
    let minter = Minter::new(&plan.common.secret, &publisher, Duration::from_secs(3600));
    let token = minter.bearer(&format!("{}-hot", plan.common.run_id))?;
    let pacer = Pacer::new(plan.common.connect_rate);
    let counters = Arc::new(Counters::default());
    let hists = Arc::new(Hists::default());
    let target = Target::parse(&plan.common.target)?;
    for round in 0..args.rounds {
        let offer = format!("hot-{}-{round}", plan.common.run_id);
        admin
            .put(
                &format!("/admin/v1/publishers/{publisher}/offers/{offer}"),
                serde_json::json!({"sessionLimit": args.limit}),
            )
            .await?;
        let mut conns = Vec::with_capacity(args.parallel);
        for _ in 0..args.parallel {
            pacer.wait().await;
            conns.push(HttpConn::open(sources, &target).await?);
        }
        let barrier = Arc::new(Barrier::new(args.parallel));
        let granted = Arc::new(AtomicU64::new(0));
        let listed_over = Arc::new(AtomicU64::new(0));
        let body = create_body(&offer, "drisc-load hot");
        let mut set = JoinSet::new();
        let fired = Instant::now();
        for mut conn in conns {
            let (barrier, granted, listed_over, counters, hists) = (
                barrier.clone(),
                granted.clone(),
                listed_over.clone(),
                counters.clone(),
                hists.clone(),
            );
            let (token, body, host, limit) = (token.clone(), body.clone(), pool.host().clone(), args.limit);
            set.spawn(async move {
                barrier.wait().await;
                let t = Instant::now();
                counters.inc(C::Sent);
                match conn.send(Method::POST, "/sessions", &host, &token, body).await {
                    Ok((status, answer)) => {
                        hists.record("hot_create", t.elapsed());
                        match read_created(status, &answer, &counters) {
                            Ok(Created::Granted { .. }) => {
                                granted.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Created::Limit { active }) if active.len() > limit as usize => {
                                listed_over.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                    Err(_) => counters.inc(C::NetError),
                }
            });
        }
        while set.join_next().await.is_some() {}
        let got = granted.load(Ordering::Relaxed);
        let burst = fired.elapsed();
        eprintln!(
            "round {round}: {} parallel creates on a pool of limit {}: {got} granted in {:.0} ms",
            args.parallel,
            args.limit,
            burst.as_secs_f64() * 1000.0
        );
        result.checks.push(Check {
            name: format!("round {round}: granted == limit"),
            expected: u64::from(args.limit),
            got,
            ok: got == u64::from(args.limit),
        });
        let over = listed_over.load(Ordering::Relaxed);
        result.checks.push(Check {
            name: format!("round {round}: no 409 lists more than the limit"),
            expected: 0,
            got: over,
            ok: over == 0,
        });
        result
            .metrics
            .insert(format!("round{round}_burst_ms"), burst.as_secs_f64() * 1000.0);
    }
    result.counters = counters.snapshot();
    result.latency = merge_hists(&[hists.export()])
        .iter()
        .map(|(k, h)| (k.clone(), Summary::of(h)))
        .collect();
    result.metrics.insert(
        "violations".into(),
        result.checks.iter().filter(|c| !c.ok).count() as f64,
    );
    Ok(())
}

/// Players die together; then every pool is probed with a new create until one
/// succeeds, and (for loud deaths) the sessions are watched until detached.
async fn reap(plan: &Plan, pool: &Arc<HttpPool>, args: &ReapArgs, result: &mut RunResult) -> Result<()> {
    let by_signal = matches!(args.die, Death::Stop | Death::Kill);
    if by_signal && plan.common.workers == 0 {
        bail!("--die stop|kill signals worker processes: give --workers 1 or more");
    }
    let mut run = Run::start(plan, &plan.common.label, Some(pool.clone())).await?;
    let reports = run.stage(0, Duration::from_secs(300)).await?;
    let sessions: Vec<(String, String)> = reports
        .into_iter()
        .flat_map(|r| match r {
            Up::Stage { sessions, .. } => sessions,
            _ => Vec::new(),
        })
        .collect();
    eprintln!(
        "{} players hold their sessions; they die now ({:?})",
        sessions.len(),
        args.die
    );
    // Give every player time to answer at least one PING, as a live player would have.
    run.wait(Duration::from_secs(1)).await;
    let sockets_before = health_sockets(pool).await;
    let t0 = Instant::now();
    match args.die {
        Death::Stop | Death::Kill => {
            let signal = if args.die == Death::Stop { "-STOP" } else { "-KILL" };
            for pid in run.worker_pids() {
                let status = tokio::process::Command::new("kill")
                    .arg(signal)
                    .arg(pid.to_string())
                    .status()
                    .await?;
                if !status.success() {
                    bail!("kill {signal} {pid} failed");
                }
            }
        }
        Death::Silent => run.send(Down::Phase { phase: Phase::Silent }),
        Death::Drop => run.send(Down::Phase { phase: Phase::Drop }),
    }
    let loud = matches!(args.die, Death::Kill | Death::Drop);
    let hists = Arc::new(Hists::default());
    let probe = probe_pools(plan, pool, &sessions, t0, args.probe_for, hists.clone());
    let detach = async {
        if loud {
            watch_detach(pool, sessions.len(), sockets_before, t0, args.probe_for, hists.clone()).await
        } else {
            Ok(None)
        }
    };
    let (freed, detached) = tokio::join!(probe, detach);
    let (freed, free_max) = freed?;
    let detached = detached?;
    if args.die == Death::Stop {
        // Let the frozen workers go: the kernel closes what is left.
        for pid in run.worker_pids() {
            let _ = tokio::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status()
                .await;
        }
    }
    run.send(Down::Phase { phase: Phase::Stop });
    run.send(Down::Next);
    // Signalled workers never report back: their last progress counts.
    let mut latency = run.finish(Duration::from_secs(if by_signal { 2 } else { 30 })).await;
    latency.extend(
        merge_hists(&[hists.export()])
            .iter()
            .map(|(k, h)| (k.clone(), Summary::of(h))),
    );
    let m = &mut result.metrics;
    m.insert("sessions".into(), sessions.len() as f64);
    m.insert("freed".into(), freed as f64);
    m.insert("all_free_s".into(), free_max.as_secs_f64());
    if let Some(expect) = args.expect {
        m.insert("expected_s".into(), expect.as_secs_f64());
        m.insert("over_expected_s".into(), free_max.as_secs_f64() - expect.as_secs_f64());
    }
    if let Some(d) = detached {
        m.insert("all_detached_s".into(), d.as_secs_f64());
    }
    let c = run.totals();
    finish_result(result, run, latency, c);
    if freed < sessions.len() as u64 {
        result.errors.push(format!(
            "{} pools were still full after {:?}",
            sessions.len() as u64 - freed,
            args.probe_for
        ));
    }
    Ok(())
}

/// The server's socket count from `GET /health` (drisc only).
async fn health_sockets(pool: &HttpPool) -> Option<u64> {
    let none = HeaderValue::from_static("none");
    let (status, body) = pool
        .send(Method::GET, "/health", &none, bytes::Bytes::new())
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok().filter(|_| status.is_success())?;
    v.get("sockets")?.as_u64()
}

/// Probes every dead player's pool with a create until it is granted; returns
/// how many were freed and when the last one was.
async fn probe_pools(
    plan: &Plan,
    pool: &Arc<HttpPool>,
    sessions: &[(String, String)],
    t0: Instant,
    limit: Duration,
    hists: Arc<Hists>,
) -> Result<(u64, Duration)> {
    let publisher = plan.common.publisher.clone().unwrap_or_default();
    let minter = Minter::new(&plan.common.secret, &publisher, Duration::from_secs(3600));
    let mut waiting: Vec<HeaderValue> = sessions
        .iter()
        .map(|(_, customer)| minter.bearer(customer))
        .collect::<Result<_>>()?;
    let body = create_body(&plan.common.offer, "drisc-load probe");
    let counters = Counters::default();
    let mut freed = 0;
    let mut last = Duration::ZERO;
    let deadline = t0 + limit;
    // A round at most every 200 ms: finer than the 1 s the targets allow, and
    // light enough not to slow the server that is reaping.
    while !waiting.is_empty() && Instant::now() < deadline {
        let round = Instant::now();
        let mut still = Vec::new();
        for chunk in waiting.chunks(64) {
            let mut set = JoinSet::new();
            for token in chunk.iter().cloned() {
                let (pool, body) = (pool.clone(), body.clone());
                set.spawn(async move {
                    let answer = pool.send(Method::POST, "/sessions", &token, body).await;
                    (token, answer)
                });
            }
            while let Some(Ok((token, answer))) = set.join_next().await {
                match answer.map(|(s, b)| read_created(s, &b, &counters)) {
                    Ok(Ok(Created::Granted { .. })) => {
                        let at = t0.elapsed();
                        hists.record("slot_free", at);
                        freed += 1;
                        last = last.max(at);
                    }
                    _ => still.push(token),
                }
            }
        }
        waiting = still;
        let pause = Duration::from_millis(200).saturating_sub(round.elapsed());
        sleep(pause).await;
    }
    Ok((freed, last))
}

/// Watches the server's own socket count (`GET /health`, every 20 ms) until the
/// sockets of the dead players are all gone: each is unregistered just before its
/// session is detached. Cheap enough not to slow the server it measures (polling
/// every session through the admin API would: finding a session by id scans the pools).
async fn watch_detach(
    pool: &Arc<HttpPool>,
    dead: usize,
    before: Option<u64>,
    t0: Instant,
    limit: Duration,
    hists: Arc<Hists>,
) -> Result<Option<Duration>> {
    let Some(before) = before else {
        return Ok(None);
    };
    let goal = before.saturating_sub(dead as u64);
    let none = HeaderValue::from_static("none");
    let mut conn = pool.open().await?;
    let mut half = false;
    while t0.elapsed() < limit {
        let (status, body) = conn
            .send(Method::GET, "/health", pool.host(), &none, bytes::Bytes::new())
            .await?;
        if !status.is_success() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let sockets = v.get("sockets").and_then(|x| x.as_u64()).unwrap_or(u64::MAX);
        if !half && sockets <= before - (before - goal) / 2 {
            half = true;
            hists.record("half_detached", t0.elapsed());
        }
        if sockets <= goal {
            let at = t0.elapsed();
            hists.record("all_detached", at);
            return Ok(Some(at));
        }
        sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}

fn print_summary(r: &RunResult) {
    println!();
    println!(
        "== {} ({}) against {} in {:.1}s",
        r.scenario, r.label, r.target, r.elapsed_s
    );
    let c = &r.counters;
    println!(
        "requests {:>9}  granted {:>9}  409 {:>8}  disabled {:>5}  http-err {:>5}  net-err {:>5}",
        c.get(C::Sent),
        c.get(C::Granted),
        c.get(C::Limit),
        c.get(C::Disabled),
        c.get(C::HttpError),
        c.get(C::NetError)
    );
    println!(
        "sockets  {:>9}  OK      {:>9}  PING {:>7}  PONG {:>9}  FINISHED {:>7}  takeover {:>5}  taken-over {:>5}  reconnect {:>5}  expired {:>5}",
        c.get(C::WsOpen),
        c.get(C::Ok),
        c.get(C::Ping),
        c.get(C::Pong),
        c.get(C::Finished),
        c.get(C::Takeover),
        c.get(C::TakenOver),
        c.get(C::Reconnect),
        c.get(C::Expired)
    );
    if !r.latency.is_empty() {
        println!(
            "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p99", "p99.9", "max", "mean"
        );
        for (name, s) in &r.latency {
            println!(
                "{:<14} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name, s.count, s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms, s.mean_ms
            );
        }
    }
    if !r.stages.is_empty() {
        println!(
            "{:>9} {:>7} {:>10} {:>7} {:>9} {:>9} {:>12}",
            "sessions", "failed", "rss MB", "fds", "PONGs", "cpu s", "PONG/core-s"
        );
        for s in &r.stages {
            println!(
                "{:>9} {:>7} {:>10.1} {:>7} {:>9} {:>9.2} {:>12.0}",
                s.sessions,
                s.failed,
                s.rss_kb as f64 / 1024.0,
                s.fds,
                s.pongs,
                s.cpu_s,
                if s.cpu_s > 0.0 { s.pongs as f64 / s.cpu_s } else { 0.0 }
            );
        }
    }
    for check in &r.checks {
        println!(
            "{} {}: expected {}, got {}",
            if check.ok { "PASS" } else { "FAIL" },
            check.name,
            check.expected,
            check.got
        );
    }
    for (k, v) in &r.metrics {
        println!("{k:<34} {v:>14.3}");
    }
    for e in &r.errors {
        println!("error: {e}");
    }
}
