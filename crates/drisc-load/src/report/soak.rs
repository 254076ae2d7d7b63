//! The soak's verdict (`drisc-load soak-report`): from a long churn run's
//! once-a-second samples of the server, whether its RSS and its held-slot count
//! stay flat after the warm-up, written as bench/soak-results.md with a chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::charts::{self, Chart, Panel, Series};
use super::{RunResult, load};
use crate::scenarios::slope;
use crate::stats::C;

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// The churn run's JSON result (bench/soak writes it as soak.json, beside facts.json).
    #[arg(long)]
    pub result: PathBuf,
    /// Where to write the Markdown.
    #[arg(long, default_value = "bench/soak-results.md")]
    pub out: PathBuf,
    /// Where to write the chart (SVG); the Markdown links it by this path, as seen
    /// from the top of the repository (where BENCHMARKS.md includes it).
    #[arg(long, default_value = "bench/charts/soak.svg")]
    pub chart: PathBuf,
    /// How flat is flat: the most the figure may move, as a share of its mean over
    /// the steady window (both its spread, max − min, and its fitted drift).
    #[arg(long, default_value_t = 0.02)]
    pub tolerance: f64,
    /// Judge from this many minutes into the churn instead of the run's own warm-up
    /// (to look at part of a run again; write it elsewhere with --out and --chart).
    #[arg(long)]
    pub steady_from: Option<f64>,
}

/// How one figure behaved over the steady window.
#[derive(Debug, Clone, PartialEq)]
pub struct Steadiness {
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Least-squares slope, per hour.
    pub per_hour: f64,
    /// (max − min) / mean, of the one-second samples.
    pub spread: f64,
    /// (max − min) / mean of the per-minute means: what is judged, since the
    /// one-second samples of the slot count also move with the load's own
    /// randomness (how many seats are between two players at that second).
    pub minute_spread: f64,
    /// The fitted line's rise over the window, / mean (signed).
    pub drift: f64,
    pub samples: usize,
}

impl Steadiness {
    /// `points` are (seconds, value), in time order; None when fewer than two.
    pub fn of(points: &[(f64, f64)]) -> Option<Self> {
        let (first, last) = (points.first()?, points.last()?);
        let per_s = slope(points)?;
        let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
        let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let window = last.0 - first.0;
        let rel = |v: f64| if mean > 0.0 { v / mean } else { 0.0 };
        let mut minutes: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
        for p in points {
            let m = minutes.entry(((p.0 - first.0) / 60.0).floor() as i64).or_default();
            *m = (m.0 + p.1, m.1 + 1.0);
        }
        let means = minutes.values().map(|(sum, n)| sum / n);
        let (lo, hi) = means.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        Some(Self {
            first: first.1,
            last: last.1,
            min,
            max,
            mean,
            per_hour: per_s * 3600.0,
            spread: rel(max - min),
            minute_spread: rel(hi - lo),
            drift: rel(per_s * window),
            samples: points.len(),
        })
    }

    /// Flat: neither the spread of its minute means nor its drift over the window
    /// passes `tolerance`.
    pub fn flat(&self, tolerance: f64) -> bool {
        self.minute_spread <= tolerance && self.drift.abs() <= tolerance
    }
}

/// The figures the soak judges, over the steady window.
struct Figures {
    rss_mb: Option<Steadiness>,
    slots: Option<Steadiness>,
    fds: Option<Steadiness>,
    from_s: f64,
    to_s: f64,
    t0: f64,
}

