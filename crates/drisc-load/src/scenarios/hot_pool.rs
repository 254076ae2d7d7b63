//! hot-pool: thousands of parallel creates on one pool; exactly its limit may be granted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use hyper::Method;
use hyper::header::HeaderValue;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::plan::{HotPoolArgs, Plan};
use crate::players::{Admin, Created, HttpConn, HttpPool, Minter, create_body, read_created};
use crate::report::{Check, RunResult};
use crate::stats::{C, Counters, Hists, summarize};
use crate::target::{Pacer, Sources, Target, Tls};

/// Rounds of `parallel` creates fired at once at a fresh pool of limit L.
pub(super) async fn run(
    plan: &Plan,
    pool: &Arc<HttpPool>,
    sources: &Arc<Sources>,
    tls: &Tls,
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
    let target = Target::resolve(&plan.common.target).await?;
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
            conns.push(HttpConn::open(sources, &target, tls).await?);
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
    result.latency = summarize(&[hists.export()]);
    result.metrics.insert(
        "violations".into(),
        result.checks.iter().filter(|c| !c.ok).count() as f64,
    );
    Ok(())
}
