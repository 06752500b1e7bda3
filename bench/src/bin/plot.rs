//! Draws the end-to-end benchmark's charts from `bench/results/latest.json`
//! (written by `bench/driver.py`):
//!
//! - `scale.png`: drain throughput (events/s) against the keyspace, both
//!   axes logarithmic, one line per variant (`wasm-scan`, `wasm`).
//! - `latency.png`: p99 latency against the publish rate, one line per
//!   variant on the Neo4j graph; a hollow marker is a rate the variant did
//!   not keep up with, where the figure is a lower bound.
//!
//! Usage: `bench-plot [RESULTS_DIR]` (default: this crate's `results/`).
//! Text is drawn with DejaVu Sans compiled in, so no system font is needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::register_font;
use serde_json::Value;

const SIZE: (u32, u32) = (900, 560);

/// One series: a variant's points, with whether each is a lower bound (a
/// latency run the variant did not keep up with).
type Series = BTreeMap<String, Vec<(f64, f64, bool)>>;

fn main() -> Result<()> {
    let directory = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    let input = directory.join("latest.json");
    let text = std::fs::read_to_string(&input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let results: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", input.display()))?;
    register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow!("the embedded DejaVu Sans font does not load"))?;
    register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold())
        .map_err(|_| anyhow!("the embedded DejaVu Sans Bold font does not load"))?;
    let machine = results
        .get("machine")
        .and_then(Value::as_str)
        .unwrap_or("unknown machine");

    let scale = series(&results, "scale", "keyspace", "events_per_s", |_| true);
    let path = directory.join("scale.png");
    draw(
        &path,
        &Chart {
            title: "Drain throughput against keyspace",
            subtitle: machine,
            x_label: "keys in Valkey (background keyspace)",
            y_label: "events/s",
            series: &scale,
        },
    )?;
    println!("wrote {}", path.display());

    let latency = series(&results, "latency", "rate", "p99_ms", |entry| {
        entry.get("graph").and_then(Value::as_str) != Some("memory")
    });
    let path = directory.join("latency.png");
    draw(
        &path,
        &Chart {
            title: "p99 latency against publish rate (Neo4j graph)",
            subtitle: machine,
            x_label: "publish rate, events/s",
            y_label: "p99 ms (hollow = not keeping up, a lower bound)",
            series: &latency,
        },
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The `(x, y)` points of every entry of `results[key]` that has both,
/// grouped by variant.
fn series(results: &Value, key: &str, x: &str, y: &str, keep: impl Fn(&Value) -> bool) -> Series {
    let mut out = Series::new();
    for entry in results
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(variant), Some(xv), Some(yv)) = (
            entry.get("variant").and_then(Value::as_str),
            entry.get(x).and_then(Value::as_f64),
            entry.get(y).and_then(Value::as_f64),
        ) else {
            continue;
        };
        if !keep(entry) || xv <= 0.0 || yv <= 0.0 {
            continue;
        }
        let bound = entry.get("saturated").and_then(Value::as_bool) == Some(true);
        out.entry(variant.to_owned())
            .or_default()
            .push((xv, yv, bound));
    }
    for points in out.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

struct Chart<'a> {
    title: &'a str,
    subtitle: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: &'a Series,
}

/// A log-log line chart, or a chart that says there is no data.
fn draw(path: &Path, chart: &Chart<'_>) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, body) = root.split_vertically(56);
    top.draw(&Text::new(
        chart.title,
        (16, 8),
        ("sans-serif", 22).into_font().style(FontStyle::Bold),
    ))
    .map_err(plot_error)?;
    top.draw(&Text::new(chart.subtitle, (16, 34), ("sans-serif", 13)))
        .map_err(plot_error)?;

    let points: Vec<(f64, f64)> = chart
        .series
        .values()
        .flatten()
        .map(|&(x, y, _)| (x, y))
        .collect();
    if points.is_empty() {
        body.draw(&Text::new(
            "no data in latest.json",
            (SIZE.0 as i32 / 2 - 90, SIZE.1 as i32 / 2 - 40),
            ("sans-serif", 20),
        ))
        .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
        return Ok(());
    }
    // Ticks at the measured x values (rates, keyspaces); room above the
    // data for the legend.
    let mut ticks: Vec<f64> = points.iter().map(|p| p.0).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let x_range = padded(points.iter().map(|p| p.0), 1.5);
    let y_range = padded(points.iter().map(|p| p.1), 8.0);

    let mut plot = ChartBuilder::on(&body)
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(
            x_range.log_scale().with_key_points(ticks),
            y_range.log_scale(),
        )
        .map_err(plot_error)?;
    plot.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .x_label_formatter(&|v| compact(*v))
        .y_label_formatter(&|v| compact(*v))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(plot_error)?;

    for (index, (variant, points)) in chart.series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        plot.draw_series(LineSeries::new(
            points.iter().map(|&(x, y, _)| (x, y)),
            color.stroke_width(2),
        ))
        .map_err(plot_error)?
        .label(variant.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        plot.draw_series(points.iter().map(|&(x, y, bound)| {
            let style = if bound {
                color.stroke_width(2)
            } else {
                color.filled()
            };
            Circle::new((x, y), 5, style)
        }))
        .map_err(plot_error)?;
    }
    plot.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// The values' range on a log scale, widened by a factor below and by
/// `top` above.
fn padded(values: impl Iterator<Item = f64>, top: f64) -> std::ops::Range<f64> {
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (low / 1.5)..(high * top)
}

/// 1000 → "1k", 1000000 → "1M", 0.5 → "0.5".
fn compact(value: f64) -> String {
    let trim = |v: f64| {
        let text = format!("{v:.1}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    if value >= 1e6 {
        format!("{}M", trim(value / 1e6))
    } else if value >= 1e3 {
        format!("{}k", trim(value / 1e3))
    } else if value >= 1.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn plot_error<E: std::fmt::Debug>(error: E) -> anyhow::Error {
    anyhow!("drawing failed: {error:?}")
}