fn figures(r: &RunResult, steady_from: Option<f64>) -> Figures {
    let m = |k: &str| r.metrics.get(k).copied();
    let t0 = m("churn_from_s").unwrap_or(0.0);
    let from_s = match steady_from {
        Some(minutes) => t0 + minutes * 60.0,
        None => m("steady_from_s").unwrap_or(t0),
    };
    let to_s = m("steady_to_s").unwrap_or(f64::INFINITY);
    let steady: Vec<_> = r
        .server_samples
        .iter()
        .filter(|s| s.t >= from_s && s.t <= to_s)
        .collect();
    let series = |f: &dyn Fn(&crate::server::ProcSample) -> Option<f64>| -> Vec<(f64, f64)> {
        steady.iter().filter_map(|s| Some((s.t, f(s)?))).collect()
    };
    Figures {
        rss_mb: Steadiness::of(&series(&|s| Some(s.rss_kb as f64 / 1024.0))),
        slots: Steadiness::of(&series(&|s| s.sessions.map(|n| n as f64))),
        fds: Steadiness::of(&series(&|s| Some(s.fds as f64))),
        from_s,
        to_s: steady.last().map_or(to_s, |s| s.t),
        t0,
    }
}

pub fn run(args: &SoakArgs) -> Result<()> {
    let result = load(&args.result)?;
    let facts: BTreeMap<String, String> = args
        .result
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("facts.json")).ok())
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let f = figures(&result, args.steady_from);
    charts::write(&args.chart, &chart(&result, &f, args.tolerance))?;
    let mut md = render(&result, &f, &facts, args);
    if let Some(dir) = args.result.parent() {
        let scrapes = allocator_scrapes(&dir.join("metrics"));
        let window = ((f.from_s - f.t0) / 60.0, (f.to_s - f.t0) / 60.0);
        if let Some(section) = render_allocator(&scrapes, window, args.tolerance) {
            // Inside the soak's markers, so BENCHMARKS.md takes it with the rest.
            md = md.replace("<!-- soak:end -->", &format!("{section}<!-- soak:end -->"));
        }
    }
    std::fs::write(&args.out, &md).with_context(|| format!("cannot write {:?}", args.out))?;
    print!("{md}");
    eprintln!("wrote {} and {}", args.out.display(), args.chart.display());
    let flat = [&f.rss_mb, &f.slots]
        .iter()
        .all(|s| s.as_ref().is_some_and(|s| s.flat(args.tolerance)));
    if !flat {
        anyhow::bail!(
            "not flat within {:.0}% (see {})",
            args.tolerance * 100.0,
            args.out.display()
        );
    }
    Ok(())
}

fn chart(r: &RunResult, f: &Figures, tolerance: f64) -> Chart {
    let minutes = |t: f64| (t - f.t0) / 60.0;
    let all = |v: &dyn Fn(&crate::server::ProcSample) -> Option<f64>| -> Vec<(f64, f64)> {
        r.server_samples
            .iter()
            .filter(|s| s.t >= f.t0)
            .filter_map(|s| Some((minutes(s.t), v(s)?)))
            .collect()
    };
    let panel = |title: &str, y: &str, name: &str, points: Vec<(f64, f64)>, st: &Option<Steadiness>| {
        let mut series = vec![Series::line(name, points)];
        if let Some(st) = st {
            let (a, b) = (minutes(f.from_s), minutes(f.to_s));
            let pct = tolerance * 100.0;
            series.push(Series::guide(
                format!("steady mean ±{pct:.0}%"),
                vec![(a, st.mean * (1.0 + tolerance)), (b, st.mean * (1.0 + tolerance))],
            ));
            series.push(Series::guide(
                "",
                vec![(a, st.mean * (1.0 - tolerance)), (b, st.mean * (1.0 - tolerance))],
            ));
        }
        Panel {
            title: title.into(),
            x_label: "minutes of churn (dashed: the steady window's mean ± tolerance)".into(),
            y_label: y.into(),
            series,
            y_from_zero: false,
            legend_lower_right: true,
        }
    };
    Chart {
        title: "Soak: server RSS and held slots over time".into(),
        columns: 1,
        panels: vec![
            panel(
                "server RSS (VmRSS)",
                "MB",
                "drisc RSS",
                all(&|s| Some(s.rss_kb as f64 / 1024.0)),
                &f.rss_mb,
            ),
            panel(
                "held slots (GET /health: sessions)",
                "sessions",
                "held slots",
                all(&|s| s.sessions.map(|n| n as f64)),
                &f.slots,
            ),
        ],
    }
}

