//! The latency tail's chart (`drisc-load tail-chart`): from bench/tail's results,
//! p99 and p99.9 of admission against the offered rate, one line per server
//! (the build before, this one, the bare-axum baseline), with issue 11's targets
//! drawn as guides. With several rounds per rate, each point is the median of the
//! rounds (each percentile apart): one round's noise on this shared machine moves a
//! p99 by milliseconds, the median of a few does not follow a single stall.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::charts::{self, Chart, Panel, Series};
use super::load;
use crate::stats::Summary;

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// The directory bench/tail wrote `tail-<server>-<rate>.json` (one round) or
    /// `tail-<server>-<rate>-r<round>.json` (several) into.
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

/// `tail-<server>-<rate>[-r<round>]` (a file's stem): the server and the rate, or
/// `None` for the other files (the calibration, the closed loop's maximum).
fn side_and_rate(stem: &str) -> Option<(&str, &str)> {
    let run = stem.strip_prefix("tail-")?;
    let run = match run.rsplit_once("-r") {
        Some((head, round)) if !round.is_empty() && round.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => run,
    };
    let (side, rate) = run.rsplit_once('-')?;
    (!rate.is_empty() && rate.bytes().all(|b| b.is_ascii_digit())).then_some((side, rate))
}

/// The median of `values` (the lower middle one of an even count, so a point is a
/// value some round measured); `values` is not empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

/// One point per server and rate: the median offered rate and, percentile by
/// percentile, the median of the rounds' latencies.
fn medians(rounds: Vec<(f64, Summary)>) -> (f64, Summary) {
    let pick = |f: fn(&Summary) -> f64| median(rounds.iter().map(|(_, s)| f(s)).collect());
    let summary = Summary {
        count: rounds.iter().map(|(_, s)| s.count).sum(),
        min_ms: pick(|s| s.min_ms),
        p50_ms: pick(|s| s.p50_ms),
        p90_ms: pick(|s| s.p90_ms),
        p99_ms: pick(|s| s.p99_ms),
        p999_ms: pick(|s| s.p999_ms),
        max_ms: pick(|s| s.max_ms),
        mean_ms: pick(|s| s.mean_ms),
    };
    (median(rounds.iter().map(|(rate, _)| *rate).collect()), summary)
}

pub fn run(args: &TailArgs) -> Result<()> {
    // (server, rate) -> each round's offered rate and admission latency
    let mut rounds: BTreeMap<(String, String), Vec<(f64, Summary)>> = BTreeMap::new();
    let entries = std::fs::read_dir(&args.results).with_context(|| format!("cannot read {:?}", args.results))?;
    for entry in entries {
        let path = entry?.path();
        let Some((side, rate)) = path.file_stem().and_then(|s| s.to_str()).and_then(side_and_rate) else {
            continue;
        };
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let result = load(&path)?;
        let Some(latency) = result.latency.get("admit") else {
            continue;
        };
        let offered = result.metrics.get("offered_per_s").copied().unwrap_or(0.0);
        rounds
            .entry((side.to_owned(), rate.to_owned()))
            .or_default()
            .push((offered, latency.clone()));
    }
    if rounds.is_empty() {
        bail!("no tail-<server>-<rate>.json in {:?}", args.results);
    }
    // server -> offered rate -> admission latency
    let mut runs: BTreeMap<String, Vec<(f64, Summary)>> = BTreeMap::new();
    for ((side, _), of_rate) in rounds {
        runs.entry(side).or_default().push(medians(of_rate));
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

    #[test]
    fn a_file_name_gives_its_server_and_rate_with_or_without_a_round() {
        assert_eq!(side_and_rate("tail-drisc-8100"), Some(("drisc", "8100")));
        assert_eq!(side_and_rate("tail-baseline-8100-r3"), Some(("baseline", "8100")));
        assert_eq!(side_and_rate("tail-before-12-r10"), Some(("before", "12")));
        assert_eq!(side_and_rate("tail-drisc-max"), None);
        assert_eq!(side_and_rate("tail-drisc-calibrate"), None);
        assert_eq!(side_and_rate("tail-drisc-8100-r"), None);
        assert_eq!(side_and_rate("capacity"), None);
    }

    #[test]
    fn several_rounds_make_one_point_of_medians_percentile_by_percentile() {
        let (rate, point) = medians(vec![
            (8_000.0, summary(1.0, 9.0)),
            (8_100.0, summary(8.0, 3.0)),
            (7_900.0, summary(1.5, 4.0)),
        ]);
        assert_eq!(rate, 8_000.0);
        assert_eq!(
            (point.p99_ms, point.p999_ms),
            (1.5, 4.0),
            "each percentile's own median"
        );
        assert_eq!(point.count, 3_000);
        // An even count takes the lower middle: a value one round measured.
        let (_, point) = medians(vec![(1.0, summary(4.0, 8.0)), (1.0, summary(2.0, 6.0))]);
        assert_eq!(point.p99_ms, 2.0);
    }
}
