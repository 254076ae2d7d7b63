//! Line charts of the results, drawn as SVG by the bench itself: where a reader
//! would rather look than read (latency against offered rate, RSS against held
//! sessions, the soak over time).
//!
//! plotters' SVG backend writes text as `<text>` elements for the viewer to
//! render, so nothing here needs a system font; its layout guesses text widths
//! (the crate's built-in estimate), which is good enough for axis labels.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

/// One line of a panel, named in its legend.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// A reference line (a tolerance band, the end of a warm-up): thin, dashed, grey.
    pub guide: bool,
}

impl Series {
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            guide: false,
        }
    }

    pub fn guide(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            guide: true,
        }
    }
}

/// One plot of a chart, with its own axes.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// The y axis starts at 0 (a count, a latency); otherwise it is fitted to the
    /// data, so a drift of a few percent is visible.
    pub y_from_zero: bool,
    /// The legend goes in the lower right corner (where a series that rises and
    /// levels off leaves room) instead of the upper left.
    pub legend_lower_right: bool,
}

/// A chart: panels side by side (`columns`) and in rows below.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub panels: Vec<Panel>,
    pub columns: usize,
}

/// The same server gets the same colour in every panel and chart.
fn colour(name: &str) -> RGBColor {
    let n = name.to_ascii_lowercase();
    if n.starts_with("baseline") {
        RGBColor(90, 90, 90)
    } else if n.starts_with("before") {
        RGBColor(230, 120, 20)
    } else if n.contains("slot") || n.contains("session") {
        RGBColor(30, 140, 60)
    } else if n.contains("hot") || n.contains("cluster") {
        RGBColor(150, 60, 170)
    } else {
        RGBColor(30, 90, 200)
    }
}

/// Draws the chart into an SVG document.
pub fn render(chart: &Chart) -> Result<String> {
    let columns = chart.columns.max(1);
    let rows = chart.panels.len().div_ceil(columns).max(1);
    let size = (420 * columns as u32 + 40, 320 * rows as u32 + 50);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let root = root
            .titled(&chart.title, ("sans-serif", 20))
            .map_err(|e| anyhow!("{e}"))?;
        let areas = root.split_evenly((rows, columns));
        for (area, panel) in areas.iter().zip(&chart.panels) {
            draw_panel(area, panel).with_context(|| format!("panel {:?}", panel.title))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(svg)
}

/// Draws the chart and writes it to `path` (its directory is created).
pub fn write(path: &Path, chart: &Chart) -> Result<()> {
    let svg = render(chart)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {dir:?}"))?;
    }
    std::fs::write(path, svg).with_context(|| format!("cannot write {path:?}"))
}

/// The range the points span, widened a little (and made non-empty).
/// `headroom` widens the top by that many paddings (room for a legend).
fn span(values: impl Iterator<Item = f64>, from_zero: bool, headroom: f64) -> (f64, f64) {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        hi.abs().max(1.0) * 0.1
    };
    hi += pad * headroom;
    if !from_zero {
        lo -= pad;
    }
    (lo, hi)
}

/// An axis label with as many decimals as the axis's span needs.
fn tick(v: f64, span: f64) -> String {
    if span >= 20.0 {
        format!("{v:.0}")
    } else if span >= 2.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn draw_panel(area: &DrawingArea<SVGBackend, plotters::coord::Shift>, panel: &Panel) -> Result<()> {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = span(points().map(|p| p.0), true, 1.0);
    // Above the data, room for a legend in a top corner.
    let headroom = if panel.legend_lower_right { 1.0 } else { 3.0 };
    let (y0, y1) = span(points().map(|p| p.1), panel.y_from_zero, headroom);
    let x_fmt = |v: &f64| tick(*v, x1 - x0);
    let y_fmt = |v: &f64| tick(*v, y1 - y0);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for s in &panel.series {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        if pts.is_empty() {
            continue;
        }
        if s.guide {
            let style = RGBColor(140, 140, 140).stroke_width(1);
            let drawn = chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, style))
                .map_err(|e| anyhow!("{e}"))?;
            // A second line of the same guide (the lower edge of a band) has no name
            // and no legend entry of its own.
            if !s.name.is_empty() {
                drawn
                    .label(s.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            }
            continue;
        }
        let c = colour(&s.name);
        let style = c.stroke_width(2);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|e| anyhow!("{e}"))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        // Markers only where the points are few enough to be told apart (the
        // measured rates and stages, not a soak's once-a-second samples).
        if pts.len() <= 40 {
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    chart
        .configure_series_labels()
        .position(if panel.legend_lower_right {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperLeft
        })
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Chart {
        Chart {
            title: "Admission latency against offered rate".into(),
            columns: 2,
            panels: vec![
                Panel {
                    title: "p99".into(),
                    x_label: "offered creates/s".into(),
                    y_label: "ms".into(),
                    series: vec![
                        Series::line("drisc", vec![(1000.0, 0.8), (5000.0, 1.2), (10000.0, 3.5)]),
                        Series::line("baseline", vec![(1000.0, 0.4), (5000.0, 0.5)]),
                    ],
                    y_from_zero: true,
                    legend_lower_right: false,
                },
                Panel {
                    title: "RSS".into(),
                    x_label: "minutes".into(),
                    y_label: "MB".into(),
                    series: vec![
                        Series::line(
                            "RSS",
                            (0..100).map(|i| (f64::from(i), 40.0 + f64::from(i % 3))).collect(),
                        ),
                        Series::guide("mean +2%", vec![(0.0, 41.8), (99.0, 41.8)]),
                    ],
                    y_from_zero: false,
                    legend_lower_right: true,
                },
            ],
        }
    }

    #[test]
    fn a_chart_is_an_svg_document_naming_every_series_and_panel() {
        let svg = render(&sample()).expect("render");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for name in [
            "drisc",
            "baseline",
            "mean +2%",
            "p99",
            "RSS",
            "Admission latency against offered rate",
        ] {
            assert!(svg.contains(name), "{name} missing from the chart");
        }
        assert!(svg.contains("<polyline"), "no line drawn");
    }

    #[test]
    fn a_chart_without_points_still_renders() {
        let chart = Chart {
            title: "empty".into(),
            columns: 1,
            panels: vec![Panel {
                title: "nothing measured".into(),
                series: vec![Series::line("drisc", vec![])],
                ..Default::default()
            }],
        };
        let svg = render(&chart).expect("render");
        assert!(svg.contains("nothing measured"));
    }

    #[test]
    fn write_creates_the_directory_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("charts").join("x.svg");
        write(&path, &sample()).expect("write");
        let text = std::fs::read_to_string(&path).expect("read back");
        assert!(text.contains("drisc"));
    }
}
