//! The benchmarks' pictures: SVG files written next to their JSON (plotters'
//! SVG backend: text is SVG text, no font files or browser involved). Three
//! kinds: curves over a series (log axes where a series spans decades),
//! grouped bars, and distributions as box plots.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {why}")]
pub struct PlotError {
    pub path: PathBuf,
    pub why: String,
}

/// Where a bench's picture goes: its JSON path with `.svg`.
pub fn svg_next_to(json: &Path) -> PathBuf {
    json.with_extension("svg")
}

/// One line of a curve chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed-looking (thin, with hollow points): a target or a
    /// yardstick rather than a measurement of weft.
    pub reference: bool,
}

/// One chart of a picture.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |e| PlotError {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// A value for a log axis (log10; non-positive values are left out).
fn axis(v: f64, log: bool) -> Option<f64> {
    match log {
        true if v > 0.0 => Some(v.log10()),
        true => None,
        false => v.is_finite().then_some(v),
    }
}

/// A tick label: the value itself on a log axis too.
fn tick(v: f64, log: bool) -> String {
    let x = if log { 10f64.powf(v) } else { v };
    let a = x.abs();
    if a >= 1e7 || (a > 0.0 && a < 1e-3) {
        format!("{x:.0e}")
    } else if a >= 10.0 || x == x.round() {
        format!("{x:.0}")
    } else if a >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// The range of `vals` with a margin (log axes: whole decades).
fn range(vals: impl Iterator<Item = f64>, log: bool, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if log {
        return (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    }
    let lo = if from_zero { lo.min(0.0) } else { lo };
    let pad = ((hi - lo) * 0.08).max(1e-9);
    (if from_zero { lo } else { lo - pad }, hi + pad)
}

fn draw_panel(area: &Area<'_>, p: &Panel, path: &Path) -> Result<(), PlotError> {
    let e = err(path);
    let pts = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .filter_map(|(x, y)| Some((axis(*x, p.log_x)?, axis(*y, p.log_y)?)))
            .collect()
    };
    let all: Vec<(f64, f64)> = p.series.iter().flat_map(pts).collect();
    let (x0, x1) = range(all.iter().map(|a| a.0), p.log_x, false);
    let (y0, y1) = range(all.iter().map(|a| a.1), p.log_y, true);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(38)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| e(&x))?;
    let (lx, ly) = (p.log_x, p.log_y);
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .x_label_formatter(&|v| tick(*v, lx))
        .y_label_formatter(&|v| tick(*v, ly))
        .x_labels(if lx { (x1 - x0) as usize + 1 } else { 8 })
        .y_labels(if ly { (y1 - y0) as usize + 1 } else { 8 })
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, s) in p.series.iter().enumerate() {
        let c = color(i);
        let width = if s.reference { 1 } else { 2 };
        let points = pts(s);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(width)))
            .map_err(|x| e(&x))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        let reference = s.reference;
        chart
            .draw_series(points.into_iter().map(move |xy| {
                let style = if reference {
                    c.stroke_width(1)
                } else {
                    c.filled()
                };
                Circle::new(xy, 3, style)
            }))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

/// Curves: `panels` in a grid of `columns`, under `title`.
pub fn curves(path: &Path, title: &str, panels: &[Panel], columns: usize) -> Result<(), PlotError> {
    let e = err(path);
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns).max(1);
    let size = (440 * columns as u32, 320 * rows as u32 + 40);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|x| e(&x))?;
    for (area, p) in root.split_evenly((rows, columns)).iter().zip(panels) {
        draw_panel(area, p, path)?;
    }
    root.present().map_err(|x| e(&x))
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart whose x axis holds one category per unit (`names[i]` centred
/// on i + 0.5) and whose y axis spans `y`.
fn categories<'a, 'b>(
    area: &'a Area<'b>,
    title: &str,
    y_label: &str,
    names: &[String],
    y: std::ops::Range<f64>,
    path: &Path,
) -> Result<Chart<'a, 'b>, PlotError> {
    let e = err(path);
    let n = names.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..n, y)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&|v| {
            let i = v.floor() as usize;
            if (v - v.floor() - 0.5).abs() < 0.26 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| tick(*v, false))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|x| e(&x))?;
    Ok(chart)
}

/// Grouped bars: per group (x axis), one bar per member, with its value
/// written above it.
#[derive(Debug, Clone)]
pub struct Bars {
    pub title: String,
    pub y_label: String,
    /// (group, [(member, value)]); members in the same order in every group.
    pub groups: Vec<(String, Vec<(String, f64)>)>,
}

