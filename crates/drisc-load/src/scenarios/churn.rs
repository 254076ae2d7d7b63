//! churn, seen from the coordinator: the steady part of a population joining and leaving.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::{finish_result, slope};
use crate::coordinator::Run;
use crate::plan::{ChurnArgs, Plan};
use crate::players::HttpPool;
use crate::protocol::Down;
use crate::report::RunResult;
use crate::server::ProcSample;
use crate::stats::C;

pub(super) async fn run(plan: &Plan, pool: &Arc<HttpPool>, args: &ChurnArgs, result: &mut RunResult) -> Result<()> {
    let mut run = Run::start(plan, &plan.common.label, Some(pool.clone())).await?;
    run.stage(0, Duration::from_secs(60)).await?;
    let t0 = run.elapsed();
    run.send(Down::Next);
    let latency = run.finish(args.duration + Duration::from_secs(120)).await;
    // The steady part: after the ramp-up (two lifetimes unless --warmup says), until
    // the end of the duration.
    let warmup = args.warmup.unwrap_or(args.lifetime * 2);
    let steady_from = t0 + warmup.as_secs_f64();
    let steady_to = t0 + args.duration.as_secs_f64() - 1.0;
    result.metrics.insert("churn_from_s".into(), t0);
    result.metrics.insert("steady_from_s".into(), steady_from);
    result.metrics.insert("steady_to_s".into(), steady_to);
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
