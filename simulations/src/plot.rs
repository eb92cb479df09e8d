//! A small line chart: drawn as SVG by hand, rasterised to PNG by resvg with
//! the system's fonts (no C libraries needed).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};

/// One line of the chart.
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) points: Vec<(f64, f64)>,
    pub(crate) dashed: bool,
}

const W: f64 = 900.0;
const H: f64 = 560.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// Rounds up to 1, 2 or 5 times a power of ten.
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes a PNG line chart of `series` to `path`.
pub(crate) fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let x_max = nice_ceil(pts().map(|p| p.0).fold(0.0, f64::max));
    let y_max = nice_ceil(pts().map(|p| p.1).fold(0.0, f64::max) * 1.05);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + x / x_max * pw;
    let sy = |y: f64| TOP + ph - y / y_max * ph;
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="DejaVu Sans, sans-serif">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    writeln!(
        svg,
        r#"<text x="{}" y="30" font-size="17" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(title)
    )?;
    for i in 0..=5 {
        let (xv, yv) = (x_max * i as f64 / 5.0, y_max * i as f64 / 5.0);
        let (x, y) = (sx(xv), sy(yv));
        writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/>"##,
            LEFT + pw
        )?;
        writeln!(
            svg,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="#eee"/>"##,
            TOP + ph
        )?;
        writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="13" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            y + 4.0,
            fmt_num(yv)
        )?;
        writeln!(
            svg,
            r#"<text x="{x}" y="{}" font-size="13" text-anchor="middle">{}</text>"#,
            TOP + ph + 20.0,
            fmt_num(xv)
        )?;
    }
    writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    )?;
    writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 15.0,
        escape(x_label)
    )?;
    writeln!(
        svg,
        r#"<text x="20" y="{}" font-size="14" text-anchor="middle" transform="rotate(-90 20 {})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(y_label)
    )?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[(i / 2) % COLORS.len()];
        let dash = if s.dashed {
            r#" stroke-dasharray="8 5""#
        } else {
            ""
        };
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2.5"{dash}/>"#,
            path.join(" ")
        )?;
        for &(x, y) in s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
        {
            writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                sx(x),
                sy(y)
            )?;
        }
        let ly = TOP + 20.0 + 24.0 * i as f64;
        let lx = W - RIGHT + 20.0;
        writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2.5"{dash}/>"#,
            lx + 30.0
        )?;
        writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="13">{}</text>"#,
            lx + 38.0,
            ly + 4.0,
            escape(&s.label)
        )?;
    }
    writeln!(svg, "</svg>")?;

    let mut fonts = resvg::usvg::fontdb::Database::new();
    fonts.load_system_fonts();
    if fonts.is_empty() {
        eprintln!(
            "note: no system fonts found: the plot's text will be missing (install fonts-dejavu-core)"
        );
    }
    let options = resvg::usvg::Options {
        fontdb: Arc::new(fonts),
        ..Default::default()
    };
    let tree =
        resvg::usvg::Tree::from_str(&svg, &options).context("the chart's SVG does not parse")?;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(W as u32, H as u32)
        .ok_or_else(|| anyhow!("cannot allocate the image"))?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap
        .save_png(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
