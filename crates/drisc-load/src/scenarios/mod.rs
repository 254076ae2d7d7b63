//! The coordinator's side of each scenario: set the server up, start the workers,
//! drive their stages, measure the server, and write the results. The players'
//! side of each is in [`crate::worker`].

mod churn;
mod hold;
mod hot_pool;
mod lanes;
mod reap;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use hyper::header::HeaderValue;
use tokio::time::Instant;

use crate::coordinator::Run;
use crate::plan::{Plan, Scenario, SourceBase};
use crate::players::{Admin, HttpPool};
use crate::report::{RunResult, print_summary};
use crate::server::ProcSample;
use crate::stats::{Snapshot, Summary};
use crate::target::{Sources, Target, Tls};

pub async fn run(mut plan: Plan) -> Result<()> {
    let target = Target::resolve(&plan.common.target).await?;
    let tls = Tls::new(plan.common.ca_file.as_deref(), plan.common.insecure_skip_verify)?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    plan.common.run_id = format!("load-{run_id}");
    if plan.common.publisher.is_none() {
        plan.common.publisher = Some(format!("load-{run_id}"));
    }
    if !target.is_loopback() {
        // 127.x.y.z reaches only this machine: elsewhere the kernel picks.
        plan.common.source_base = Some(SourceBase::Kernel);
        eprintln!(
            "drisc-load: warning: {} ({}) is not on this machine: this is real load on a real server",
            plan.common.target, target.addr
        );
    } else if plan.common.source_base.is_none() {
        // A fresh 127.A.B.* per run: the TIME_WAIT sockets of the last run are elsewhere.
        plan.common.source_base = Some(SourceBase::Range(rand::random_range(16..=250), rand::random()));
    }
    let workers = plan.common.workers;
    let sources = Arc::new(match plan.common.source_range() {
        Some((a, b)) => Sources::range(a, b.wrapping_add(workers as u8)),
        None => Sources::kernel(),
    });
    let pool = Arc::new(HttpPool::new(sources.clone(), target.clone(), tls.clone())?);
    if target.dest.is_secure() {
        // A certificate the generator does not trust fails here, once and clearly,
        // rather than as a failed connection in every player.
        pool.open()
            .await
            .with_context(|| format!("--target {}", plan.common.target))?;
    }
    let started = Instant::now();
    let source_addresses = if plan.common.source_range().is_some() {
        format!("{} (coordinator); workers: the next 127.A.B+i.*", sources.describe())
    } else {
        sources.describe()
    };
    let mut result = RunResult {
        scenario: plan.scenario.name().into(),
        label: plan.common.label.clone(),
        target: plan.common.target.clone(),
        params: serde_json::to_value(&plan.scenario)?,
        workers,
        source_addresses,
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
        Scenario::Admit(_) | Scenario::Attach(_) => lanes::run(&plan, &pool, &mut result).await?,
        Scenario::Hold(args) => hold::run(&plan, &pool, &args, &mut result).await?,
        Scenario::Churn(args) => churn::run(&plan, &pool, &args, &mut result).await?,
        Scenario::HotPool(args) => hot_pool::run(&plan, &pool, &sources, &tls, &args, &mut result).await?,
        Scenario::Reap(args) => reap::run(&plan, &pool, &args, &mut result).await?,
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

pub(crate) fn cpu_between(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some(b?.cpu_s - a?.cpu_s)
}

pub(crate) fn finish_result(result: &mut RunResult, run: Run, latency: BTreeMap<String, Summary>, c: Snapshot) {
    result.latency.extend(latency);
    result.counters = c;
    result.server_samples = run.samples;
    result.errors.extend(run.errors);
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