fn draw_bars(area: &Area<'_>, b: &Bars, path: &Path) -> Result<(), PlotError> {
    let e = err(path);
    let members: Vec<String> = b
        .groups
        .first()
        .map(|(_, m)| m.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let top = b
        .groups
        .iter()
        .flat_map(|(_, m)| m.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max)
        * 1.15;
    let names: Vec<String> = b.groups.iter().map(|(g, _)| g.clone()).collect();
    let mut chart = categories(area, &b.title, &b.y_label, &names, 0.0..top.max(1e-9), path)?;
    let k = members.len().max(1) as f64;
    let w = 0.8 / k;
    for (mi, member) in members.iter().enumerate() {
        let c = color(mi);
        let rects: Vec<(f64, f64, f64)> = b
            .groups
            .iter()
            .enumerate()
            .filter_map(|(gi, (_, m))| {
                let v = m.get(mi)?.1;
                let x = gi as f64 + 0.1 + w * mi as f64;
                Some((x, x + w * 0.92, v))
            })
            .collect();
        chart
            .draw_series(
                rects
                    .iter()
                    .map(|(a, z, v)| Rectangle::new([(*a, 0.0), (*z, *v)], c.filled())),
            )
            .map_err(|x| e(&x))?
            .label(member.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        chart
            .draw_series(rects.iter().map(|(a, _, v)| {
                Text::new(
                    tick(*v, false),
                    (*a, *v + top * 0.01),
                    ("sans-serif", 11).into_font(),
                )
            }))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

/// Bar charts side by side under `title`.
pub fn bars(path: &Path, title: &str, charts: &[Bars]) -> Result<(), PlotError> {
    let e = err(path);
    let cols = charts.len().max(1);
    let root = SVGBackend::new(path, (520 * cols as u32, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|x| e(&x))?;
    for (area, b) in root.split_evenly((1, cols)).iter().zip(charts) {
        draw_bars(area, b, path)?;
    }
    root.present().map_err(|x| e(&x))
}

/// Distributions as box plots (box: quartiles; line: median; whiskers: 5th
/// and 95th percentiles; dots: the rest).
#[derive(Debug, Clone)]
pub struct Distributions {
    pub title: String,
    pub y_label: String,
    pub samples: Vec<(String, Vec<f64>)>,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn draw_distributions(area: &Area<'_>, d: &Distributions, path: &Path) -> Result<(), PlotError> {
    let e = err(path);
    let sorted: Vec<Vec<f64>> = d
        .samples
        .iter()
        .map(|(_, v)| {
            let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            v
        })
        .collect();
    let (y0, y1) = range(sorted.iter().flatten().copied(), false, true);
    let names: Vec<String> = d.samples.iter().map(|(g, _)| g.clone()).collect();
    let mut chart = categories(area, &d.title, &d.y_label, &names, y0..y1, path)?;
    for (i, v) in sorted.iter().enumerate() {
        if v.is_empty() {
            continue;
        }
        let c = color(i);
        let x = i as f64 + 0.5;
        let (p5, q1, med, q3, p95) = (
            quantile(v, 0.05),
            quantile(v, 0.25),
            quantile(v, 0.5),
            quantile(v, 0.75),
            quantile(v, 0.95),
        );
        let (l, r) = (x - 0.2, x + 0.2);
        chart
            .draw_series([
                Rectangle::new([(l, q1), (r, q3)], c.mix(0.25).filled()),
                Rectangle::new([(l, q1), (r, q3)], c.stroke_width(1)),
            ])
            .map_err(|x| e(&x))?;
        chart
            .draw_series([
                PathElement::new(vec![(l, med), (r, med)], c.stroke_width(3)),
                PathElement::new(vec![(x, q3), (x, p95)], c.stroke_width(1)),
                PathElement::new(vec![(x, q1), (x, p5)], c.stroke_width(1)),
                PathElement::new(vec![(x - 0.1, p95), (x + 0.1, p95)], c.stroke_width(1)),
                PathElement::new(vec![(x - 0.1, p5), (x + 0.1, p5)], c.stroke_width(1)),
            ])
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                v.iter()
                    .filter(|y| **y < p5 || **y > p95)
                    .map(|y| Circle::new((x, *y), 2, c.filled())),
            )
            .map_err(|x| e(&x))?;
        chart
            .draw_series([Text::new(
                format!("median {}", tick(med, false)),
                (r + 0.02, med),
                ("sans-serif", 11).into_font(),
            )])
            .map_err(|x| e(&x))?;
    }
    Ok(())
}

/// Box plot charts side by side under `title`.
pub fn distributions(path: &Path, title: &str, charts: &[Distributions]) -> Result<(), PlotError> {
    let e = err(path);
    let cols = charts.len().max(1);
    let root = SVGBackend::new(path, (480 * cols as u32, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|x| e(&x))?;
    for (area, d) in root.split_evenly((1, cols)).iter().zip(charts) {
        draw_distributions(area, d, path)?;
    }
    root.present().map_err(|x| e(&x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_writes_an_svg_with_its_labels() {
        let dir = std::env::temp_dir().join(format!("weft-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("curves.svg");
        curves(
            &p,
            "scaling",
            &[Panel {
                title: "start".into(),
                x_label: "Nodes".into(),
                y_label: "s".into(),
                log_x: true,
                log_y: true,
                series: vec![Series {
                    name: "weftd".into(),
                    points: vec![(100.0, 0.02), (1000.0, 0.2), (10000.0, 2.0)],
                    reference: false,
                }],
            }],
            1,
        )
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("<svg"), "{text}");
        assert!(text.contains("weftd") && text.contains("10000"), "{text}");
        let b = dir.join("bars.svg");
        bars(
            &b,
            "dp",
            &[Bars {
                title: "Gbit/s".into(),
                y_label: "Gbit/s".into(),
                groups: vec![("vxlan".into(), vec![("1 stream".into(), 10.8)])],
            }],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&b).unwrap().contains("vxlan"));
        let d = dir.join("dist.svg");
        distributions(
            &d,
            "cni",
            &[Distributions {
                title: "ADD".into(),
                y_label: "ms".into(),
                samples: vec![("weft".into(), vec![1.0, 2.0, 3.0, 4.0, 50.0])],
            }],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&d).unwrap().contains("median 3"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
