//! `gateway client --plot run.svg`: the answers of a run counted per second as they arrive
//! ([`Timeline`]), and drawn as an SVG chart of admitted and limited requests per second, with
//! the limit's sustained rate (`q/w` of the request limit in `RateLimit-Policy`) as a dashed
//! line.
//!
//! Answers that failed (any other status, such as a `5xx`, or no answer within the timeout)
//! are counted in a third series, `failed`, drawn only when there are some, as the summary
//! counts them apart too. A connection error is not an answer and is not counted (it stops
//! the run).
//!
//! The counts the chart plots are also in the SVG's `<desc>`, one line per second
//! (`second,admitted,limited,failed`), so a reader (or a test) can check them against the
//! summary without reading pixels.

use std::time::Duration;

use plotters::prelude::*;

use super::report::{plural, Outcome};

/// The chart's size in pixels.
const SIZE: (u32, u32) = (960, 540);
/// Seconds after which answers all count in the last second: a bound on the memory a run of
/// days (long `Retry-After` pauses) can take.
const MAX_SECONDS: u64 = 7 * 24 * 3600;

const ADMITTED_COLOR: RGBColor = RGBColor(0x2e, 0x7d, 0x32);
const LIMITED_COLOR: RGBColor = RGBColor(0xe6, 0x5c, 0x00);
const FAILED_COLOR: RGBColor = RGBColor(0x75, 0x75, 0x75);
const LIMIT_COLOR: RGBColor = RGBColor(0xc6, 0x28, 0x28);

/// The request limit of a `RateLimit-Policy` item: `quota` requests per `window_secs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitRate {
    pub name: String,
    pub quota: u64,
    pub window_secs: u64,
}

impl LimitRate {
    /// The sustained rate: requests per second.
    pub fn per_second(&self) -> f64 {
        self.quota as f64 / self.window_secs as f64
    }

    /// `limit: 0.5 requests/s (default: 5 per 10 s)`.
    pub fn label(&self) -> String {
        format!(
            "limit: {} requests/s ({}: {} per {} s)",
            decimal(self.per_second()),
            self.name,
            self.quota,
            self.window_secs
        )
    }
}

