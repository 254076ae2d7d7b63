//! A line chart from plain number files (`drisc-load line-chart`), for the bench
//! scripts whose results are a series over time and need no report of their own
//! (`bench/flood`: held sessions second by second, per server). Each file holds
//! one point a line, `x y`; a line whose `y` is not a number (a sample that was
//! not read) is skipped, as a gap in the measurement, not an error.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::charts::{self, Chart, Panel, Series};

#[derive(clap::Args, Debug)]
pub struct LineChartArgs {
    /// The chart's title.
    #[arg(long)]
    pub title: String,
    #[arg(long, default_value = "")]
    pub x_label: String,
    #[arg(long, default_value = "")]
    pub y_label: String,
    /// A series: `NAME=FILE`, FILE holding `x y` a line (repeat for each).
    #[arg(long = "series", required = true, value_parser = named_file)]
    pub series: Vec<(String, PathBuf)>,
    /// A reference line drawn thin and grey: `NAME=Y`, level across the chart.
    #[arg(long = "level", value_parser = named_level)]
    pub levels: Vec<(String, f64)>,
    /// Where to write the chart (SVG).
    #[arg(long)]
    pub out: PathBuf,
}

fn named_file(arg: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = arg.split_once('=').ok_or("expected NAME=FILE")?;
    Ok((name.to_owned(), PathBuf::from(file)))
}

fn named_level(arg: &str) -> Result<(String, f64), String> {
    let (name, y) = arg.split_once('=').ok_or("expected NAME=Y")?;
    let y = y.parse().map_err(|_| format!("{y:?} is not a number"))?;
    Ok((name.to_owned(), y))
}

pub fn run(args: &LineChartArgs) -> Result<()> {
    let mut series = Vec::new();
    for (name, file) in &args.series {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file:?}"))?;
        series.push(Series::line(name, points(&text, file)?));
    }
    charts::write(&args.out, &chart(args, series))?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn chart(args: &LineChartArgs, mut series: Vec<Series>) -> Chart {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if lo.is_finite() {
        for (name, y) in &args.levels {
            series.push(Series::guide(name, vec![(lo, *y), (hi, *y)]));
        }
    }
    Chart {
        title: args.title.clone(),
        columns: 1,
        panels: vec![Panel {
            title: String::new(),
            x_label: args.x_label.clone(),
            y_label: args.y_label.clone(),
            series,
            y_from_zero: true,
            legend_lower_right: false,
        }],
    }
}

/// The `x y` points of a file's text; a line whose `y` is missing or not a
/// number is skipped. A line whose `x` is not a number is an error: the file is
/// not what the caller meant.
fn points(text: &str, file: &Path) -> Result<Vec<(f64, f64)>> {
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(x) = fields.next() else { continue };
        let Ok(x) = x.parse::<f64>() else {
            bail!("{}:{}: {x:?} is not a number", file.display(), n + 1);
        };
        if let Some(Ok(y)) = fields.next().map(str::parse::<f64>) {
            points.push((x, y));
        }
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_skip_unread_samples_and_refuse_a_file_that_is_not_numbers() {
        let file = Path::new("held");
        let read = points("0 10\n1\n2 n/a\n3 12.5\n\n", file).expect("points");
        assert_eq!(read, vec![(0.0, 10.0), (3.0, 12.5)]);
        let e = points("t held\n0 1\n", file).expect_err("a header is not a point");
        assert!(e.to_string().contains("held:1"), "{e}");
    }

    #[test]
    fn a_level_spans_the_series_and_every_name_is_drawn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (before, after) = (dir.path().join("before"), dir.path().join("after"));
        std::fs::write(&before, "0 0\n10 300000\n20 600000\n").expect("write");
        std::fs::write(&after, "0 0\n10 250000\n20 260000\n").expect("write");
        let args = LineChartArgs {
            title: "held sessions".into(),
            x_label: "s".into(),
            y_label: "sessions".into(),
            series: vec![("before".into(), before), ("after".into(), after)],
            levels: vec![("bound".into(), 270_000.0)],
            out: dir.path().join("chart.svg"),
        };
        run(&args).expect("run");
        let svg = std::fs::read_to_string(&args.out).expect("read back");
        for name in ["held sessions", "before", "after", "bound"] {
            assert!(svg.contains(name), "{name} missing");
        }
        let drawn = chart(&args, vec![Series::line("after", vec![(0.0, 1.0), (20.0, 2.0)])]);
        let level = &drawn.panels[0].series[1];
        assert!(level.guide);
        assert_eq!(level.points, vec![(0.0, 270_000.0), (20.0, 270_000.0)]);
    }
}
