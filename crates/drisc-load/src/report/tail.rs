//! The latency tail's chart (`drisc-load tail-chart`): from bench/tail's results,
//! p99 and p99.9 of admission against the offered rate, one line per server
//! (the build before, this one, the bare-axum baseline), with issue 11's targets
//! drawn as guides.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::charts::{self, Chart, Panel, Series};
use super::load;
use crate::stats::Summary;

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// The directory bench/tail wrote `tail-<server>-<rate>.json` into.
    #[arg(long)]
    pub results: PathBuf,
    /// Where to write the chart (SVG).
    #[arg(long, default_value = "bench/charts/tail.svg")]
    pub chart: PathBuf,
    /// The p99 target, in ms, drawn as a guide.
    #[arg(long, default_value_t = 2.0)]
    pub p99_target: f64,
    /// The p99.9 target, in ms, drawn as a guide.
    #[arg(long, default_value_t = 5.0)]
    pub p999_target: f64,
}

/// The name each server's series gets, in the order they are drawn.
const SIDES: [(&str, &str); 3] = [
    ("before", "before"),
    ("drisc", "drisc"),
    ("baseline", "baseline (bare axum)"),
];

pub fn run(args: &TailArgs) -> Result<()> {
    // server -> offered rate -> admission latency
    let mut runs: BTreeMap<String, Vec<(f64, Summary)>> = BTreeMap::new();
    let entries = std::fs::read_dir(&args.results).with_context(|| format!("cannot read {:?}", args.results))?;
    for entry in entries {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let Some((side, rate)) = stem.strip_prefix("tail-").and_then(|s| s.rsplit_once('-')) else {
            continue;
        };
        if path.extension().is_none_or(|e| e != "json") || rate == "max" || rate == "calibrate" {
            continue;
        }
        let result = load(&path)?;
        let Some(latency) = result.latency.get("admit") else {
            continue;
        };
        let offered = result.metrics.get("offered_per_s").copied().unwrap_or(0.0);
        runs.entry(side.to_owned())
            .or_default()
            .push((offered, latency.clone()));
    }
    if runs.is_empty() {
        bail!("no tail-<server>-<rate>.json in {:?}", args.results);
    }
    std::fs::create_dir_all(args.chart.parent().unwrap_or(std::path::Path::new(".")))?;
    charts::write(&args.chart, &chart(&mut runs, args))?;
    eprintln!("wrote {}", args.chart.display());
    Ok(())
}

fn chart(runs: &mut BTreeMap<String, Vec<(f64, Summary)>>, args: &TailArgs) -> Chart {
    for points in runs.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let rates: Vec<f64> = runs.values().flatten().map(|(rate, _)| *rate).collect();
    let span = (
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
    );
    // Past saturation the tail is seconds long; drawn to scale it would flatten the
    // lines near the targets to the axis. Values above ten times the target are
    // drawn at that height (the table beside the chart has them all).
    let panel = |title: &str, pick: fn(&Summary) -> f64, target: f64| {
        let cap = target * 10.0;
        let mut series: Vec<Series> = SIDES
            .iter()
            .filter_map(|(side, name)| {
                let points = runs
                    .get(*side)?
                    .iter()
                    .map(|(rate, l)| (*rate, pick(l).min(cap)))
                    .collect();
                Some(Series::line(*name, points))
            })
            .collect();
        series.push(Series::guide(
            format!("target {target} ms"),
            vec![(span.0, target), (span.1, target)],
        ));
        Panel {
            title: format!("{title} (drawn at most {cap} ms)"),
            x_label: "offered creates/s (open loop)".into(),
            y_label: "ms".into(),
            series,
            y_from_zero: true,
            legend_lower_right: false,
        }
    };
    Chart {
        title: "Admission latency tail against offered rate, one million distinct customers".into(),
        columns: 2,
        panels: vec![
            panel("p99", |l| l.p99_ms, args.p99_target),
            panel("p99.9", |l| l.p999_ms, args.p999_target),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p99: f64, p999: f64) -> Summary {
        Summary {
            count: 1000,
            min_ms: 0.1,
            p50_ms: 0.2,
            p90_ms: 0.5,
            p99_ms: p99,
            p999_ms: p999,
            max_ms: p999 * 2.0,
            mean_ms: 0.3,
        }
    }

    #[test]
    fn each_server_gets_a_line_per_panel_and_the_targets_are_guides() {
        let mut runs = BTreeMap::new();
        runs.insert(
            "drisc".to_owned(),
            vec![(20_000.0, summary(3.0, 6.0)), (10_000.0, summary(1.0, 2.0))],
        );
        runs.insert("baseline".to_owned(), vec![(10_000.0, summary(0.5, 1.0))]);
        let args = TailArgs {
            results: PathBuf::new(),
            chart: PathBuf::new(),
            p99_target: 2.0,
            p999_target: 5.0,
        };
        let chart = chart(&mut runs, &args);
        assert_eq!(chart.panels.len(), 2);
        let p99 = &chart.panels[0];
        assert_eq!(p99.series[0].name, "drisc");
        assert_eq!(
            p99.series[0].points,
            vec![(10_000.0, 1.0), (20_000.0, 3.0)],
            "in rate order"
        );
        assert_eq!(p99.series[1].name, "baseline (bare axum)");
        assert!(p99.series[2].guide && p99.series[2].points == vec![(10_000.0, 2.0), (20_000.0, 2.0)]);
        assert_eq!(chart.panels[1].series[0].points[1], (20_000.0, 6.0));
        // Seconds past saturation are drawn at ten times the target.
        runs.insert("before".to_owned(), vec![(20_000.0, summary(1500.0, 1600.0))]);
        let chart = super::chart(&mut runs, &args);
        assert_eq!(chart.panels[0].series[0].name, "before");
        assert_eq!(chart.panels[0].series[0].points, vec![(20_000.0, 20.0)]);
        assert_eq!(chart.panels[1].series[0].points, vec![(20_000.0, 50.0)]);
        assert!(charts::render(&chart).is_ok());
    }
}