fn render(r: &RunResult, f: &Figures, facts: &BTreeMap<String, String>, args: &SoakArgs) -> String {
    let fact = |k: &str| facts.get(k).cloned().unwrap_or_else(|| "?".into());
    let p = |k: &str| r.params.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let tol = args.tolerance * 100.0;
    let mut md = String::new();
    let _ = writeln!(md, "<!-- soak:start -->\n## Soak: RSS and held slots under churn\n");
    let _ = writeln!(
        md,
        "Measured by `{}` on {} (commit {}, {} min; load average {}). One release drisc with its default \
         settings (PING every 10 s, pong timeout 25 s, reconnect grace 30 s; rate limits off), pinning: {}. \
         {:.0} players, each its own customer of limit 1, lifetimes exponential (mean {:.0} s); a leave is \
         FINISHED, a dropped socket the next player takes over ({:.0}%), a silent death (socket open, PINGs \
         unanswered, {:.0}%) or a takeover of the live session ({:.0}%); {:.0}% of lives have a network blip \
         and reconnect. The server's RSS (`/proc/PID/status`) and held slots (`GET /health`, `sessions`) are \
         sampled every second; the steady window is minute {:.1} to minute {:.1} ({} samples). The machine is \
         shared with other engineers' builds and tests: that moves latency, not memory, so it is fine for a \
         flatness check. Raw results: `{}`.\n",
        fact("command"),
        fact("date"),
        fact("commit"),
        fact("minutes"),
        fact("load"),
        fact("pinning"),
        p("population"),
        r.params
            .get("lifetime")
            .and_then(|d| d.get("secs"))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0),
        p("abandon") * 100.0,
        p("silent") * 100.0,
        p("takeover") * 100.0,
        p("reconnect") * 100.0,
        (f.from_s - f.t0) / 60.0,
        (f.to_s - f.t0) / 60.0,
        f.rss_mb.as_ref().map_or(0, |s| s.samples),
        fact("results_dir"),
    );
    let _ = writeln!(
        md,
        "| figure | first | last | min | max | mean | spread (max − min) / mean | spread of the minute means | drift (fitted, over the window) / mean | slope per hour | flat within {tol:.0}%? |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    let row = |md: &mut String, name: &str, st: &Option<Steadiness>, digits: usize, judged: bool| {
        let Some(s) = st else {
            let _ = writeln!(md, "| {name} | – | – | – | – | – | – | – | – | – | not measured |");
            return;
        };
        let verdict = if !judged {
            "(not judged)".to_owned()
        } else if s.flat(args.tolerance) {
            "**yes**".to_owned()
        } else {
            "**no**".to_owned()
        };
        let _ = writeln!(
            md,
            "| {name} | {:.d$} | {:.d$} | {:.d$} | {:.d$} | {:.d$} | {:.2}% | {:.2}% | {:+.2}% | {:+.d$} | {verdict} |",
            s.first,
            s.last,
            s.min,
            s.max,
            s.mean,
            s.spread * 100.0,
            s.minute_spread * 100.0,
            s.drift * 100.0,
            s.per_hour,
            d = digits
        );
    };
    row(&mut md, "server RSS, MB", &f.rss_mb, 1, true);
    row(&mut md, "held slots", &f.slots, 0, true);
    row(&mut md, "server open files", &f.fds, 0, false);
    let c = &r.counters;
    let _ = writeln!(
        md,
        "\nPlayers over the run: {} joins (OK), {:.1} a second; {} FINISHED, {} takeovers ({} TAKE_OVER received), \
         {} silent deaths, {} reconnects with the cached endpoint, {} EXPIRED, {} HTTP or network errors.\n",
        c.get(C::Ok),
        r.metrics.get("joins_per_s").copied().unwrap_or(0.0),
        c.get(C::Finished),
        c.get(C::Takeover),
        c.get(C::TakenOver),
        c.get(C::Silent),
        c.get(C::Reconnect),
        c.get(C::Expired),
        c.get(C::HttpError) + c.get(C::NetError),
    );
    let _ = writeln!(
        md,
        "![Soak: server RSS and held slots over time]({})\n",
        args.chart.display()
    );
    let verdict = match (&f.rss_mb, &f.slots) {
        (Some(rss), Some(slots)) => format!(
            "RSS {} flat within {tol:.0}% (minute means spread {:.2}%, drift {:+.2}%); held slots {} \
             (minute means spread {:.2}%, drift {:+.2}%). Flat: both the spread of the per-minute means and \
             the fitted drift over the steady window stay within the tolerance.",
            if rss.flat(args.tolerance) {
                "stayed"
            } else {
                "did **not** stay"
            },
            rss.minute_spread * 100.0,
            rss.drift * 100.0,
            if slots.flat(args.tolerance) {
                "stayed flat"
            } else {
                "did **not**"
            },
            slots.minute_spread * 100.0,
            slots.drift * 100.0,
        ),
        _ => "Not enough samples in the steady window to judge.".into(),
    };
    let _ = writeln!(md, "Verdict: {verdict}\n<!-- soak:end -->");
    md
}

