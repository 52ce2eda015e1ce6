//! Hand-written SVG plot of a sweep: latency percentiles (log scale) against achieved
//! request rate, with the SLO as a dashed line and unsustainable steps marked.
//!
//! Invariants: output is a standalone SVG 1.1 document; all text is XML-escaped; points are
//! drawn in order of rate so the curves do not zig-zag when bisection steps were run late.

use std::fmt::Write as _;

use crate::sweep::SweepResult;

const W: f64 = 800.0;
const H: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// One series: label, colour, and how to read its value (µs) from a point.
type Series = (
    &'static str,
    &'static str,
    fn(&crate::sweep::SweepPoint) -> u64,
);

const SERIES: [Series; 4] = [
    ("p50", "#1f77b4", |p| p.latency_us.p50),
    ("p90", "#2ca02c", |p| p.latency_us.p90),
    ("p99", "#d62728", |p| p.latency_us.p99),
    ("p99.9", "#9467bd", |p| p.latency_us.p999),
];

/// Renders the sweep curve as an SVG document.
pub fn sweep_svg(result: &SweepResult, title: &str) -> String {
    let mut pts: Vec<_> = result.points.iter().collect();
    pts.sort_by(|a, b| a.achieved_rps.total_cmp(&b.achieved_rps));

    let x_max = pts.iter().map(|p| p.achieved_rps).fold(1.0, f64::max) * 1.05;
    let mut y_lo = result.slo_p99_us.max(1) as f64;
    let mut y_hi = y_lo;
    for p in &pts {
        for (_, _, f) in SERIES {
            let v = f(p).max(1) as f64;
            y_lo = y_lo.min(v);
            y_hi = y_hi.max(v);
        }
    }
    // Whole decades so the log axis has readable ticks.
    let d_lo = y_lo.log10().floor();
    let d_hi = (y_hi.log10().ceil()).max(d_lo + 1.0);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_max * pw;
    let sy = |us: f64| TOP + ph - (us.max(1.0).log10() - d_lo) / (d_hi - d_lo) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        esc(title)
    );
    // Axes and grid.
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let mut d = d_lo;
    while d <= d_hi + 1e-9 {
        let y = sy(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            fmt_us(10f64.powf(d))
        );
        d += 1.0;
    }
    for i in 0..=5 {
        let v = x_max * i as f64 / 5.0;
        let x = sx(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"#,
            TOP + ph + 18.0,
            v
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">achieved requests/s</text>"#,
        LEFT + pw / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency (log scale)</text>"#,
        TOP + ph / 2.0
    );
    // SLO.
    let slo_y = sy(result.slo_p99_us as f64);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{slo_y:.1}" x2="{:.1}" y2="{slo_y:.1}" stroke="#d62728" stroke-dasharray="6 4"/>"##,
        LEFT + pw
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" fill="#d62728">p99 SLO {}</text>"##,
        LEFT + 6.0,
        slo_y - 5.0,
        fmt_us(result.slo_p99_us as f64)
    );
    // Curves.
    for (i, (label, colour, f)) in SERIES.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.achieved_rps), sy(f(p) as f64)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        for p in &pts {
            let (x, y) = (sx(p.achieved_rps), sy(f(p) as f64));
            let fill = if p.sustainable { *colour } else { "white" };
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{fill}" stroke="{colour}"/>"#
            );
        }
        let ly = TOP + 20.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/>"#,
            LEFT + pw + 8.0,
            LEFT + pw + 28.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{label}</text>"#,
            LEFT + pw + 34.0,
            ly + 4.0
        );
    }
    let note_y = TOP + 20.0 + 18.0 * SERIES.len() as f64 + 10.0;
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{note_y:.1}">open dot: not sustained</text>"#,
        LEFT + pw + 8.0
    );
    if let Some(best) = result.max_sustainable_rps {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">max sustained: {best:.0} req/s</text>"#,
            LEFT + pw + 8.0,
            note_y + 18.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{} ms", us / 1e3)
    } else {
        format!("{us} us")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::LatencySummary;
    use crate::sweep::{SweepAxis, SweepPoint};

    #[test]
    fn renders_points_slo_and_escapes() {
        let pt = |rps: f64, p99: u64, ok: bool| SweepPoint {
            load: rps,
            achieved_rps: rps,
            latency_us: LatencySummary {
                p50: p99 / 4,
                p90: p99 / 2,
                p99,
                p999: p99 * 2,
                ..Default::default()
            },
            errors_total: 0,
            late_sends: 0,
            sustainable: ok,
            reason: None,
        };
        let r = SweepResult {
            axis: SweepAxis::Rate,
            slo_p99_us: 2000,
            max_sustainable_rps: Some(2000.0),
            max_sustainable_load: Some(2000.0),
            stopped_because: "x".into(),
            points: vec![
                pt(3000.0, 9000, false),
                pt(1000.0, 300, true),
                pt(2000.0, 900, true),
            ],
        };
        let svg = sweep_svg(&r, "a <b> & c");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 12);
        assert!(svg.contains("p99 SLO 2 ms"));
        assert!(svg.contains("max sustained: 2000 req/s"));
        // Sorted by rate: the first polyline x coordinates increase.
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let xs: Vec<f64> = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches("\"/>")
            .split(' ')
            .map(|p| p.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn empty_sweep_still_renders() {
        let r = SweepResult {
            axis: SweepAxis::Rate,
            slo_p99_us: 2000,
            max_sustainable_rps: None,
            max_sustainable_load: None,
            stopped_because: "x".into(),
            points: vec![],
        };
        assert!(sweep_svg(&r, "t").contains("</svg>"));
    }
}
