//! `gateway client --plot`: the real client against a real gateway (Redis with the module, the
//! demo model), over a small limit so that some requests are refused; then the SVG it wrote is
//! read back: its structure, its legend, and whether the lines sit where the per-second counts
//! (its `<desc>`) say, on the chart's own axes, and whether those counts add up to the
//! client's summary and respect the limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;

/// The client's run: its summary and the chart it wrote.
struct Run {
    stdout: String,
    ok: u64,
    limited: u64,
    elapsed_secs: f64,
    svg: String,
}

/// Runs the client with `args` and `--plot <dir>/run.svg`; checks that it succeeded.
fn run_with_plot(dir: &Path, args: &[&str]) -> Run {
    let path = dir.join("run.svg");
    let path_text = path.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--plot", &path_text]);
    let out = run_client(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    // The summary is unchanged and still comes right after the answers; the chart's line follows.
    let summary = lines[lines.len() - 2];
    assert!(summary.starts_with("Summary: "), "{stdout}");
    assert!(lines[lines.len() - 1].starts_with(&format!("Plot: {path_text} (")), "{stdout}");
    let number_before = |suffix: &str| -> u64 {
        let head = summary.split(suffix).next().unwrap();
        head.rsplit(' ').next().unwrap().parse().unwrap_or_else(|e| panic!("{suffix} in {summary}: {e}"))
    };
    let elapsed_secs = summary.split(" in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    Run { ok: number_before(" OK"), limited: number_before(" rate limited"), elapsed_secs, svg, stdout }
}

/// The elements of an SVG document in order, checking that it is well formed as far as this
/// chart needs: one root `<svg>`, every element closed in order, attributes quoted, text
/// escaped.
#[derive(Debug)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    text: String,
}

impl Element {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The `points` of a polyline.
    fn points(&self) -> Vec<(f64, f64)> {
        let points = self.attribute("points").unwrap_or_else(|| panic!("no points: {self:?}"));
        points
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }
}

fn parse_svg(svg: &str) -> Vec<Element> {
    let mut elements: Vec<Element> = Vec::new();
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut rest = svg.trim();
    assert!(rest.starts_with("<svg "), "not an SVG document: {}", &svg[..svg.len().min(200)]);
    while !rest.is_empty() {
        if let Some(tag) = rest.strip_prefix('<') {
            let end = tag.find('>').unwrap_or_else(|| panic!("unclosed tag: {}", &tag[..tag.len().min(80)]));
            let inside = &tag[..end];
            rest = &tag[end + 1..];
            if let Some(name) = inside.strip_prefix('/') {
                let (opened, _) = open.pop().unwrap_or_else(|| panic!("</{name}> closes nothing"));
                assert_eq!(opened, name, "</{name}> closes <{opened}>");
                continue;
            }
            let self_closing = inside.ends_with('/');
            let inside = inside.trim_end_matches('/');
            let (name, mut attributes_text) = inside.split_once(' ').unwrap_or((inside, ""));
            assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()), "bad tag <{inside}>");
            assert!(
                open.is_empty() == (name == "svg" && elements.is_empty()),
                "<{name}> outside the root or a second root"
            );
            let mut attributes = Vec::new();
            loop {
                attributes_text = attributes_text.trim_start();
                if attributes_text.is_empty() {
                    break;
                }
                let (key, value) =
                    attributes_text.split_once("=\"").unwrap_or_else(|| panic!("bad attributes in <{inside}>"));
                let (value, after) =
                    value.split_once('"').unwrap_or_else(|| panic!("unquoted attribute in <{inside}>"));
                assert!(!value.contains('<'), "unescaped < in <{inside}>");
                attributes.push((key.trim().to_string(), value.to_string()));
                attributes_text = after;
            }
            elements.push(Element { name: name.to_string(), attributes, text: String::new() });
            if !self_closing {
                open.push((name.to_string(), elements.len() - 1));
            }
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..end];
            rest = &rest[end..];
            assert!(text.trim().is_empty() || !open.is_empty(), "text outside the root: {text}");
            assert!(!text.contains('>'), "unescaped > in {text}");
            if let Some((_, index)) = open.last() {
                elements[*index].text.push_str(text.trim());
            }
        }
    }
    assert!(open.is_empty(), "never closed: {open:?}");
    elements
}

