//! Hand-written SVG charts of a summary: grouped bar charts with value labels on every bar
//! and a legend. Cost charts use a linear axis from zero (bar lengths compare as ratios);
//! latency charts a log axis, labelled so, since percentiles span three decades.
//!
//! Charts: `latency-<workload>.svg` (p50/p90/p99/p99.9 per scenario, one per request
//! workload, log axis), `cpu-per-1k-req.svg`, `cpu-per-gb.svg` (proxy CPU per scenario and
//! workload) and `memory-rss.svg`, `memory-rss-anon.svg` (steady memory per proxy process,
//! per scenario and workload).

use std::fmt::Write as _;

use crate::report::{Summary, num};

/// Bar colours, colour-blind safe (Okabe–Ito).
const PALETTE: [&str; 6] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00",
];

const BAR_W: f64 = 30.0;
const GROUP_GAP: f64 = 28.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 50.0;
const PLOT_H: f64 = 260.0;
const BOTTOM: f64 = 60.0;

/// Escapes text for SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis maximum ≥ `v` (1, 2, 2.5 or 5 times a power of ten).
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// The value axis of a chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// From zero: bar lengths compare as ratios (CPU, memory).
    Linear,
    /// Powers of ten: latency percentiles spanning 100 µs to 100 ms all stay readable.
    Log,
}

/// Maps values to plot heights (0 = baseline, 1 = top) and lists the tick values.
struct Scale {
    axis: Axis,
    lo: f64,
    hi: f64,
}

impl Scale {
    fn new(axis: Axis, values: impl Iterator<Item = f64> + Clone) -> Scale {
        let max = values.clone().fold(0.0, f64::max);
        match axis {
            Axis::Linear => Scale {
                axis,
                lo: 0.0,
                hi: nice_max(max),
            },
            Axis::Log => {
                let min = values.filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
                let lo = if min.is_finite() {
                    10f64.powf(min.log10().floor())
                } else {
                    1.0
                };
                let hi = 10f64.powf(max.max(lo * 10.0).log10().ceil());
                Scale { axis, lo, hi }
            }
        }
    }

    fn frac(&self, v: f64) -> f64 {
        let f = match self.axis {
            Axis::Linear => v / self.hi,
            Axis::Log if v <= self.lo => 0.0,
            Axis::Log => (v / self.lo).log10() / (self.hi / self.lo).log10(),
        };
        f.clamp(0.0, 1.0)
    }

    fn ticks(&self) -> Vec<f64> {
        match self.axis {
            Axis::Linear => (0..=5).map(|i| self.hi * i as f64 / 5.0).collect(),
            Axis::Log => {
                let mut t = Vec::new();
                let mut v = self.lo;
                while v <= self.hi * 1.0001 {
                    t.push(v);
                    v *= 10.0;
                }
                t
            }
        }
    }
}

/// A grouped bar chart: one group per `(label, values)`, one bar per series in each group
/// (`None` leaves a gap).
pub fn grouped_bars(
    title: &str,
    unit: &str,
    axis: Axis,
    series: &[String],
    groups: &[(String, Vec<Option<f64>>)],
) -> String {
    let per_group = series.len().max(1) as f64 * BAR_W;
    // Wide enough for the bars and legend, and for the title (~8 px per character at 15 px).
    let width = (LEFT + groups.len() as f64 * (per_group + GROUP_GAP) + GROUP_GAP + 150.0)
        .max(LEFT + title.chars().count() as f64 * 8.0 + 20.0);
    let height = TOP + PLOT_H + BOTTOM;
    let scale = Scale::new(
        axis,
        groups.iter().flat_map(|(_, v)| v.iter().flatten().copied()),
    );
    let y = |v: f64| TOP + PLOT_H - scale.frac(v) * PLOT_H;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.0}" transform="rotate(-90 14 {:.0})" text-anchor="middle">{}</text>"#,
        TOP + PLOT_H / 2.0,
        TOP + PLOT_H / 2.0,
        escape(&match axis {
            Axis::Linear => unit.to_string(),
            Axis::Log => format!("{unit} (log scale)"),
        })
    );
    let plot_right = width - 150.0;
    for v in scale.ticks() {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{plot_right:.0}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            yy + 4.0,
            num(v)
        );
    }
    for (gi, (label, values)) in groups.iter().enumerate() {
        let x0 = LEFT + GROUP_GAP + gi as f64 * (per_group + GROUP_GAP);
        for (si, v) in values.iter().enumerate() {
            let Some(v) = v else { continue };
            let x = x0 + si as f64 * BAR_W;
            let top = y(*v);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                BAR_W - 2.0,
                (TOP + PLOT_H - top).max(0.0),
                PALETTE[si % PALETTE.len()],
                escape(series.get(si).map(String::as_str).unwrap_or("")),
                num(*v)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                x + (BAR_W - 2.0) / 2.0,
                top - 3.0,
                num(*v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.0}" text-anchor="middle">{}</text>"#,
            x0 + per_group / 2.0,
            TOP + PLOT_H + 18.0,
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{:.0}" x2="{plot_right:.0}" y2="{:.0}" stroke="black"/>"#,
        TOP + PLOT_H,
        TOP + PLOT_H
    );
    for (si, name) in series.iter().enumerate() {
        let ly = TOP + 10.0 + si as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<rect x="{:.0}" y="{:.0}" width="12" height="12" fill="{}"/><text x="{:.0}" y="{:.0}">{}</text>"#,
            plot_right + 16.0,
            ly - 10.0,
            PALETTE[si % PALETTE.len()],
            plot_right + 34.0,
            ly,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn ordered<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.iter().any(|o| o == i) {
            out.push(i.to_string());
        }
    }
    out
}

