//! hold, seen from the coordinator: memory, CPU and PONGs per stage.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::Instant;

use super::{cpu_between, finish_result, slope};
use crate::coordinator::Run;
use crate::plan::{HoldArgs, Plan};
use crate::players::HttpPool;
use crate::protocol::{Down, Up};
use crate::report::{RunResult, Stage};
use crate::stats::C;

/// Stage after stage: ramp, settle, measure memory, count CPU and PONGs over the
/// hold window; then everyone leaves and memory is measured once more.
pub(super) async fn run(plan: &Plan, pool: &Arc<HttpPool>, args: &HoldArgs, result: &mut RunResult) -> Result<()> {
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
