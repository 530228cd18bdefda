//! The soak's plot, written by hand: panels stacked on one time axis, a polyline per series
//! (broken where a value is missing), a few ticks on each axis, a legend beside each panel, and
//! the faults as shaded spans with a labelled vertical line across every panel.

use std::fmt::Write;

/// One line of a panel: `(time in s, value)`, `None` where nothing was measured.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, Option<f64>)>,
}

pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

/// A fault: from `start` to `end` (s), named `label`.
pub struct Marker {
    pub start: f64,
    pub end: f64,
    pub label: String,
}

const WIDTH: f64 = 1100.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 60.0;
const PANEL_HEIGHT: f64 = 180.0;
const GAP: f64 = 60.0;

/// A step of 1, 2 or 5 times a power of ten giving about `ticks` ticks over `range`.
fn nice_step(range: f64, ticks: f64) -> f64 {
    let raw = (range / ticks).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|step| *step >= raw).unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The whole SVG document.
pub fn render(title: &str, x_max: f64, panels: &[Panel], markers: &[Marker]) -> String {
    let plot_width = WIDTH - LEFT - RIGHT;
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 10.0;
    let x_max = x_max.max(1.0);
    let x = |t: f64| LEFT + t.clamp(0.0, x_max) / x_max * plot_width;
    let mut svg = String::new();
    let _ = write!(svg, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" "#);
    let _ = writeln!(svg, r#"viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(svg, r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>"#, escape(title));
    let x_step = nice_step(x_max, 10.0);
    for (index, panel) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL_HEIGHT + GAP);
        let bottom = top + PANEL_HEIGHT;
        let y_data_max =
            panel.series.iter().flat_map(|s| s.points.iter().filter_map(|(_, v)| *v)).fold(0.0f64, f64::max);
        let y_step = nice_step(if y_data_max > 0.0 { y_data_max } else { 1.0 }, 4.0);
        let y_max = (y_data_max / y_step).ceil().max(1.0) * y_step;
        let y = |v: f64| bottom - v.clamp(0.0, y_max) / y_max * PANEL_HEIGHT;
        let _ =
            writeln!(svg, r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#, top - 8.0, escape(&panel.title));
        // Fault spans under everything else.
        for marker in markers {
            let (x0, x1) = (x(marker.start), x(marker.end.max(marker.start)));
            let width = (x1 - x0).max(1.5);
            let _ = write!(svg, r#"<rect x="{x0:.1}" y="{top}" width="{width:.1}" height="{PANEL_HEIGHT}" "#);
            let _ = writeln!(svg, r##"fill="#d62728" fill-opacity="0.12"/>"##);
            let _ = write!(svg, r#"<line x1="{x0:.1}" y1="{top}" x2="{x0:.1}" y2="{bottom}" "#);
            let _ = writeln!(svg, r##"stroke="#d62728" stroke-dasharray="4 3"/>"##);
        }
        // Axes, grid and ticks.
        let mut tick = 0.0;
        while tick <= y_max + y_step / 2.0 {
            let ty = y(tick);
            let (right, label_x, label_y) = (LEFT + plot_width, LEFT - 6.0, ty + 4.0);
            let _ = write!(svg, r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{right:.1}" y2="{ty:.1}" stroke="#e0e0e0"/>"##);
            let _ = writeln!(svg, r#"<text x="{label_x}" y="{label_y:.1}" text-anchor="end">{}</text>"#, number(tick));
            tick += y_step;
        }
        let mut tick = 0.0;
        while tick <= x_max + 1e-9 {
            let tx = x(tick);
            let (tick_end, label_y) = (bottom + 4.0, bottom + 17.0);
            let _ = write!(svg, r#"<line x1="{tx:.1}" y1="{bottom}" x2="{tx:.1}" y2="{tick_end}" stroke="black"/>"#);
            let _ = writeln!(svg, r#"<text x="{tx:.1}" y="{label_y}" text-anchor="middle">{}</text>"#, number(tick));
            tick += x_step;
        }
        let _ = writeln!(
            svg,
            r#"<polyline points="{LEFT},{top} {LEFT},{bottom} {:.1},{bottom}" fill="none" stroke="black"/>"#,
            LEFT + plot_width
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">time (s)</text>"##,
            LEFT + plot_width / 2.0,
            bottom + 32.0
        );
        // The lines: one polyline per run of measured points.
        for series in &panel.series {
            let mut runs: Vec<Vec<String>> = vec![Vec::new()];
            for (t, v) in &series.points {
                match v {
                    Some(v) => runs.last_mut().unwrap().push(format!("{:.1},{:.1}", x(*t), y(*v))),
                    None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
                    None => {}
                }
            }
            for run in runs.iter().filter(|r| !r.is_empty()) {
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.6"><title>{}</title></polyline>"#,
                    run.join(" "),
                    series.color,
                    escape(&series.name)
                );
            }
        }
        // The legend.
        for (i, series) in panel.series.iter().enumerate() {
            let ly = top + 12.0 + i as f64 * 18.0;
            let lx = LEFT + plot_width + 16.0;
            let (line_end, text_x, text_y, color) = (lx + 22.0, lx + 28.0, ly + 4.0, series.color);
            let _ = write!(
                svg,
                r#"<line x1="{lx}" y1="{ly}" x2="{line_end}" y2="{ly}" stroke="{color}" stroke-width="3"/>"#
            );
            let _ = writeln!(svg, r#"<text x="{text_x}" y="{text_y}">{}</text>"#, escape(&series.name));
        }
        if !markers.is_empty() {
            let ly = top + 12.0 + panel.series.len() as f64 * 18.0;
            let lx = LEFT + plot_width + 16.0;
            let (box_y, text_x, text_y) = (ly - 5.0, lx + 28.0, ly + 4.0);
            let _ = write!(
                svg,
                r##"<rect x="{lx}" y="{box_y}" width="22" height="10" fill="#d62728" fill-opacity="0.25"/>"##
            );
            let _ = writeln!(svg, r#"<text x="{text_x}" y="{text_y}">fault</text>"#);
        }
    }
    // Fault labels above the first panel, staggered on two rows so that neighbours stay readable.
    for (i, marker) in markers.iter().enumerate() {
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{}" fill="#d62728" font-size="10">{}</text>"##,
            x(marker.start) + 2.0,
            TOP - 30.0 + (i % 2) as f64 * 11.0,
            escape(&marker.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(100.0, 10.0), 10.0);
        assert_eq!(nice_step(60.0, 10.0), 10.0);
        assert_eq!(nice_step(1800.0, 10.0), 200.0);
        assert_eq!(nice_step(3.0, 4.0), 1.0);
    }
}
