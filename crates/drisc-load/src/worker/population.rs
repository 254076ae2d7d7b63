//! hold, churn and reap's players: sessions joined one by one and held,
//! answering PINGs, until they leave in one of the ways players do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderValue;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use super::Ctx;
use crate::plan::ChurnArgs;
use crate::players::{self, Action, Created, Held, Ws, create_body, read_created};
use crate::protocol::{Phase, Up};
use crate::stats::C;

/// A session made live: its socket, cached endpoint and id.
struct Joined {
    ws: Ws,
    endpoint: String,
    session_id: String,
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
    let mut ws = players::connect(env, &endpoint).await?;
    match players::request(env, &mut ws).await? {
        Action::Ok => Ok(Joined {
            ws,
            endpoint,
            session_id,
        }),
        other => bail!("REQUESTED answered {other:?}"),
    }
}

/// Holds sessions stage after stage (each player its own customer), then leaves.
/// With `report_sessions` the stage report names the sessions (for `reap`).
pub(super) async fn hold(ctx: &Arc<Ctx>, stages: &[usize], report_sessions: bool) -> Result<()> {
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
                match players::hold(env, &mut j.ws, far, &mut phase).await {
                    Held::Phase(Phase::Leave) => {
                        let _ = players::finish(env, &mut j.ws).await;
                    }
                    Held::Phase(Phase::Silent) => {
                        // Frozen: the socket stays open, unread, until the run ends.
                        env.counters.dec(C::Live);
                        players::wait_phase(&mut phase, Phase::Silent).await;
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
pub(super) async fn churn(ctx: &Arc<Ctx>, args: &ChurnArgs) -> Result<()> {
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
        let mut outcome = players::hold(env, &mut j.ws, if blip { blip_at.min(until) } else { until }, phase).await;
        if blip && outcome == Held::Deadline && Instant::now() < until {
            // A network blip: the socket drops, the player reconnects with its cached endpoint.
            drop(j.ws);
            match reopen(ctx, &j.endpoint).await {
                Ok(ws) => {
                    env.counters.inc(C::Reconnect);
                    j.ws = ws;
                    outcome = players::hold(env, &mut j.ws, until, phase).await;
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
                } else if r < args.abandon + args.silent {
                    // Dead without a word: the socket stays open, unread, so the server
                    // only learns of it by the missing PONGs. The seat's next player
                    // comes once the server must have expired it.
                    env.counters.inc(C::Silent);
                    let gone = Instant::now() + args.silent_for;
                    tokio::select! {
                        () = tokio::time::sleep_until(gone.min(end)) => {}
                        _ = players::wait_phase(phase, Phase::Hold) => {}
                    }
                    drop(j);
                } else if r < args.abandon + args.silent + args.takeover {
                    // The next player arrives while this one still plays.
                    match join(ctx, &token, "drisc-load takeover", true).await {
                        Ok(next) => {
                            let _ = players::hold(env, &mut j.ws, Instant::now() + Duration::from_secs(5), phase).await;
                            current = Some(next);
                        }
                        Err(_) => {
                            let _ = players::finish(env, &mut j.ws).await;
                        }
                    }
                } else {
                    let _ = players::finish(env, &mut j.ws).await;
                }
            }
            Held::Deadline | Held::Phase(Phase::Leave) => {
                let _ = players::finish(env, &mut j.ws).await;
            }
            _ => {}
        }
    }
    if let Some(mut j) = current {
        let _ = players::finish(env, &mut j.ws).await;
    }
    Ok(())
}

/// Reconnects to a cached endpoint: OK if the session is still held.
async fn reopen(ctx: &Ctx, endpoint: &str) -> Result<Ws> {
    let mut ws = players::open(&ctx.env, endpoint).await?;
    match players::request(&ctx.env, &mut ws).await.context("reconnect")? {
        Action::Ok => Ok(ws),
        other => bail!("reconnect answered {other:?}"),
    }
}
