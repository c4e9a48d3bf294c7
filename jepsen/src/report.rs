//! The report directory: `history.json` (everything, re-checkable with `--check`),
//! `summary.txt`, `timeline.svg` (each operation's latency over time, nemesis intervals
//! shaded, as Jepsen draws it) and the nodes' logs.

use std::fmt::Write as _;
use std::path::Path;

use crate::checker::{Verdict, summary};
use crate::history::{History, OpKind, Outcome};

/// Writes the history, the summary and the timeline into `dir`.
pub fn write(dir: &Path, history: &History, verdict: &Verdict) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("history.json"), serde_json::to_vec_pretty(history)?)?;
    std::fs::write(dir.join("verdict.json"), serde_json::to_vec_pretty(verdict)?)?;
    std::fs::write(dir.join("summary.txt"), summary(history, verdict))?;
    std::fs::write(dir.join("timeline.svg"), timeline(history))?;
    Ok(())
}

const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

/// The timeline picture: x is time since the start, y the operation's latency on a log
/// scale; colour is the outcome, shape the kind.
pub fn timeline(history: &History) -> String {
    let end_ms = history.ops.iter().map(|op| op.completed_ms).fold(history.healed_ms, f64::max).max(1.0);
    let max_latency = history.ops.iter().map(|op| op.completed_ms - op.invoked_ms).fold(10.0, f64::max);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |ms: f64| LEFT + ms / end_ms * plot_w;
    let log_max = max_latency.log10().ceil().max(1.0);
    let y = |latency: f64| TOP + plot_h - (latency.max(1.0).log10() / log_max).clamp(0.0, 1.0) * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="13">wmail-jepsen, {} nodes, seed {}: latency of each operation (log scale) over time</text>"#,
        history.nodes, history.seed
    );
    // Nemesis intervals.
    let colours = [
        ("partition", "#ffb3b3"),
        ("kill", "#c9b3ff"),
        ("pause", "#b3d9ff"),
        ("skew", "#fff0a0"),
        ("disk", "#d0d0d0"),
        ("membership", "#b3ffcc"),
    ];
    let mut open: Vec<(String, f64, String)> = Vec::new();
    for event in &history.nemesis {
        if event.action == "start" && event.outcome == "ok" {
            open.push((event.nemesis.clone(), event.at_ms, event.detail.clone()));
        } else if event.action == "stop"
            && let Some(position) = open.iter().position(|(name, _, _)| *name == event.nemesis)
        {
            let (name, start, detail) = open.remove(position);
            shade(&mut svg, &colours, &name, &detail, x(start), x(event.at_ms));
        }
    }
    for (name, start, detail) in open {
        shade(&mut svg, &colours, &name, &detail, x(start), x(end_ms));
    }
    // Axes.
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="#333"/>"##,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h,
        TOP + plot_h
    );
    let step = nice_step(end_ms / 1000.0 / 10.0);
    let mut second = 0.0;
    while second * 1000.0 <= end_ms {
        let px = x(second * 1000.0);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#333"/><text x="{px:.1}" y="{}" text-anchor="middle">{second}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 18.0
        );
        second += step;
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since start</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    );
    for power in 0..=log_max as i32 {
        let latency = 10f64.powi(power);
        let py = y(latency);
        let label = if latency >= 1000.0 { format!("{} s", latency / 1000.0) } else { format!("{latency} ms") };
        let _ = write!(
            svg,
            r##"<line x1="{}" y1="{py:.1}" x2="{LEFT}" y2="{py:.1}" stroke="#333"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT - 5.0,
            LEFT - 8.0,
            py + 4.0
        );
    }
    // Operations.
    for op in &history.ops {
        let colour = match op.outcome {
            Outcome::Ok => "#1b9e3a",
            Outcome::Fail => "#d62828",
            Outcome::Info => "#f08c00",
        };
        let (px, py) = (x(op.invoked_ms), y(op.completed_ms - op.invoked_ms));
        let _ = write!(svg, "{}", mark(op.kind, px, py, colour));
    }
    // Legend.
    let lx = LEFT + plot_w + 15.0;
    let mut ly = TOP + 10.0;
    for (label, colour) in [("ok", "#1b9e3a"), ("fail", "#d62828"), ("info (indeterminate)", "#f08c00")] {
        let _ = write!(
            svg,
            r#"<circle cx="{lx}" cy="{ly}" r="4" fill="{colour}"/><text x="{}" y="{}">{label}</text>"#,
            lx + 10.0,
            ly + 4.0
        );
        ly += 16.0;
    }
    ly += 8.0;
    for kind in OpKind::ALL {
        let _ = write!(
            svg,
            "{}<text x=\"{}\" y=\"{}\">{}</text>",
            mark(kind, lx, ly, "#555"),
            lx + 10.0,
            ly + 4.0,
            kind.name()
        );
        ly += 16.0;
    }
    ly += 8.0;
    for (name, colour) in colours {
        let _ = write!(
            svg,
            r##"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{name}</text>"##,
            lx - 5.0,
            ly - 5.0,
            lx + 10.0,
            ly + 4.0
        );
        ly += 16.0;
    }
    svg.push_str("</svg>\n");
    svg
}

/// A shaded nemesis interval with its description as a tooltip.
fn shade(svg: &mut String, colours: &[(&str, &str)], name: &str, detail: &str, from: f64, to: f64) {
    let colour = colours.iter().find(|(n, _)| *n == name).map_or("#eeeeee", |(_, c)| c);
    let _ = write!(
        svg,
        r#"<rect x="{from:.1}" y="{TOP}" width="{:.1}" height="{}" fill="{colour}" fill-opacity="0.6"><title>{}: {}</title></rect>"#,
        (to - from).max(1.0),
        HEIGHT - TOP - BOTTOM,
        escape(name),
        escape(detail)
    );
}

/// The mark of one operation: circle (deliver), square (append), triangle (read),
/// diamond (flag), cross (create-account).
fn mark(kind: OpKind, x: f64, y: f64, colour: &str) -> String {
    match kind {
        OpKind::Deliver => format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{colour}"/>"#),
        OpKind::Append => {
            format!(r#"<rect x="{:.1}" y="{:.1}" width="5" height="5" fill="{colour}"/>"#, x - 2.5, y - 2.5)
        }
        OpKind::Read => format!(
            r#"<polygon points="{x:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{colour}"/>"#,
            y - 3.0,
            x - 3.0,
            y + 2.5,
            x + 3.0,
            y + 2.5
        ),
        OpKind::Flag => format!(
            r#"<polygon points="{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}" fill="{colour}"/>"#,
            y - 3.0,
            x + 3.0,
            y + 3.0,
            x - 3.0
        ),
        OpKind::CreateAccount => format!(
            r#"<path d="M{:.1},{:.1} l6,6 m0,-6 l-6,6" stroke="{colour}" stroke-width="1.5"/>"#,
            x - 3.0,
            y - 3.0
        ),
    }
}

/// 1, 2 or 5 times a power of ten, at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let power = 10f64.powf(rough.max(0.1).log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|step| *step >= rough).unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
