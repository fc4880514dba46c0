//! PNG charts: the grouped bar chart of a report and a generic line chart.
//!
//! Charts are drawn with `plotters` into an in-memory RGB bitmap, encoded as
//! PNG and written atomically. Text needs a TrueType font, which is loaded at
//! run time from the file named by the `RAMEM_FONT` environment variable or
//! else the first of [`FONT_CANDIDATES`] that exists (DejaVu Sans is in the
//! Debian package `fonts-dejavu-core`). Without a font the chart is drawn
//! without any text and a warning is logged: a missing font never fails a run.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::aggregate::{Stat, Summary};
use crate::error::{EvalError, Result};

/// Fonts tried, in order, when `RAMEM_FONT` is not set.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// The environment variable that names a TTF/OTF font file to use.
pub const FONT_ENV: &str = "RAMEM_FONT";

const FONT_FAMILY: &str = "sans-serif";

/// Finds and registers a font once per process; true when text can be drawn.
pub fn font_available() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(load_font)
}

fn load_font() -> bool {
    let from_env = std::env::var_os(FONT_ENV).map(std::path::PathBuf::from);
    let candidates = from_env
        .iter()
        .cloned()
        .chain(FONT_CANDIDATES.iter().map(std::path::PathBuf::from));
    for path in candidates {
        let Ok(bytes) = std::fs::read(&path) else {
            if from_env.as_ref() == Some(&path) {
                tracing::warn!(
                    "{}: cannot read the font named by {FONT_ENV}",
                    path.display()
                );
            }
            continue;
        };
        // plotters keeps fonts for the life of the process; this happens once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        match plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes) {
            Ok(()) => {
                tracing::debug!("plot font: {}", path.display());
                return true;
            }
            Err(_) => tracing::warn!("{}: not a usable TrueType/OpenType font", path.display()),
        }
    }
    tracing::warn!(
        "no font found (set {FONT_ENV} or install fonts-dejavu-core); charts are drawn without text"
    );
    false
}

/// The four bar kinds of the report chart, with their colours.
const BAR_KINDS: [(&str, RGBColor); 4] = [
    ("overall", RGBColor(31, 119, 180)),
    ("many", RGBColor(255, 127, 14)),
    ("medium", RGBColor(44, 160, 44)),
    ("few", RGBColor(214, 39, 40)),
];

const LINE_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Size in pixels of the report chart for `groups` (method, variant) groups.
pub fn bar_chart_size(groups: usize) -> (u32, u32) {
    let width = 160 + 220 * groups.max(1);
    (width.clamp(800, 6000) as u32, 600)
}

/// Size in pixels of [`plot_lines`] charts.
pub const LINE_CHART_SIZE: (u32, u32) = (900, 600);

/// Draws the grouped bar chart of `summary` (overall, many, medium and
/// few-shot top-1 per (method, variant), error bars of one standard
/// deviation) and writes it to `path` as PNG.
pub fn plot_summary(path: &Path, title: &str, summary: &[Summary]) -> Result<()> {
    let text = font_available();
    let (w, h) = bar_chart_size(summary.len());
    let png = render(path, (w, h), |root| draw_bars(root, title, summary, text))?;
    ramem_store::write_atomic(path, &png)?;
    Ok(())
}

/// Draws one line per series (points joined in the given order, with
/// markers) and writes the chart to `path` as PNG: accuracy versus k, versus
/// memory size or pollution, and similar studies.
///
/// A point with a non-finite coordinate is an error naming its series.
pub fn plot_lines(
    path: impl AsRef<Path>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let path = path.as_ref();
    for (name, points) in series {
        if let Some(p) = points
            .iter()
            .find(|(x, y)| !x.is_finite() || !y.is_finite())
        {
            return Err(EvalError::Plot {
                path: path.to_path_buf(),
                reason: format!("series {name:?} has a non-finite point ({}, {})", p.0, p.1),
            });
        }
    }
    let text = font_available();
    let png = render(path, LINE_CHART_SIZE, |root| {
        draw_lines(root, title, x_label, y_label, series, text)
    })?;
    ramem_store::write_atomic(path, &png)?;
    Ok(())
}