/// `2`, `0.5`, `0.33`: at most two decimals, no trailing zeros.
fn decimal(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The first request limit of a `RateLimit-Policy` value (draft-10:
/// `"chat-requests";q=60;w=60, "chat-tokens";q=100000;w=60;qu="tokens"`): the first item with
/// a quota and a window whose unit is requests (no `qu`, or `qu="requests"`). Token quotas and
/// concurrency limits (no window) are not a rate of requests, so they are passed over.
pub fn request_limit(policy: &str) -> Option<LimitRate> {
    policy.split(',').find_map(|item| {
        let mut parts = item.split(';');
        let name = parts.next()?.trim().trim_matches('"').to_string();
        let (mut quota, mut window_secs, mut requests) = (None, None, true);
        for param in parts {
            match param.trim().split_once('=') {
                Some(("q", v)) => quota = v.trim().parse::<u64>().ok(),
                Some(("w", v)) => window_secs = v.trim().parse::<u64>().ok(),
                Some(("qu", v)) => requests = v.trim().trim_matches('"') == "requests",
                _ => {}
            }
        }
        match (quota, window_secs) {
            (Some(quota), Some(window_secs)) if requests && window_secs > 0 => {
                Some(LimitRate { name, quota, window_secs })
            }
            _ => None,
        }
    })
}

/// The answers that arrived in one second of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Second {
    pub admitted: u64,
    pub limited: u64,
    pub failed: u64,
}

/// Answers per second since the start of the run, and the limit the answers named.
#[derive(Debug, Default)]
pub struct Timeline {
    seconds: Vec<Second>,
    limit: Option<LimitRate>,
}

impl Timeline {
    /// Counts an answer that arrived `since_start` after the run began, in its second.
    pub fn record(&mut self, since_start: Duration, outcome: &Outcome) {
        let index = usize::try_from(since_start.as_secs().min(MAX_SECONDS)).unwrap_or(0);
        if self.seconds.len() <= index {
            self.seconds.resize(index + 1, Second::default());
        }
        let Some(second) = self.seconds.get_mut(index) else { return };
        match outcome {
            Outcome::Ok { .. } | Outcome::Chat { .. } => second.admitted += 1,
            Outcome::Limited { .. } => second.limited += 1,
            Outcome::Failed { .. } => second.failed += 1,
            Outcome::Unreachable(_) => {}
        }
    }

    /// Keeps the request limit of the first `RateLimit-Policy` that names one.
    pub fn note_policy(&mut self, policy: &str) {
        if self.limit.is_none() {
            self.limit = request_limit(policy);
        }
    }

    #[cfg(test)]
    pub fn limit(&self) -> Option<&LimitRate> {
        self.limit.as_ref()
    }

    #[cfg(test)]
    pub fn seconds(&self) -> &[Second] {
        &self.seconds
    }

    /// The answers of the whole run.
    pub fn totals(&self) -> Second {
        self.seconds.iter().fold(Second::default(), |sum, s| Second {
            admitted: sum.admitted + s.admitted,
            limited: sum.limited + s.limited,
            failed: sum.failed + s.failed,
        })
    }

    /// The counts as CSV lines (`second,admitted,limited,failed`), for the SVG's `<desc>`.
    pub fn csv(&self) -> String {
        let mut csv = String::from("second,admitted,limited,failed\n");
        for (i, s) in self.seconds.iter().enumerate() {
            csv.push_str(&format!("{i},{},{},{}\n", s.admitted, s.limited, s.failed));
        }
        csv
    }

    /// The line printed after the summary: where the chart is and what it shows.
    pub fn written_line(&self, path: &str) -> String {
        let limit = match &self.limit {
            Some(limit) => format!("the limit at {} requests/s", decimal(limit.per_second())),
            None => "no limit line (no RateLimit-Policy with a request limit in the answers)".to_string(),
        };
        format!(
            "Plot: {path} (admitted and limited requests per second over {}; {limit}).",
            plural(self.seconds.len() as u64, "second")
        )
    }

    /// The chart as an SVG document.
    pub fn svg(&self, title: &str) -> Result<String, String> {
        let mut svg = String::new();
        self.draw(&mut svg, title).map_err(|e| format!("cannot draw the chart: {e}"))?;
        Ok(with_title_and_desc(&svg, title, &self.csv()))
    }

    fn draw(&self, svg: &mut String, title: &str) -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let seconds = self.seconds.len().max(1) as u64;
        let busiest = self.seconds.iter().map(|s| s.admitted.max(s.limited).max(s.failed)).max().unwrap_or(0) as f64;
        // Headroom above the highest line for the legend in the upper right corner.
        let top = busiest.max(self.limit.as_ref().map_or(0.0, LimitRate::per_second)).max(1.0) * 1.3;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0..seconds, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("requests/s")
            .axis_desc_style(("sans-serif", 16))
            .draw()?;

        let mut series = vec![
            ("admitted", ADMITTED_COLOR, self.steps(|s| s.admitted)),
            ("limited", LIMITED_COLOR, self.steps(|s| s.limited)),
        ];
        if self.totals().failed > 0 {
            series.push(("failed", FAILED_COLOR, self.steps(|s| s.failed)));
        }
        for (label, color, points) in series {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        match &self.limit {
            Some(limit) => {
                let rate = limit.per_second();
                chart
                    .draw_series(DashedLineSeries::new(
                        [(0, rate), (seconds, rate)],
                        8,
                        5,
                        LIMIT_COLOR.stroke_width(2),
                    ))?
                    .label(limit.label())
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LIMIT_COLOR.stroke_width(2)));
            }
            None => {
                chart
                    .draw_series(std::iter::empty::<PathElement<(u64, f64)>>())?
                    .label("no limit line: no RateLimit-Policy with a request limit in the answers");
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// One count per second as a step: level from the start of its second to its end, since
    /// each count is a rate over that whole second.
    fn steps(&self, count: impl Fn(&Second) -> u64) -> Vec<(u64, f64)> {
        (0u64..)
            .zip(&self.seconds)
            .flat_map(|(i, s)| {
                let level = count(s) as f64;
                [(i, level), (i + 1, level)]
            })
            .collect()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `svg` with a `<title>` and a `<desc>` as the first children of its root element (plotters
/// draws shapes only).
fn with_title_and_desc(svg: &str, title: &str, desc: &str) -> String {
    let meta = format!("<title>{}</title>\n<desc>\n{}</desc>\n", escape(title), escape(desc));
    match svg.find("<svg").and_then(|start| svg[start..].find('>').map(|end| start + end + 1)) {
        Some(at) => {
            let (head, body) = svg.split_at(at);
            let body = body.strip_prefix('\n').unwrap_or(body);
            format!("{head}\n{meta}{body}")
        }
        None => svg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Outcome = Outcome::Ok { remaining: None, reset_secs: None, every_ms: None };
    const LIMITED: Outcome = Outcome::Limited { retry_after_secs: Some(1), why: None };

    #[test]
    fn the_limit_is_the_first_request_item_of_the_policy() {
        assert_eq!(
            request_limit("\"default\";q=5;w=10"),
            Some(LimitRate { name: "default".into(), quota: 5, window_secs: 10 })
        );
        assert_eq!(request_limit("\"default\";q=5;w=10").unwrap().per_second(), 0.5);
        // Tokens first (a quota of tokens, not of requests), then requests.
        let chat = "\"chat-tokens\";q=1000;w=60;qu=\"tokens\", \"chat-requests\";q=60;w=60";
        assert_eq!(request_limit(chat), Some(LimitRate { name: "chat-requests".into(), quota: 60, window_secs: 60 }));
        // A concurrency limit has no window; an explicit requests unit counts.
        let leases = "\"p-concurrent\";q=2;qu=\"concurrent-requests\", \"p\";q=3;w=1;qu=\"requests\"";
        assert_eq!(request_limit(leases), Some(LimitRate { name: "p".into(), quota: 3, window_secs: 1 }));
        for unusable in ["", "garbage", "\"a\";q=3", "\"a\";q=3;w=0", "\"a\";q=x;w=1", "\"t\";q=9;w=1;qu=\"tokens\""] {
            assert_eq!(request_limit(unusable), None, "{unusable}");
        }
        assert_eq!(
            request_limit("\"default\";q=5;w=10").unwrap().label(),
            "limit: 0.5 requests/s (default: 5 per 10 s)"
        );
        assert_eq!(decimal(2.0), "2");
        assert_eq!(decimal(1.0 / 3.0), "0.33");
    }

    #[test]
    fn answers_count_in_the_second_they_arrive() {
        let mut timeline = Timeline::default();
        let at = Duration::from_millis;
        timeline.record(at(0), &OK);
        timeline.record(at(999), &OK);
        timeline.record(at(999), &LIMITED);
        timeline.record(at(1000), &LIMITED);
        timeline.record(at(3500), &Outcome::Failed { status: 502, message: "down".into() });
        timeline.record(at(3600), &Outcome::Unreachable("refused".into()));
        let chat = Outcome::Chat { usage: None, left: Default::default(), streamed: false };
        timeline.record(at(3999), &chat);
        let s = |admitted, limited, failed| Second { admitted, limited, failed };
        assert_eq!(timeline.seconds(), [s(2, 1, 0), s(0, 1, 0), s(0, 0, 0), s(1, 0, 1)]);
        assert_eq!(timeline.totals(), s(3, 2, 1));
        assert_eq!(timeline.csv(), "second,admitted,limited,failed\n0,2,1,0\n1,0,1,0\n2,0,0,0\n3,1,0,1\n");
        // A run of weeks does not grow without bound.
        timeline.record(Duration::from_secs(u64::MAX), &OK);
        assert_eq!(timeline.seconds().len() as u64, MAX_SECONDS + 1);
    }

    #[test]
    fn the_first_policy_with_a_request_limit_is_kept() {
        let mut timeline = Timeline::default();
        timeline.note_policy("\"t\";q=9;w=1;qu=\"tokens\"");
        assert_eq!(timeline.limit(), None);
        timeline.note_policy("\"first\";q=2;w=1");
        timeline.note_policy("\"second\";q=7;w=1");
        assert_eq!(timeline.limit().map(|l| l.name.as_str()), Some("first"));
    }

    #[test]
    fn the_chart_has_a_title_axes_a_legend_and_its_counts() {
        let mut timeline = Timeline::default();
        timeline.record(Duration::from_millis(100), &OK);
        timeline.record(Duration::from_millis(1100), &LIMITED);
        let svg = timeline.svg("Run <1>").unwrap();
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(svg.contains(
            "<title>Run &lt;1&gt;</title>\n<desc>\nsecond,admitted,limited,failed\n0,1,0,0\n1,0,1,0\n</desc>"
        ));
        for text in ["seconds since start", "requests/s", "\nadmitted\n", "\nlimited\n", "\nno limit line: "] {
            assert!(svg.contains(text), "{text} in {svg}");
        }
        assert!(!svg.contains("\nfailed\n"), "no failed series without failures");
        // Each series is a step per second (two points), then its legend mark (one segment).
        let lines = |color: RGBColor| {
            let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
            svg.lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
                .map(|l| l.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split_whitespace().count())
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(ADMITTED_COLOR), [4, 2]);
        assert_eq!(lines(LIMITED_COLOR), [4, 2]);
        assert_eq!(lines(LIMIT_COLOR), [0usize; 0]);
        timeline.note_policy("\"default\";q=3;w=2");
        timeline.record(Duration::from_millis(1200), &Outcome::Failed { status: 500, message: String::new() });
        let svg = timeline.svg("run").unwrap();
        assert!(svg.contains("\nlimit: 1.5 requests/s (default: 3 per 2 s)\n"), "{svg}");
        assert!(svg.contains("\nfailed\n") && !svg.contains("no limit line"), "{svg}");
        assert_eq!(
            timeline.written_line("run.svg"),
            "Plot: run.svg (admitted and limited requests per second over 2 seconds; the limit at 1.5 requests/s)."
        );
    }
}
