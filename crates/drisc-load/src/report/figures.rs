//! What BENCHMARKS.md shows besides its tables: the charts (admission latency
//! against offered rate, RSS against held sessions: drisc beside the baseline,
//! and the build before beside this one when `bench/run --before REV` measured
//! both), and the headline figures before | after | baseline in one table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::Results;
use super::charts::{self, Chart, Panel, Series};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Latency,
    Memory,
}

/// A chart written to disk, to be linked from its section.
pub struct Drawn {
    figure: Figure,
    link: PathBuf,
    alt: &'static str,
}

/// Who was measured: the series name and the results' name prefix.
fn sides(r: &Results, facts: &BTreeMap<String, String>) -> Vec<(String, &'static str)> {
    let before = facts.get("before").filter(|b| !b.is_empty());
    let has_before = r.0.keys().any(|k| k.starts_with("before-"));
    let mut out = Vec::new();
    if has_before {
        let commit = facts
            .get("commit")
            .map_or("", |c| c.split_whitespace().next().unwrap_or(""));
        out.push((format!("after {commit}").trim_end().to_owned(), ""));
        out.push((
            format!("before {}", before.map_or("", String::as_str))
                .trim_end()
                .to_owned(),
            "before-",
        ));
    } else {
        out.push(("drisc".to_owned(), ""));
    }
    out.push(("baseline (bare axum)".to_owned(), "baseline-"));
    out
}

/// Draws the charts into `dir`; returns what to embed where.
pub fn write_charts(r: &Results, facts: &BTreeMap<String, String>, dir: &Path) -> Result<Vec<Drawn>> {
    let sides = sides(r, facts);
    let mut drawn = Vec::new();

    let latency = |pick: fn(&crate::stats::Summary) -> f64, title: &str| {
        let series = sides
            .iter()
            .map(|(name, prefix)| {
                let points = r
                    .series(&format!("{prefix}admit-rate-"))
                    .into_iter()
                    .filter(|n| !n.contains("hot"))
                    .filter_map(|n| {
                        let offered = r.metric(n, "offered_per_s")?;
                        Some((offered, pick(r.get(n)?.latency.get("admit")?)))
                    })
                    .collect();
                Series::line(name.clone(), points)
            })
            .collect();
        Panel {
            title: title.into(),
            x_label: "offered creates/s (open loop)".into(),
            y_label: "ms".into(),
            series,
            y_from_zero: true,
            // Latency climbs with the rate: the lower right corner stays free.
            legend_lower_right: true,
        }
    };
    let chart = Chart {
        title: "Admission latency against offered rate (POST /sessions, 100k customers)".into(),
        columns: 3,
        panels: vec![
            latency(|l| l.p50_ms, "p50"),
            latency(|l| l.p99_ms, "p99"),
            latency(|l| l.p999_ms, "p99.9"),
        ],
    };
    let path = dir.join("admission-latency.svg");
    charts::write(&path, &chart)?;
    drawn.push(Drawn {
        figure: Figure::Latency,
        link: path,
        alt: "Admission latency p50, p99 and p99.9 against offered rate",
    });

    let series = sides
        .iter()
        .filter_map(|(name, prefix)| {
            let res = r.get(&format!("{prefix}hold"))?;
            let start = res.metrics.get("rss_kb_before").map(|kb| (0.0, kb / 1024.0));
            let points = start
                .into_iter()
                .chain(res.stages.iter().map(|s| (s.sessions as f64, s.rss_kb as f64 / 1024.0)))
                .collect();
            Some(Series::line(name.clone(), points))
        })
        .collect();
    let chart = Chart {
        title: "Server memory against held sessions".into(),
        columns: 1,
        panels: vec![Panel {
            title: "RSS (VmRSS) after each stage settles; every session answers PINGs".into(),
            x_label: "live sessions held".into(),
            y_label: "MB".into(),
            series,
            y_from_zero: true,
            legend_lower_right: false,
        }],
    };
    let path = dir.join("memory-held.svg");
    charts::write(&path, &chart)?;
    drawn.push(Drawn {
        figure: Figure::Memory,
        link: path,
        alt: "Server RSS against held sessions",
    });
    Ok(drawn)
}