/// The allocator's figures at one of bench/soak's once-a-minute `/metrics` scrapes
/// (`metrics/MMM.txt` beside soak.json, MMM the minute since the churn began).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllocatorScrape {
    pub minute: f64,
    pub rss: Option<f64>,
    pub resident: Option<f64>,
    pub active: Option<f64>,
    pub allocated: Option<f64>,
    pub retained: Option<f64>,
}

impl AllocatorScrape {
    /// Reads the figures out of the Prometheus text format (unlabelled gauges).
    pub fn parse(minute: f64, text: &str) -> Self {
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        };
        Self {
            minute,
            rss: value("process_resident_memory_bytes"),
            resident: value("drisc_allocator_resident_bytes"),
            active: value("drisc_allocator_active_bytes"),
            allocated: value("drisc_allocator_allocated_bytes"),
            retained: value("drisc_allocator_retained_bytes"),
        }
    }
}

fn allocator_scrapes(dir: &std::path::Path) -> Vec<AllocatorScrape> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut scrapes: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let minute: f64 = path.file_stem()?.to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(&path).ok()?;
            Some(AllocatorScrape::parse(minute, &text))
        })
        .filter(|s| s.allocated.is_some())
        .collect();
    scrapes.sort_by(|a, b| a.minute.total_cmp(&b.minute));
    scrapes
}