/// Every chart of a summary, as (file name, SVG text).
pub fn charts(summary: &[Summary]) -> Vec<(String, String)> {
    let ok: Vec<&Summary> = summary.iter().filter(|s| s.runs > 0).collect();
    let workloads = ordered(ok.iter().map(|s| s.workload.as_str()));
    let scenarios = ordered(ok.iter().map(|s| s.scenario.as_str()));
    let proxied = ordered(
        ok.iter()
            .filter(|s| s.proxy_processes > 0)
            .map(|s| s.scenario.as_str()),
    );
    let find = |sc: &str, w: &str| ok.iter().find(|s| s.scenario == sc && s.workload == w);
    let bulk = |w: &str| w.starts_with("bulk");
    let mut out = Vec::new();

    let pct: Vec<String> = ["p50", "p90", "p99", "p99.9"].map(String::from).to_vec();
    for w in workloads.iter().filter(|w| !bulk(w)) {
        let groups: Vec<(String, Vec<Option<f64>>)> = scenarios
            .iter()
            .filter_map(|sc| find(sc, w))
            .map(|s| {
                (
                    s.scenario.clone(),
                    vec![
                        Some(s.p50_us),
                        Some(s.p90_us),
                        Some(s.p99_us),
                        Some(s.p999_us),
                    ],
                )
            })
            .collect();
        out.push((
            format!("latency-{w}.svg"),
            grouped_bars(&format!("Latency, {w}"), "µs", Axis::Log, &pct, &groups),
        ));
    }

    let by_workload = |pick: &dyn Fn(&Summary) -> Option<f64>, ws: Vec<&String>| {
        ws.into_iter()
            .map(|w| {
                let vals = proxied
                    .iter()
                    .map(|sc| find(sc, w).and_then(|s| pick(s)))
                    .collect();
                (w.clone(), vals)
            })
            .collect::<Vec<_>>()
    };
    let req_ws: Vec<&String> = workloads.iter().filter(|w| !bulk(w)).collect();
    if !req_ws.is_empty() && !proxied.is_empty() {
        let groups = by_workload(&|s| s.proxy_cpu_s_per_1k_req, req_ws);
        out.push((
            "cpu-per-1k-req.svg".into(),
            grouped_bars(
                "Proxy CPU per 1,000 requests (all proxy processes)",
                "CPU-seconds",
                Axis::Linear,
                &proxied,
                &groups,
            ),
        ));
    }
    let bulk_ws: Vec<&String> = workloads.iter().filter(|w| bulk(w)).collect();
    if !bulk_ws.is_empty() && !proxied.is_empty() {
        let groups = by_workload(&|s| s.proxy_cpu_s_per_gb, bulk_ws);
        out.push((
            "cpu-per-gb.svg".into(),
            grouped_bars(
                "Proxy CPU per GB carried (all proxy processes)",
                "CPU-seconds",
                Axis::Linear,
                &proxied,
                &groups,
            ),
        ));
    }
    if !proxied.is_empty() {
        let all_ws: Vec<&String> = workloads.iter().collect();
        for (file, title, pick) in [
            (
                "memory-rss.svg",
                "Steady RSS per proxy process",
                (|s: &Summary| Some(s.proxy_rss_mib)) as fn(&Summary) -> Option<f64>,
            ),
            (
                "memory-rss-anon.svg",
                "Steady RssAnon per proxy process",
                |s: &Summary| Some(s.proxy_rss_anon_mib),
            ),
        ] {
            let groups = by_workload(&pick, all_ws.clone());
            out.push((
                file.into(),
                grouped_bars(title, "MiB", Axis::Linear, &proxied, &groups),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(1000.0), 1000.0);
        assert_eq!(nice_max(0.021), 0.025);
    }

    #[test]
    fn log_scale_spans_whole_decades() {
        let s = Scale::new(Axis::Log, [150.0, 2_500.0, 45_000.0].into_iter());
        assert_eq!((s.lo, s.hi), (100.0, 100_000.0));
        assert_eq!(s.ticks(), vec![100.0, 1000.0, 10_000.0, 100_000.0]);
        assert!((s.frac(1000.0) - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.frac(50.0), 0.0);
        assert_eq!(s.frac(1e9), 1.0);
    }

    #[test]
    fn bars_are_escaped_and_scaled() {
        let svg = grouped_bars(
            "a <b>",
            "µs",
            Axis::Linear,
            &["x".into(), "y".into()],
            &[
                ("g&1".into(), vec![Some(50.0), None]),
                ("g2".into(), vec![Some(100.0), Some(25.0)]),
            ],
        );
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("g&amp;1"));
        // Three bars, the 100 one the full plot height.
        assert_eq!(svg.matches("<rect x=").count(), 3 + 2);
        assert!(svg.contains(&format!("height=\"{PLOT_H:.1}\"")));
    }
}
