//! Redis memory against held sessions (`drisc-load redis-memory-report`): from the
//! `memory.json` that each `bench/cluster` run leaves in its results, the bytes
//! of `used_memory` per held session at each size, and a straight line fitted
//! through the totals: what a session added costs (the slope) and what does not
//! grow with sessions (the intercept: the nodes' liveness keys, the index
//! buckets, the clients' buffers, the dictionaries' tables). Issue 11 item 4
//! asks ≤ 400 B a session; with a fixed part, that holds from some size on, and
//! the line says from which.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::charts::{self, Chart, Panel, Series};

#[derive(clap::Args, Debug)]
pub struct RedisMemoryArgs {
    /// `memory.json` files written by bench/cluster (one per run, any order).
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write the table (Markdown).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the chart (SVG).
    #[arg(long, default_value = "bench/charts/redis-memory.svg")]
    pub chart: PathBuf,
    /// The target per session, in bytes, drawn as a guide.
    #[arg(long, default_value_t = 400.0)]
    pub target: f64,
}

/// What bench/cluster measured in one run.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Run {
    /// Live sessions held when Redis was measured.
    pub sessions: u64,
    pub nodes: u64,
    /// `used_memory` above the empty Redis's (summed over the masters).
    pub used_memory: u64,
    pub keys: u64,
    /// "one Redis" or "a Redis Cluster (…)".
    pub redis: String,
    /// The checkout's commit when bench/cluster wrote its report (`git rev-parse HEAD`): the
    /// binaries may be older (`--bin DIR`).
    pub commit: String,
    /// The run's results directory.
    pub results: String,
}

impl Run {
    fn per_session(&self) -> f64 {
        self.used_memory as f64 / self.sessions.max(1) as f64
    }
}

/// A least-squares line through the runs' totals, `used = fixed + per_session × sessions`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub fixed: f64,
    pub per_session: f64,
}

impl Fit {
    /// `None` for fewer than two distinct sizes.
    pub fn of(runs: &[Run]) -> Option<Self> {
        let n = runs.len() as f64;
        let mean_x = runs.iter().map(|r| r.sessions as f64).sum::<f64>() / n;
        let mean_y = runs.iter().map(|r| r.used_memory as f64).sum::<f64>() / n;
        let sxx: f64 = runs.iter().map(|r| (r.sessions as f64 - mean_x).powi(2)).sum();
        if runs.len() < 2 || sxx == 0.0 {
            return None;
        }
        let sxy: f64 = runs
            .iter()
            .map(|r| (r.sessions as f64 - mean_x) * (r.used_memory as f64 - mean_y))
            .sum();
        let per_session = sxy / sxx;
        Some(Self {
            fixed: mean_y - per_session * mean_x,
            per_session,
        })
    }

    /// The fewest sessions from which the line's bytes per session are at most
    /// `target`: `None` if a session added costs the target or more.
    pub fn from_sessions(&self, target: f64) -> Option<f64> {
        (self.per_session < target).then(|| (self.fixed / (target - self.per_session)).max(0.0))
    }
}

pub fn run(args: &RedisMemoryArgs) -> Result<()> {
    let mut runs = Vec::with_capacity(args.runs.len());
    for path in &args.runs {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let run: Run = serde_json::from_str(&text)
            .with_context(|| format!("{} is not bench/cluster's memory.json", path.display()))?;
        if run.sessions == 0 {
            bail!("{}: no session was held", path.display());
        }
        runs.push(run);
    }
    let kinds = by_kind(runs);
    for path in [&args.out, &args.chart] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(&args.out, table(&kinds, args.target, &args.chart))?;
    charts::write(&args.chart, &chart(&kinds, args.target))?;
    eprintln!("wrote {} and {}", args.out.display(), args.chart.display());
    Ok(())
}

/// The runs of one kind of Redis (one server, a Cluster), by size, and their line.
#[derive(Debug)]
struct Kind {
    redis: String,
    runs: Vec<Run>,
    fit: Option<Fit>,
}

/// The runs grouped by the Redis they ran on (one server and a Cluster hold the
/// same keys but not the same fixed part), each group by size.
fn by_kind(runs: Vec<Run>) -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Vec::new();
    for run in runs {
        match kinds.iter_mut().find(|k| k.redis == run.redis) {
            Some(kind) => kind.runs.push(run),
            None => kinds.push(Kind {
                redis: run.redis.clone(),
                runs: vec![run],
                fit: None,
            }),
        }
    }
    for kind in &mut kinds {
        kind.runs.sort_by_key(|r| r.sessions);
        kind.fit = Fit::of(&kind.runs);
    }
    kinds
}

