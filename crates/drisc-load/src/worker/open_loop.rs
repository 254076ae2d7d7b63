//! admit and attach: lanes of keep-alive connections sending on an open-loop
//! schedule (request g is due at start + g/rate) or as fast as answers come.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use hyper::Method;
use hyper::header::HeaderValue;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use super::Ctx;
use crate::plan::{AdmitArgs, AttachArgs};
use crate::players::{self, Action, Created, HttpConn, create_body, read_created};
use crate::protocol::Up;
use crate::stats::C;

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
pub(super) async fn admit(ctx: &Arc<Ctx>, args: &AdmitArgs) -> Result<()> {
    let tokens = mint_all(ctx, if args.hot { 1 } else { args.customers })?;
    let body = create_body(&ctx.plan.common.offer, "drisc-load");
    let (conns, start) = start_open_loop(ctx, args.connections).await?;
    let end = start + args.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for mut conn in conns {
        let (ctx, tokens, body, next) = (ctx.clone(), tokens.clone(), body.clone(), next.clone());
        let (rate, most) = (args.rate, args.creates.unwrap_or(u64::MAX));
        set.spawn(async move {
            let env = &ctx.env;
            loop {
                let g = ctx.global(next.fetch_add(1, Ordering::Relaxed) as usize);
                let at = due(start, rate, g);
                if at >= end || g as u64 >= most {
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

/// Create → WebSocket → OK, timed from when the attach was due; then FINISHED.
pub(super) async fn attach(ctx: &Arc<Ctx>, args: &AttachArgs) -> Result<()> {
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
                let Ok(mut ws) = players::open(env, &endpoint).await else {
                    continue;
                };
                let asked = Instant::now();
                if let Ok(Action::Ok) = players::request(env, &mut ws).await {
                    env.hists.record("attach", at.elapsed());
                    env.hists.record("requested_ok", asked.elapsed());
                    let _ = players::finish(env, &mut ws).await;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    Ok(())
}
