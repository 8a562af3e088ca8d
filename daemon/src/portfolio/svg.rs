//! Server-rendered line charts as inline SVG: a title, Japanese axes, a point per period with a
//! `<title>` tooltip, presentation attributes only (no script, no inline style: the pages' CSP
//! stays as it is). The page puts the same numbers in a table beside each chart.

use std::fmt::Write as _;

use super::grouped;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend's name (the field).
    pub name: String,
    /// One value per period (`None`: nothing recorded).
    pub points: Vec<Option<f64>>,
}

const W: f64 = 680.0;
const H: f64 = 300.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 52.0;
/// Room inside the plot before the first and after the last period (their labels).
const PAD: f64 = 28.0;
const BOTTOM: f64 = 56.0;
const COLORS: [&str; 6] = [
    "#1f5fa8", "#d4622a", "#2e8b57", "#8e44ad", "#b8860b", "#c0392b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" step for about five ticks over `span`.
fn step(span: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let nice = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The chart: `id` names its title for `aria-labelledby`.
pub fn line_chart(
    id: &str,
    title: &str,
    unit: &str,
    periods: &[String],
    series: &[Series],
) -> String {
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().flatten().copied())
        .collect();
    let lo = values.iter().copied().fold(0.0_f64, f64::min);
    let hi = values.iter().copied().fold(0.0_f64, f64::max);
    let st = step(hi - lo);
    let (y0, y1) = ((lo / st).floor() * st, ((hi / st).ceil() * st).max(st));
    let plot_w = W - LEFT - RIGHT - 2.0 * PAD;
    let plot_h = H - TOP - BOTTOM;
    let n = periods.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            LEFT + PAD + plot_w / 2.0
        } else {
            LEFT + PAD + plot_w * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| TOP + plot_h * (1.0 - (v - y0) / (y1 - y0));
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-labelledby="{id}-t {id}-d" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<title id="{id}-t">{}</title><desc id="{id}-d">{}（期間ごとの値は右の表を参照）</desc>"#,
        esc(title),
        esc(&series
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join("・"))
    );
    let _ = write!(
        s,
        r##"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold" fill="#222">{}</text>"##,
        W / 2.0,
        esc(title)
    );
    // Y grid and labels.
    let mut v = y0;
    while v <= y1 + st / 2.0 {
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            esc(&grouped(v))
        );
        v += st;
    }
    // Axes and their names.
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="#444"/><line x1="{LEFT}" y1="{0}" x2="{1}" y2="{0}" stroke="#444"/>"##,
        H - BOTTOM,
        W - RIGHT
    );
    let _ = write!(
        s,
        r##"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})" fill="#222">{}</text>"##,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        esc(if unit.is_empty() { "値" } else { unit })
    );
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#222">期間</text>"##,
        LEFT + PAD + plot_w / 2.0,
        H - 8.0
    );
    let every = n.div_ceil(12);
    for (i, p) in periods.iter().enumerate() {
        if i % every == 0 || i + 1 == n {
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
                x(i),
                H - BOTTOM + 18.0,
                esc(p)
            );
        }
    }
    // Lines, points, legend.
    for (k, ser) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut path = String::new();
        let mut pen_up = true;
        for (i, v) in ser.points.iter().enumerate() {
            match v {
                Some(v) => {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1} ",
                        if pen_up { "M" } else { "L" },
                        x(i),
                        y(*v)
                    );
                    pen_up = false;
                }
                None => pen_up = true,
            }
        }
        if !path.is_empty() {
            let _ = write!(
                s,
                r#"<path d="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.trim_end()
            );
        }
        for (i, v) in ser.points.iter().enumerate() {
            if let Some(v) = v {
                let _ = write!(
                    s,
                    r#"<circle class="point" cx="{:.1}" cy="{:.1}" r="4" fill="{color}" data-series="{}" data-period="{}" data-value="{v}"><title>{} {}: {}{}</title></circle>"#,
                    x(i),
                    y(*v),
                    esc(&ser.name),
                    esc(&periods[i]),
                    esc(&ser.name),
                    esc(&periods[i]),
                    esc(&grouped(*v)),
                    esc(unit)
                );
            }
        }
        let lx = LEFT + 10.0 + 150.0 * k as f64;
        let _ = write!(
            s,
            r##"<rect x="{lx}" y="34" width="14" height="4" fill="{color}"/><text x="{}" y="40" fill="#222">{}</text>"##,
            lx + 18.0,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_per_recorded_period() {
        let periods: Vec<String> = ["2027-04", "2027-05", "2027-06"].map(String::from).into();
        let svg = line_chart(
            "c1",
            "予算額・見込額の推移（万円）",
            "万円",
            &periods,
            &[
                Series {
                    name: "予算額".into(),
                    points: vec![Some(8000.0), Some(8000.0), Some(8000.0)],
                },
                Series {
                    name: "見込額".into(),
                    points: vec![Some(8300.0), None, Some(8500.0)],
                },
            ],
        );
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains(r#"data-series="見込額" data-period="2027-06" data-value="8500""#));
        assert!(svg.contains("<title id=\"c1-t\">予算額・見込額の推移（万円）</title>"));
        assert!(!svg.contains("style="));
        assert_eq!(step(8500.0), 2000.0);
    }
}