/// Links the charts drawn for `figure`.
pub fn embed(drawn: &[Drawn], figure: Figure, md: &mut String) {
    for d in drawn.iter().filter(|d| d.figure == figure) {
        let _ = writeln!(md, "![{}]({})\n", d.alt, d.link.display());
    }
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| {
        let s = format!("{v:.digits$}");
        // Thousands separators for the large counts; the ms figures keep their decimals.
        if digits == 0 && v.abs() >= 1_000.0 {
            let (neg, body) = s.strip_prefix('-').map_or((false, s.as_str()), |b| (true, b));
            let grouped: Vec<String> = body
                .as_bytes()
                .rchunks(3)
                .rev()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            format!("{}{}", if neg { "-" } else { "" }, grouped.join(","))
        } else {
            s
        }
    })
}

fn times(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// The headline figures of both builds and the baseline, when `--before` ran.
pub fn before_after(r: &Results, facts: &BTreeMap<String, String>, md: &mut String) {
    if !r.0.keys().any(|k| k.starts_with("before-")) {
        return;
    }
    let before = facts.get("before").cloned().unwrap_or_else(|| "?".into());
    let after = facts.get("commit").cloned().unwrap_or_else(|| "?".into());
    let _ = writeln!(
        md,
        "### Before and after, in this run\n\n\
         drisc at `{before}` (before) and at `{after}` (after), measured by the same generator in the same run, \
         interleaved step by step (`bench/run --before {before}`). Lower is better for latency and memory; \
         a ratio above 1 is more of the figure.\n\n\
         | figure | before `{before}` | after | baseline | after / before | after / baseline |\n|---|---|---|---|---|---|"
    );
    let row = |md: &mut String, figure: &str, names: [&str; 3], key: &dyn Fn(&str) -> Option<f64>, digits: usize| {
        let [b, a, base] = names.map(key);
        let _ = writeln!(
            md,
            "| {figure} | {} | {} | {} | {} | {} |",
            cell(b, digits),
            cell(a, digits),
            cell(base, digits),
            times(a, b),
            times(a, base)
        );
    };
    let metric = |k: &'static str| move |n: &str| r.metric(n, k);
    let lat = |pick: fn(&crate::stats::Summary) -> f64| {
        move |n: &str| r.get(n).and_then(|res| res.latency.get("admit")).map(pick)
    };
    row(
        md,
        "admissions answered per server core-second, 100k customers",
        ["before-admit-max-distinct", "admit-max-distinct", "baseline-admit-max"],
        &metric("answered_per_core_s"),
        0,
    );
    row(
        md,
        "admissions answered per server core-second, one hot pool",
        ["before-admit-max-hot", "admit-max-hot", "baseline-admit-max"],
        &metric("answered_per_core_s"),
        0,
    );
    let half = [
        "before-admit-rate-half-distinct",
        "admit-rate-half-distinct",
        "baseline-admit-rate-half",
    ];
    row(
        md,
        "offered rate at half its own capacity (as the method defines it), /s",
        half,
        &metric("offered_per_s"),
        0,
    );
    row(md, "admission p50 at that rate, ms", half, &lat(|l| l.p50_ms), 3);
    row(md, "admission p99 at that rate, ms", half, &lat(|l| l.p99_ms), 3);
    row(md, "admission p99.9 at that rate, ms", half, &lat(|l| l.p999_ms), 3);
    for name in r.series("admit-rate-") {
        let Some(rate) = name
            .strip_prefix("admit-rate-")
            .and_then(|s| s.strip_suffix("-distinct"))
        else {
            continue;
        };
        if rate == "half" {
            continue;
        }
        let names = [
            format!("before-admit-rate-{rate}-distinct"),
            name.to_owned(),
            format!("baseline-admit-rate-{rate}"),
        ];
        let names = [names[0].as_str(), names[1].as_str(), names[2].as_str()];
        row(
            md,
            &format!("admission p99 at {rate}/s, ms"),
            names,
            &lat(|l| l.p99_ms),
            3,
        );
        row(
            md,
            &format!("admission p99.9 at {rate}/s, ms"),
            names,
            &lat(|l| l.p999_ms),
            3,
        );
    }
    let held = ["before-hold", "hold", "baseline-hold"];
    row(
        md,
        "server memory per held session, bytes (RSS slope)",
        held,
        &metric("rss_bytes_per_session"),
        0,
    );
    if let Some(n) = super::largest_common_stage(r) {
        let key = format!("pongs_per_core_s_{n}");
        row(
            md,
            &format!("PING/PONG per server core-second at {n} sessions"),
            held,
            &|name: &str| r.metric(name, &key),
            0,
        );
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{RunResult, Stage};
    use crate::stats::Summary;

    fn admit(label: &str, offered: f64, p99: f64) -> RunResult {
        let mut r = RunResult {
            label: label.into(),
            ..Default::default()
        };
        r.metrics.insert("offered_per_s".into(), offered);
        r.metrics.insert("answered_per_core_s".into(), offered * 4.0);
        r.latency.insert(
            "admit".into(),
            Summary {
                p50_ms: p99 / 4.0,
                p99_ms: p99,
                p999_ms: p99 * 2.0,
                ..Default::default()
            },
        );
        r
    }

    fn hold(label: &str, per_session_kb: u64) -> RunResult {
        let mut r = RunResult {
            label: label.into(),
            ..Default::default()
        };
        r.metrics.insert("rss_kb_before".into(), 10_000.0);
        r.stages = [1000, 5000]
            .iter()
            .map(|&n| Stage {
                sessions: n,
                rss_kb: 10_000 + n * per_session_kb,
                ..Default::default()
            })
            .collect();
        r
    }

    fn results() -> BTreeMap<String, RunResult> {
        let mut m = BTreeMap::new();
        for (name, label, rate, p99) in [
            ("admit-rate-1000-distinct", "drisc", 1000.0, 0.5),
            ("admit-rate-half-distinct", "drisc", 9000.0, 2.0),
            ("before-admit-rate-1000-distinct", "before", 1000.0, 0.9),
            ("before-admit-rate-half-distinct", "before", 7000.0, 20.0),
            ("baseline-admit-rate-1000", "baseline", 1000.0, 0.3),
            ("baseline-admit-rate-half", "baseline", 20000.0, 1.0),
        ] {
            m.insert(name.to_owned(), admit(label, rate, p99));
        }
        m.insert("hold".into(), hold("drisc", 3));
        m.insert("before-hold".into(), hold("before", 4));
        m.insert("baseline-hold".into(), hold("baseline", 2));
        m
    }

    fn facts() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("before".to_owned(), "abc1234".to_owned()),
            ("commit".to_owned(), "def5678".to_owned()),
        ])
    }

    #[test]
    fn the_charts_draw_before_after_and_the_baseline() {
        let map = results();
        let dir = tempfile::tempdir().expect("tempdir");
        let drawn = write_charts(&Results(&map), &facts(), dir.path()).expect("charts");
        assert_eq!(drawn.len(), 2);
        for d in &drawn {
            let svg = std::fs::read_to_string(&d.link).expect("written");
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            for name in ["after def5678", "before abc1234", "baseline (bare axum)"] {
                assert!(svg.contains(name), "{name} missing from {}", d.link.display());
            }
        }
        let mut md = String::new();
        embed(&drawn, Figure::Latency, &mut md);
        assert!(md.contains("admission-latency.svg)"), "{md}");
    }

    #[test]
    fn the_before_after_table_gives_ratios_side_by_side() {
        let map = results();
        let mut md = String::new();
        before_after(&Results(&map), &facts(), &mut md);
        assert!(
            md.contains("| admission p99 at that rate, ms | 20.000 | 2.000 | 1.000 | 0.10× | 2.00× |"),
            "{md}"
        );
        assert!(md.contains("admission p99 at 1000/s, ms"), "{md}");
        assert!(md.contains("server memory per held session"), "{md}");
    }

    #[test]
    fn no_before_no_table() {
        let mut map = results();
        map.retain(|k, _| !k.starts_with("before-"));
        let mut md = String::new();
        before_after(&Results(&map), &facts(), &mut md);
        assert!(md.is_empty());
    }
}
