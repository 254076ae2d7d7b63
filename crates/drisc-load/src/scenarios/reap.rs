//! reap: players die together; how long until every pool takes a new create.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use hyper::Method;
use hyper::header::HeaderValue;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use super::finish_result;
use crate::coordinator::Run;
use crate::plan::{Death, Plan, ReapArgs};
use crate::players::{Created, HttpPool, Minter, create_body, read_created};
use crate::protocol::{Down, Phase, Up};
use crate::report::RunResult;
use crate::server::health_sockets;
use crate::stats::{Counters, Hists, summarize};

/// Players die together; then every pool is probed with a new create until one
/// succeeds, and (for loud deaths) the sessions are watched until detached.
pub(super) async fn run(plan: &Plan, pool: &Arc<HttpPool>, args: &ReapArgs, result: &mut RunResult) -> Result<()> {
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
    latency.extend(summarize(&[hists.export()]));
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