fn table(kinds: &[Kind], target: f64, chart: &Path) -> String {
    let mut md = String::from(
        "| sessions held | drisc nodes | Redis | `used_memory` above empty | per session | keys per session | checkout | results |\n\
         |---:|---:|---|---:|---:|---:|---|---|\n",
    );
    for r in kinds.iter().flat_map(|k| &k.runs) {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} MiB | **{:.0} B** | {:.3} | {} | `{}` |\n",
            thousands(r.sessions),
            r.nodes,
            r.redis,
            r.used_memory as f64 / 1_048_576.0,
            r.per_session(),
            r.keys as f64 / r.sessions as f64,
            r.commit,
            r.results,
        ));
    }
    for kind in kinds {
        md.push('\n');
        let Some(fit) = kind.fit else {
            md.push_str(&format!("{}: one size only, no line fitted.\n", kind.redis));
            continue;
        };
        md.push_str(&format!(
            "{}: a straight line through the totals (least squares) gives **{:.0} B for each session added** \
             and {:.0} KiB that does not grow with sessions; ",
            kind.redis,
            fit.per_session,
            fit.fixed / 1024.0
        ));
        match fit.from_sessions(target) {
            Some(n) => md.push_str(&format!(
                "by that line a session costs at most {target:.0} B from about {} sessions on.\n",
                thousands(n.ceil() as u64)
            )),
            None => md.push_str(&format!("by that line no size brings a session to {target:.0} B.\n")),
        }
    }
    md.push_str(&format!(
        "\n![Redis memory per held session against held sessions]({})\n",
        chart.display()
    ));
    md
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn chart(kinds: &[Kind], target: f64) -> Chart {
    let all = || kinds.iter().flat_map(|k| &k.runs);
    let span = (0.0, all().map(|r| r.sessions as f64).fold(0.0, f64::max));
    let mut per_session = Vec::new();
    let mut totals = Vec::new();
    for kind in kinds {
        let name = format!("drisc, {}", kind.redis);
        per_session.push(Series::line(
            name.clone(),
            kind.runs.iter().map(|r| (r.sessions as f64, r.per_session())).collect(),
        ));
        totals.push(Series::line(
            name.clone(),
            kind.runs
                .iter()
                .map(|r| (r.sessions as f64, r.used_memory as f64 / 1_048_576.0))
                .collect(),
        ));
        let Some(fit) = kind.fit else { continue };
        // The line's bytes per session, drawn from the smallest size measured: below
        // it the fixed part alone runs off the chart.
        let from = kind.runs.first().map_or(1.0, |r| r.sessions as f64).max(1.0);
        let steps = 40;
        let points = (0..=steps)
            .map(|i| from + (span.1 - from) * f64::from(i) / f64::from(steps))
            .map(|n| (n, fit.fixed / n + fit.per_session))
            .collect();
        per_session.push(Series::guide(format!("{name}, fitted line"), points));
        totals.push(Series::guide(
            format!("{name}, fitted line"),
            vec![
                (span.0, fit.fixed / 1_048_576.0),
                (span.1, (fit.fixed + fit.per_session * span.1) / 1_048_576.0),
            ],
        ));
    }
    per_session.push(Series::guide(
        format!("target {target:.0} B"),
        vec![(span.0, target), (span.1, target)],
    ));
    Chart {
        title: "Redis memory against held sessions (cluster mode)".into(),
        columns: 2,
        panels: vec![
            Panel {
                title: "used_memory per held session".into(),
                x_label: "sessions held".into(),
                y_label: "bytes".into(),
                series: per_session,
                y_from_zero: true,
                legend_lower_right: true,
            },
            Panel {
                title: "used_memory above an empty Redis".into(),
                x_label: "sessions held".into(),
                y_label: "MiB".into(),
                series: totals,
                y_from_zero: true,
                legend_lower_right: true,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sessions: u64, used_memory: u64) -> Run {
        on("one Redis", sessions, used_memory)
    }

    fn on(redis: &str, sessions: u64, used_memory: u64) -> Run {
        Run {
            sessions,
            nodes: 3,
            used_memory,
            keys: sessions,
            redis: redis.into(),
            commit: "abc1234".into(),
            results: "target/bench/x".into(),
        }
    }

    #[test]
    fn the_line_gives_the_cost_of_a_session_added_and_the_fixed_part() {
        // 600 KB fixed and 345 B a session, exactly.
        let runs = [run(6_000, 600_000 + 345 * 6_000), run(30_000, 600_000 + 345 * 30_000)];
        let fit = Fit::of(&runs).unwrap();
        assert!((fit.per_session - 345.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.fixed - 600_000.0).abs() < 1e-3, "{fit:?}");
        // 600,000 / (400 - 345) = 10,909.09…
        let from = fit.from_sessions(400.0).unwrap();
        assert!((from - 10_909.09).abs() < 0.01, "{from}");
        assert_eq!(fit.from_sessions(300.0), None, "a session added costs more than 300 B");
        assert_eq!(Fit::of(&runs[..1]), None);
        assert_eq!(
            Fit::of(&[run(6_000, 1), run(6_000, 2)]),
            None,
            "one size twice fits no line"
        );
    }

    #[test]
    fn the_table_and_the_chart_hold_every_run_with_a_line_per_kind_of_redis() {
        let kinds = by_kind(vec![
            run(100_000, 36_400_000),
            on("a Redis Cluster", 100_000, 36_700_000),
            run(6_000, 2_718_000),
        ]);
        assert_eq!(kinds.len(), 2);
        assert_eq!(kinds[0].runs[0].sessions, 6_000, "by size");
        assert!(kinds[0].fit.is_some() && kinds[1].fit.is_none());
        let md = table(&kinds, 400.0, Path::new("charts/redis-memory.svg"));
        assert!(md.contains("| 6,000 | 3 | one Redis | 2.59 MiB | **453 B** |"), "{md}");
        assert!(md.contains("| 100,000 | 3 | a Redis Cluster |"), "{md}");
        assert!(md.contains("one Redis: a straight line"), "{md}");
        assert!(md.contains("a Redis Cluster: one size only"), "{md}");
        assert!(md.contains("![Redis memory per held session against held sessions](charts/redis-memory.svg)"));
        let chart = chart(&kinds, 400.0);
        let per_session = &chart.panels[0].series;
        assert_eq!(per_session[0].name, "drisc, one Redis");
        assert_eq!(per_session[0].points, vec![(6_000.0, 453.0), (100_000.0, 364.0)]);
        assert!(per_session[1].guide, "the fitted line");
        assert_eq!(per_session[2].points, vec![(100_000.0, 367.0)]);
        assert!(per_session.iter().any(|s| s.guide && s.name == "target 400 B"));
        assert!(charts::render(&chart).is_ok());
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(6_000), "6,000");
        assert_eq!(thousands(100_002), "100,002");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