/// The per-second counts the chart says it plotted: `(admitted, limited, failed)` per second.
fn counts(elements: &[Element]) -> Vec<(u64, u64, u64)> {
    let desc = elements.iter().find(|e| e.name == "desc").expect("a <desc> with the counts");
    let mut lines = desc.text.lines().map(str::trim).filter(|l| !l.is_empty());
    assert_eq!(lines.next(), Some("second,admitted,limited,failed"), "{}", desc.text);
    lines
        .enumerate()
        .map(|(i, line)| {
            let fields: Vec<u64> = line.split(',').map(|f| f.parse().unwrap()).collect();
            assert_eq!(fields.len(), 4, "{line}");
            assert_eq!(fields[0], i as u64, "one line per second, in order: {}", desc.text);
            (fields[1], fields[2], fields[3])
        })
        .collect()
}

/// The value-to-pixel map of an axis, from its tick labels: `(value, pixel)` pairs fitted to
/// `pixel = a + b * value`.
struct Axis {
    a: f64,
    b: f64,
}

impl Axis {
    fn from_ticks(ticks: &[(f64, f64)]) -> Axis {
        assert!(ticks.len() >= 2, "at least two tick labels: {ticks:?}");
        let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
        let b = (last.1 - first.1) / (last.0 - first.0);
        let a = first.1 - b * first.0;
        for (value, pixel) in ticks {
            assert!((a + b * value - pixel).abs() <= 1.0, "ticks are not on one linear axis: {ticks:?}");
        }
        Axis { a, b }
    }

    fn pixel(&self, value: f64) -> f64 {
        self.a + self.b * value
    }
}

/// The chart read back from its SVG.
struct Chart {
    /// The legend's entries, top down.
    legend: Vec<String>,
    /// The stroke color of each legend entry with a mark (the entries' colors, in order).
    legend_strokes: Vec<String>,
    /// Polylines by stroke color, without the legend's marks.
    lines: Vec<(String, Vec<(f64, f64)>)>,
    x: Axis,
    y: Axis,
    counts: Vec<(u64, u64, u64)>,
}

impl Chart {
    fn read(svg: &str) -> Chart {
        let elements = parse_svg(svg);
        assert!(elements[0].name == "svg" && elements[0].attribute("xmlns") == Some("http://www.w3.org/2000/svg"));
        let title = elements.iter().find(|e| e.name == "title").expect("a <title>");
        let texts: Vec<&Element> = elements.iter().filter(|e| e.name == "text").collect();
        assert!(texts.iter().any(|t| t.text == title.text), "the title is drawn too: {}", title.text);
        for axis_label in ["seconds since start", "requests/s"] {
            assert!(texts.iter().any(|t| t.text == axis_label), "axis label {axis_label}");
        }
        let ticks = |anchor: &str, coordinate: &str| -> Vec<(f64, f64)> {
            texts
                .iter()
                .filter(|t| t.attribute("text-anchor") == Some(anchor))
                .filter_map(|t| Some((t.text.parse::<f64>().ok()?, t.attribute(coordinate)?.parse::<f64>().ok()?)))
                .collect()
        };
        // The y axis's labels are right-aligned against it, the x axis's centered under it.
        let (x, y) = (Axis::from_ticks(&ticks("middle", "x")), Axis::from_ticks(&ticks("end", "y")));
        assert!(y.b < 0.0 && x.b > 0.0, "y grows upwards, x to the right");
        let legend: Vec<String> =
            texts.iter().filter(|t| t.attribute("text-anchor") == Some("start")).map(|t| t.text.clone()).collect();
        let polylines: Vec<(String, Vec<(f64, f64)>)> = elements
            .iter()
            .filter(|e| e.name == "polyline")
            .map(|e| (e.attribute("stroke").unwrap().to_string(), e.points()))
            .collect();
        // The legend's marks are drawn last, one per entry that has a line.
        let marks = legend.iter().filter(|l| !l.starts_with("no limit line")).count();
        let (lines, legend_marks) = polylines.split_at(polylines.len() - marks);
        let legend_strokes = legend_marks.iter().map(|(stroke, _)| stroke.clone()).collect();
        Chart { legend, legend_strokes, lines: lines.to_vec(), x, y, counts: counts(&elements) }
    }

    /// The color of the legend entry `label`.
    fn stroke_of(&self, label: &str) -> &str {
        let index =
            self.legend.iter().position(|l| l == label).unwrap_or_else(|| panic!("{label} in {:?}", self.legend));
        &self.legend_strokes[index]
    }