type Root<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), String>;

/// Runs `draw` on a white RGB bitmap of `size` and returns it as PNG bytes.
pub(crate) fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Root) -> DrawResult,
) -> Result<Vec<u8>> {
    let plot_err = |reason: String| EvalError::Plot {
        path: path.to_path_buf(),
        reason,
    };
    let (w, h) = size;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        draw(&root).map_err(plot_err)?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    encode_png(&rgb, w, h).map_err(|e| plot_err(format!("PNG encoding: {e}")))
}

pub(crate) fn encode_png(
    rgb: &[u8],
    w: u32,
    h: u32,
) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn metric_value(s: &Summary, kind: usize) -> Option<&Stat> {
    match kind {
        0 => Some(&s.top1),
        1 => s.many.as_ref(),
        2 => s.medium.as_ref(),
        _ => s.few.as_ref(),
    }
}

/// The top of the y axis: the highest bar plus its error bar, with headroom
/// for the legend, rounded up to 10 and at most 100 (accuracies are
/// percentages) unless a value exceeds 100.
fn y_top(summary: &[Summary]) -> f64 {
    let mut top: f64 = 0.0;
    for s in summary {
        for k in 0..BAR_KINDS.len() {
            if let Some(st) = metric_value(s, k) {
                if st.mean.is_finite() {
                    top = top.max(st.mean + st.std.filter(|v| v.is_finite()).unwrap_or(0.0));
                }
            }
        }
    }
    let padded = ((top * 1.25) / 10.0).ceil() * 10.0;
    if top <= 100.0 {
        padded.clamp(10.0, 100.0)
    } else {
        padded
    }
}

fn draw_bars(root: &Root, title: &str, summary: &[Summary], text: bool) -> DrawResult {
    let groups = summary.len().max(1) as f64;
    let y_max = y_top(summary);
    let mut builder = ChartBuilder::on(root);
    builder
        .margin(20)
        .x_label_area_size(if text { 60 } else { 10 })
        .y_label_area_size(if text { 70 } else { 10 });
    if text {
        builder.caption(title, (FONT_FAMILY, 26));
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..groups, 0f64..y_max)
        .map_err(err)?;
    {
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh().x_labels(0);
        if text {
            mesh.y_desc("top-1 accuracy (%)")
                .y_labels(11)
                .y_label_formatter(&|v| format!("{v:.0}"))
                .y_max_light_lines(1)
                .label_style((FONT_FAMILY, 15))
                .axis_desc_style((FONT_FAMILY, 17));
        } else {
            mesh.y_labels(0);
        }
        mesh.draw().map_err(err)?;
    }

    let slot = 0.8 / BAR_KINDS.len() as f64;
    for (k, &(name, color)) in BAR_KINDS.iter().enumerate() {
        let bars: Vec<(f64, f64)> = summary
            .iter()
            .enumerate()
            .filter_map(|(g, s)| {
                let st = metric_value(s, k)?;
                st.mean
                    .is_finite()
                    .then_some((g as f64 + 0.1 + slot * k as f64, st.mean))
            })
            .collect();
        let series = chart
            .draw_series(bars.iter().map(|&(x0, mean)| {
                Rectangle::new(
                    [(x0 + slot * 0.08, 0.0), (x0 + slot * 0.92, mean.min(y_max))],
                    color.filled(),
                )
            }))
            .map_err(err)?;
        if text {
            series.label(name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled())
            });
        }
        // Error bars: one standard deviation either side of the mean.
        for (g, s) in summary.iter().enumerate() {
            let Some(st) = metric_value(s, k) else {
                continue;
            };
            let Some(sd) = st.std.filter(|v| v.is_finite() && *v > 0.0) else {
                continue;
            };
            if !st.mean.is_finite() {
                continue;
            }
            let xc = g as f64 + 0.1 + slot * (k as f64 + 0.5);
            let lo = (st.mean - sd).max(0.0);
            let hi = (st.mean + sd).min(y_max);
            let cap = slot * 0.2;
            let line = BLACK.stroke_width(2);
            chart
                .draw_series([
                    PathElement::new(vec![(xc, lo), (xc, hi)], line),
                    PathElement::new(vec![(xc - cap, lo), (xc + cap, lo)], line),
                    PathElement::new(vec![(xc - cap, hi), (xc + cap, hi)], line),
                ])
                .map_err(err)?;
        }
    }

    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_FAMILY, 15))
            .draw()
            .map_err(err)?;
        // Group names under the x axis, two lines: method, then variant.
        let group_px = {
            let (a, _) = chart.backend_coord(&(0.0, 0.0));
            let (b, _) = chart.backend_coord(&(1.0, 0.0));
            (b - a).max(1)
        };
        let max_chars = (group_px / 7).max(4) as usize;
        let style =
            TextStyle::from((FONT_FAMILY, 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (g, s) in summary.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            for (line, label) in [&s.method, &s.variant].into_iter().enumerate() {
                root.draw(&Text::new(
                    shorten(label, max_chars),
                    (x, y + 8 + 20 * line as i32),
                    style.clone(),
                ))
                .map_err(err)?;
            }
        }
    }
    Ok(())
}

