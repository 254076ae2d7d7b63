//! admit and attach, seen from the coordinator.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use super::{cpu_between, finish_result};
use crate::coordinator::Run;
use crate::plan::{Plan, Scenario};
use crate::players::HttpPool;
use crate::protocol::Down;
use crate::report::RunResult;
use crate::stats::C;

/// admit and attach: one start signal, then lanes until the duration is over.
pub(super) async fn run(plan: &Plan, pool: &Arc<HttpPool>, result: &mut RunResult) -> Result<()> {
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