    /// The points of the lines in `stroke`.
    fn lines_in(&self, stroke: &str) -> Vec<&Vec<(f64, f64)>> {
        self.lines.iter().filter(|(s, _)| s == stroke).map(|(_, points)| points).collect()
    }

    /// Checks that the series `label` is one step per second at that second's count.
    fn assert_plots(&self, label: &str, count: impl Fn(&(u64, u64, u64)) -> u64) {
        let lines = self.lines_in(self.stroke_of(label));
        assert_eq!(lines.len(), 1, "one line for {label}: {lines:?}");
        let points = lines[0];
        assert_eq!(points.len(), 2 * self.counts.len(), "two points per second for {label}: {points:?}");
        for (second, (pair, counts)) in points.chunks(2).zip(&self.counts).enumerate() {
            let expected_y = self.y.pixel(count(counts) as f64);
            for (point, at) in pair.iter().zip([second, second + 1]) {
                assert!(
                    (point.0 - self.x.pixel(at as f64)).abs() <= 1.0 && (point.1 - expected_y).abs() <= 1.0,
                    "{label} in second {second} ({counts:?}) is drawn at {point:?}, not at ({}, {expected_y})",
                    self.x.pixel(at as f64)
                );
            }
        }
    }

    /// Checks that the limit is one dashed horizontal line at `rate` across the whole run.
    fn assert_limit_line(&self, label: &str, rate: f64) {
        let dashes = self.lines_in(self.stroke_of(label));
        assert!(dashes.len() > 3, "a dashed line: {dashes:?}");
        let y = self.y.pixel(rate);
        assert!(dashes.iter().flat_map(|d| d.iter()).all(|p| (p.1 - y).abs() <= 1.0), "the limit at {y}: {dashes:?}");
        let xs = dashes.iter().flat_map(|d| d.iter().map(|p| p.0));
        let (left, right) = xs.fold((f64::MAX, f64::MIN), |(l, r), x| (l.min(x), r.max(x)));
        assert!((left - self.x.pixel(0.0)).abs() <= 1.0, "from the start: {left}");
        assert!((right - self.x.pixel(self.counts.len() as f64)).abs() <= 1.0, "to the end: {right}");
    }
}

fn totals(counts: &[(u64, u64, u64)]) -> (u64, u64, u64) {
    counts.iter().fold((0, 0, 0), |t, c| (t.0 + c.0, t.1 + c.1, t.2 + c.2))
}

#[tokio::test]
async fn the_chart_plots_the_answers_per_second_and_the_limit() {
    let redis = RedisServer::start();
    let model = start_model(0);
    // 2 requests per second, burst 2; the client asks for 8 a second for 3 seconds.
    let gateway = start_gateway(&redis, &model.url(""), 2, 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let url = gateway.url("/v1/predict");
    let run = run_with_plot(dir.path(), &["--url", &url, "-n", "24", "--rate", "8", "-c", "2", "--api-key", "plot"]);
    let chart = Chart::read(&run.svg);

    assert_eq!(
        chart.legend,
        ["admitted", "limited", "limit: 2 requests/s (default: 2 per 1 s)"],
        "no failed series without failures"
    );
    // The counts it plotted are the client's answers, all of them.
    let seconds = chart.counts.len();
    assert!(run.stdout.ends_with(&format!(
        "(admitted and limited requests per second over {seconds} seconds; the limit at 2 requests/s).\n"
    )));
    assert_eq!(totals(&chart.counts), (run.ok, run.limited, 0), "{}", run.stdout);
    assert_eq!(run.ok + run.limited, 24, "{}", run.stdout);
    // Answers arrive over the whole run, and every second is one bucket.
    assert!(seconds as f64 >= run.elapsed_secs.floor() && seconds as f64 <= run.elapsed_secs.ceil() + 1.0);
    assert!(seconds >= 3, "24 requests at 8/s take about 3 s: {:?}", chart.counts);
    // The limit holds, second by second: at most the burst (2) and what refills in a second (2).
    assert!(run.limited > 0, "{}", run.stdout);
    for (second, (admitted, ..)) in chart.counts.iter().enumerate() {
        assert!(*admitted <= 4, "second {second} admitted {admitted}: {:?}", chart.counts);
    }
    assert!(run.ok as f64 <= 2.0 + 2.0 * run.elapsed_secs + 1.0, "{}", run.stdout);

    chart.assert_plots("admitted", |c| c.0);
    chart.assert_plots("limited", |c| c.1);
    chart.assert_limit_line("limit: 2 requests/s (default: 2 per 1 s)", 2.0);
    let strokes: std::collections::HashSet<&String> = chart.legend_strokes.iter().collect();
    assert_eq!(strokes.len(), 3, "each series its own color: {:?}", chart.legend_strokes);
}

/// An LLM route: the answers' `RateLimit-Policy` lists a token limit and a request limit; the
/// line is the request limit.
const CHAT: &str = "[[policy]]\nname = \"chat\"\npaths = [\"/v1/chat/completions\"]\nkind = \"openai\"\n\
    limit = 3\nwindow = 1\n[[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 100000\nwindow = 60\n";

#[tokio::test]
async fn chat_mode_plots_too_with_the_request_limit_as_the_line() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_config_dir, config) = config_file(CHAT);
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), config.display().to_string()]);
    let policy = predict_policy(&gateway).await;
    assert!(policy.contains("qu=\"tokens\""), "the policy has a token limit: {policy}");

    let dir = tempfile::tempdir().unwrap();
    let url = gateway.url("/v1/chat/completions");
    let run =
        run_with_plot(dir.path(), &["--chat", "--url", &url, "-n", "10", "--rate", "6", "--api-key", "plot-chat"]);
    assert!(run.stdout.contains("tokens used"), "{}", run.stdout);
    let chart = Chart::read(&run.svg);
    let label = "limit: 3 requests/s (chat-requests: 3 per 1 s)";
    assert_eq!(chart.legend, ["admitted", "limited", label]);
    assert_eq!(totals(&chart.counts), (run.ok, run.limited, 0), "{}", run.stdout);
    assert!(run.limited > 0 && run.ok > 0, "{}", run.stdout);
    chart.assert_plots("admitted", |c| c.0);
    chart.assert_plots("limited", |c| c.1);
    chart.assert_limit_line(label, 3.0);
}

