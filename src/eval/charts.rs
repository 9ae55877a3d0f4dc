//! Line charts as standalone SVG (training curves in the reports): axes with round tick
//! values, a legend, optional dashed reference lines. SVG keeps text sharp at any zoom
//! and needs no font files.

use super::report::escape;

use std::fmt::Write;

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub colour: &'static str,
    pub points: Vec<(f64, f64)>,
    /// Thin and pale (e.g. noisy per-step values under their epoch means).
    pub faint: bool,
}

/// A horizontal dashed line with a label (e.g. the zero-shot score).
pub struct Reference {
    pub label: String,
    pub colour: &'static str,
    pub y: f64,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub references: Vec<Reference>,
    /// Fixed y range (e.g. 0..1 for IoU); otherwise fitted to the data.
    pub y_range: Option<(f64, f64)>,
}

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;

/// Round tick values within `[lo, hi]`, about `target` intervals (1, 2 or 5 times a power
/// of ten apart).
pub fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !lo.is_finite() || !hi.is_finite() || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    // the round step nearest to the raw one, on a log scale
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .min_by(|a, b| (a / raw).ln().abs().total_cmp(&(b / raw).ln().abs()))
        .unwrap_or(magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.abs() < 0.01 {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Chart {
    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x_lo, mut x_hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut y_lo, mut y_hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            x_lo = x_lo.min(x);
            x_hi = x_hi.max(x);
            y_lo = y_lo.min(y);
            y_hi = y_hi.max(y);
        }
        for r in &self.references {
            y_lo = y_lo.min(r.y);
            y_hi = y_hi.max(r.y);
        }
        if !x_lo.is_finite() {
            (x_lo, x_hi, y_lo, y_hi) = (0.0, 1.0, 0.0, 1.0);
        }
        if let Some((lo, hi)) = self.y_range {
            (y_lo, y_hi) = (lo, hi);
        } else {
            let pad = ((y_hi - y_lo) * 0.08).max(1e-6);
            y_lo = if y_lo >= 0.0 {
                (y_lo - pad).max(0.0)
            } else {
                y_lo - pad
            };
            y_hi += pad;
        }
        if x_hi <= x_lo {
            x_hi = x_lo + 1.0;
        }
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let sx = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w;
        let sy = |y: f64| TOP + (1.0 - (y - y_lo) / (y_hi - y_lo)) * plot_h;

        let mut svg = String::new();
        let _ = write!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\">\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
             <text x=\"{}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>",
            LEFT,
            escape(&self.title)
        );
        for t in ticks(y_lo, y_hi, 5) {
            let y = sy(t);
            let _ = write!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                WIDTH - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                label(t)
            );
        }
        for t in ticks(x_lo, x_hi, 8) {
            let x = sx(t);
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
                 <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                TOP + plot_h,
                TOP + plot_h + 4.0,
                TOP + plot_h + 16.0,
                label(t)
            );
        }
        let _ = write!(
            svg,
            "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>\
             <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text transform=\"translate(14,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            LEFT + plot_w / 2.0,
            HEIGHT - 10.0,
            escape(&self.x_label),
            TOP + plot_h / 2.0,
            escape(&self.y_label)
        );
        for r in &self.references {
            let y = sy(r.y);
            let _ = write!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{}\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{}\">{} {}</text>",
                WIDTH - RIGHT,
                r.colour,
                WIDTH - RIGHT - 4.0,
                y - 4.0,
                r.colour,
                escape(&r.label),
                label(r.y)
            );
        }
        let mut legend_x = LEFT + 8.0;
        for s in &self.series {
            let path: Vec<String> = s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let (width, opacity) = if s.faint { (1.0, 0.35) } else { (2.0, 1.0) };
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"{width}\" stroke-opacity=\"{opacity}\" points=\"{}\"/>",
                s.colour,
                path.join(" ")
            );
            if path.len() == 1 || (!s.faint && path.len() <= 30) {
                for p in &path {
                    let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                    let _ = write!(
                        svg,
                        "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{}\"/>",
                        s.colour
                    );
                }
            }
            let _ = write!(
                svg,
                "<rect x=\"{legend_x:.1}\" y=\"{}\" width=\"14\" height=\"3\" fill=\"{}\" fill-opacity=\"{opacity}\"/>\
                 <text x=\"{:.1}\" y=\"{}\">{}</text>",
                TOP + 9.0,
                s.colour,
                legend_x + 18.0,
                TOP + 14.0,
                escape(&s.name)
            );
            legend_x += 26.0 + 6.5 * s.name.len() as f64;
        }
        svg.push_str("</svg>");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let rounded: Vec<f64> = ticks(0.0, 1.0, 5)
            .iter()
            .map(|v| (v * 1e9).round() / 1e9)
            .collect();
        assert_eq!(rounded, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        let t = ticks(0.37, 12.2, 5);
        assert_eq!(t, vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        assert_eq!(ticks(3.0, 3.0, 5), vec![3.0]);
    }

    #[test]
    fn the_chart_draws_every_series_legend_and_reference() {
        let chart = Chart {
            title: "val <IoU>".into(),
            x_label: "epoch".into(),
            y_label: "IoU".into(),
            series: vec![Series {
                name: "fine-tuned".into(),
                colour: "#1f77b4",
                points: vec![(1.0, 0.5), (2.0, 0.7), (3.0, f64::NAN)],
                faint: false,
            }],
            references: vec![Reference {
                label: "zero-shot".into(),
                colour: "#d62728",
                y: 0.4,
            }],
            y_range: Some((0.0, 1.0)),
        };
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("val &lt;IoU&gt;"));
        assert!(svg.contains("fine-tuned") && svg.contains("zero-shot 0.4"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        // the NaN point is dropped; the two others get markers
        assert_eq!(svg.matches("<circle").count(), 2);
        // y = 0.5 of 0..1 lies halfway down the plot area
        let mid = TOP + (HEIGHT - TOP - BOTTOM) / 2.0;
        assert!(svg.contains(&format!(",{mid:.1}")));
    }
}