/// A table of the allocator's figures per minute, and what they say about RSS: live
/// data that grows is a leak (`allocated` climbs); RSS that rises while `allocated`
/// stays level is jemalloc keeping freed pages, or a cache outside it filling.
/// `window` is the steady window in minutes since the churn began: a scrape after the
/// players left would read as live data falling.
pub fn render_allocator(scrapes: &[AllocatorScrape], window: (f64, f64), tolerance: f64) -> Option<String> {
    if scrapes.is_empty() {
        return None;
    }
    let mb = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{:.1}", v / 1_048_576.0));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Allocator figures (jemalloc, `/metrics` scraped once a minute), MB:\n\n\
         | minute | process RSS | jemalloc resident | active | allocated (live data) | retained (unmapped, not in RSS) |\n\
         |---|---|---|---|---|---|"
    );
    for s in scrapes {
        let _ = writeln!(
            md,
            "| {:.0} | {} | {} | {} | {} | {} |",
            s.minute,
            mb(s.rss),
            mb(s.resident),
            mb(s.active),
            mb(s.allocated),
            mb(s.retained)
        );
    }
    let steady = |f: &dyn Fn(&AllocatorScrape) -> Option<f64>| -> Vec<(f64, f64)> {
        scrapes
            .iter()
            .filter(|s| s.minute >= window.0 && s.minute < window.1)
            .filter_map(|s| Some((s.minute * 60.0, f(s)?)))
            .collect()
    };
    let allocated = Steadiness::of(&steady(&|s| s.allocated));
    let outside = Steadiness::of(&steady(&|s| Some(s.rss? - s.resident?)));
    let line = match (allocated, outside) {
        (Some(a), Some(o)) => format!(
            "\nOver the steady window, jemalloc's live data (`allocated`) moved {:+.2}% (drift) with minute means \
             spread {:.2}%: {}. RSS outside jemalloc (code, stacks, other \
             mappings; SQLite's memory is inside it, as jemalloc serves C's malloc too) moved {:+.2}%.\n",
            a.drift * 100.0,
            a.minute_spread * 100.0,
            if a.drift.abs() <= tolerance {
                "level, so no leak of live data"
            } else if a.drift > 0.0 {
                "**rising**: live data grows, look for a leak or an unbounded cache"
            } else {
                "falling"
            },
            o.drift * 100.0,
        ),
        _ => "\nToo few scrapes in the steady window to judge the allocator's figures.\n".to_owned(),
    };
    md.push_str(&line);
    md.push('\n');
    Some(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocators_figures_are_read_from_a_scrape_and_judged() {
        let text = "# TYPE drisc_allocator_allocated_bytes gauge\n\
                    drisc_allocator_allocated_bytes 10485760\n\
                    drisc_allocator_active_bytes 12582912\n\
                    drisc_allocator_resident_bytes 20971520\n\
                    drisc_allocator_retained_bytes 1048576\n\
                    process_resident_memory_bytes 31457280\n\
                    drisc_allocator_allocated_bytes_total_is_not_it 1\n";
        let s = AllocatorScrape::parse(3.0, text);
        assert_eq!(s.allocated, Some(10_485_760.0));
        assert_eq!(s.resident, Some(20_971_520.0));
        assert_eq!(s.rss, Some(31_457_280.0));

        // Level live data while RSS steps up once: not a leak.
        let level: Vec<_> = (0..10)
            .map(|m| AllocatorScrape {
                minute: f64::from(m),
                rss: Some(if m < 5 { 30e6 } else { 31e6 }),
                resident: Some(20e6),
                allocated: Some(10e6),
                ..Default::default()
            })
            .collect();
        let md = render_allocator(&level, (2.0, 10.0), 0.02).expect("a section");
        assert!(md.contains("no leak of live data"), "{md}");
        // Live data climbing 10% over the window: flagged.
        let climbing: Vec<_> = level
            .iter()
            .map(|s| AllocatorScrape {
                allocated: Some(10e6 * (1.0 + s.minute / 80.0)),
                ..s.clone()
            })
            .collect();
        let md = render_allocator(&climbing, (2.0, 10.0), 0.02).expect("a section");
        assert!(md.contains("**rising**"), "{md}");
        assert_eq!(render_allocator(&[], (0.0, 1.0), 0.02), None);
    }

    #[test]
    fn a_level_series_is_flat_and_a_climbing_one_is_not() {
        let level: Vec<(f64, f64)> = (0..600).map(|i| (f64::from(i), 100.0 + f64::from(i % 2))).collect();
        let s = Steadiness::of(&level).expect("enough points");
        assert!(s.flat(0.02), "{s:?}");
        assert!((s.mean - 100.5).abs() < 1e-9);
        assert!((s.spread - 1.0 / 100.5).abs() < 1e-9);
        // The minute means of an alternating series are all the same.
        assert!(s.minute_spread < 1e-9, "{s:?}");

        // 5% over the window: a leak, however smooth.
        let climb: Vec<(f64, f64)> = (0..600)
            .map(|i| (f64::from(i), 100.0 + f64::from(i) * 5.0 / 600.0))
            .collect();
        let s = Steadiness::of(&climb).expect("enough points");
        assert!(!s.flat(0.02), "{s:?}");
        assert!(s.drift > 0.04 && s.per_hour > 0.0, "{s:?}");
    }

    #[test]
    fn one_point_is_not_enough_to_judge() {
        assert_eq!(Steadiness::of(&[(0.0, 1.0)]), None);
    }
}