/// `s` cut to at most `max` characters, with an ellipsis when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// A padded axis range covering `values`; (0, 1) when there are none.
fn axis_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.5
    };
    (lo - pad, hi + pad)
}

fn draw_lines(
    root: &Root,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    text: bool,
) -> DrawResult {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let (x0, x1) = axis_range(points().map(|p| p.0));
    let (y0, y1) = axis_range(points().map(|p| p.1));
    let mut builder = ChartBuilder::on(root);
    builder
        .margin(20)
        .x_label_area_size(if text { 50 } else { 10 })
        .y_label_area_size(if text { 70 } else { 10 });
    if text {
        builder.caption(title, (FONT_FAMILY, 26));
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(err)?;
    {
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(x_label)
                .y_desc(y_label)
                .x_max_light_lines(1)
                .y_max_light_lines(1)
                .label_style((FONT_FAMILY, 15))
                .axis_desc_style((FONT_FAMILY, 17));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = LINE_COLORS[i % LINE_COLORS.len()];
        let drawn = chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?;
        if text {
            drawn.label(name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    if text && !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_FAMILY, 15))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(method: &str, top1: f64, std: Option<f64>) -> Summary {
        let st = |m: f64| Stat { mean: m, std, n: 3 };
        Summary {
            method: method.into(),
            variant: "k=32".into(),
            n_seeds: 3,
            seeds: vec![0, 1, 2],
            top1: st(top1),
            top5: None,
            many: Some(st(top1 + 10.0)),
            medium: Some(st(top1)),
            few: None,
            train_seconds: None,
            eval_seconds: None,
        }
    }

    #[test]
    fn charts_draw_without_text() {
        let path = Path::new("unused.png");
        let s = [summary("a", 50.0, Some(2.0)), summary("b", 60.0, None)];
        let png = render(path, bar_chart_size(2), |root| {
            draw_bars(root, "t", &s, false)
        })
        .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let series = vec![("s".to_string(), vec![(1.0, 2.0), (2.0, 3.0)])];
        let png = render(path, LINE_CHART_SIZE, |root| {
            draw_lines(root, "t", "x", "y", &series, false)
        })
        .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn y_axis_top() {
        assert_eq!(y_top(&[]), 10.0);
        assert_eq!(y_top(&[summary("a", 50.0, Some(2.0))]), 80.0);
        assert_eq!(y_top(&[summary("a", 85.0, Some(2.0))]), 100.0);
    }

    #[test]
    fn shorten_cuts_with_ellipsis() {
        assert_eq!(shorten("abcdef", 10), "abcdef");
        assert_eq!(shorten("abcdef", 4), "abc…");
    }
}