/// The `RateLimit-Policy` of a chat completion through `gateway` (with its own API key, so the
/// client's budget is untouched).
async fn predict_policy(gateway: &Proc) -> String {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
    let headers = [("content-type", "application/json"), ("authorization", "Bearer policy-probe")];
    let answer = send(hyper::Method::POST, &gateway.url("/v1/chat/completions"), &headers, body).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}\n{}", gateway.logs());
    answer.header("ratelimit-policy").to_string()
}

#[tokio::test]
async fn without_a_policy_header_there_is_no_limit_line_and_the_legend_says_so() {
    // The model itself sends no rate-limit headers.
    let model = start_model(0);
    let dir = tempfile::tempdir().unwrap();
    let url = model.url("/v1/predict");
    let run = run_with_plot(dir.path(), &["--url", &url, "-n", "5"]);
    assert!(run.stdout.ends_with("no limit line (no RateLimit-Policy with a request limit in the answers)).\n"));
    let chart = Chart::read(&run.svg);
    assert_eq!(
        chart.legend,
        ["admitted", "limited", "no limit line: no RateLimit-Policy with a request limit in the answers"]
    );
    assert_eq!(totals(&chart.counts), (5, 0, 0));
    chart.assert_plots("admitted", |c| c.0);
    chart.assert_plots("limited", |c| c.1);
    assert_eq!(chart.legend_strokes.len(), 2, "no mark for the missing limit");
}

#[tokio::test]
async fn failed_answers_are_a_series_of_their_own() {
    // A gateway whose upstream is gone answers 502: failed, neither admitted nor limited.
    let redis = RedisServer::start();
    let gateway = start_gateway(&redis, &format!("http://127.0.0.1:{}", dead_port()), 100, 60, &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.svg");
    let url = gateway.url("/v1/predict");
    let out = run_client(&["--url", &url, "-n", "3", "--plot", &path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "some failed: {stdout}");
    assert!(stdout.contains(": 0 OK, 0 rate limited, 3 failed."), "{stdout}");
    let chart = Chart::read(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(chart.legend, ["admitted", "limited", "failed", "limit: 1.67 requests/s (default: 100 per 60 s)"]);
    assert_eq!(totals(&chart.counts), (0, 0, 3));
    chart.assert_plots("failed", |c| c.2);
}

#[test]
fn an_unwritable_plot_path_stops_the_client_before_it_sends() {
    let out = run_client(&["--url", "http://127.0.0.1:1/", "-n", "1", "--plot", "/nonexistent-dir/run.svg"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: cannot write the plot to /nonexistent-dir/run.svg"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing sent: {}", String::from_utf8_lossy(&out.stdout));
}
