//! The demo client: sends requests to an endpoint and says, per request, what the gateway
//! answered, in words:
//!
//! ```text
//! Request 3: OK. You can send 7 more requests in the next 42 seconds.
//! Request 11: rate limited. Please try again after 6 seconds.
//! ```
//!
//! The numbers come from the `RateLimit` header (else `X-RateLimit-Remaining`/`-Reset`) and
//! `Retry-After`. With `wait`, a `429` pauses every sender for `Retry-After` seconds before
//! the next request. A connection error stops the run with a clear message and exit code 2.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::plural;
use crate::proxy::error_chain;

/// The longest the client waits: between two requests (`--rate`) and for a `Retry-After`.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The spacing between requests for `rate` requests per second, or why the rate is unusable
/// (not a positive number, or slower than one request per [`MAX_WAIT`]).
pub fn interval(rate: f64) -> Result<Duration, String> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("--rate must be a positive number of requests per second (got {rate})"));
    }
    match Duration::try_from_secs_f64(1.0 / rate) {
        Ok(every) if every <= MAX_WAIT => Ok(every),
        _ => Err(format!(
            "--rate {rate} is too slow: at least one request per {} s (--rate {}) is needed",
            MAX_WAIT.as_secs(),
            1.0 / MAX_WAIT.as_secs_f64()
        )),
    }
}

/// Seconds to wait for a `Retry-After` of `secs`: at most [`MAX_WAIT`].
pub fn retry_wait_secs(secs: u64) -> u64 {
    secs.min(MAX_WAIT.as_secs())
}

/// The line printed before waiting for a `Retry-After` of `secs`.
pub fn waiting_line(secs: u64) -> String {
    let wait = retry_wait_secs(secs);
    if wait < secs {
        format!(
            "Retry-After asks for {}; waiting {} (the longest wait) instead...",
            plural(secs, "second"),
            plural(wait, "second")
        )
    } else {
        format!("Waiting {} as Retry-After asks...", plural(secs, "second"))
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub url: Uri,
    pub count: u64,
    /// Requests per second over all senders; `None` sends as fast as answers come.
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub method: Method,
    /// Sent as JSON `{"text": ...}` (not for `GET`).
    pub text: String,
    pub api_key: Option<String>,
    /// `authorization` sends `Bearer <key>`; any other header carries the key as is.
    pub api_key_header: HeaderName,
    pub wait: bool,
    pub timeout: Duration,
}

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok { remaining: Option<u64>, reset_secs: Option<u64> },
    Limited { retry_after_secs: Option<u64> },
    Failed { status: u16, message: String },
    Unreachable(String),
}

/// The line printed for request `n`.
pub fn describe(n: u64, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok { remaining: Some(r), reset_secs: Some(t) } => format!(
            "Request {n}: OK. You can send {} more {} in the next {}.",
            r,
            if *r == 1 { "request" } else { "requests" },
            plural(*t, "second")
        ),
        Outcome::Ok { remaining: Some(r), reset_secs: None } => {
            format!("Request {n}: OK. You can send {r} more {}.", if *r == 1 { "request" } else { "requests" })
        }
        Outcome::Ok { .. } => format!("Request {n}: OK."),
        Outcome::Limited { retry_after_secs: Some(s) } => {
            format!("Request {n}: rate limited. Please try again after {}.", plural(*s, "second"))
        }
        Outcome::Limited { retry_after_secs: None } => format!("Request {n}: rate limited."),
        Outcome::Failed { status, message } => format!("Request {n}: failed with HTTP {status}: {message}"),
        Outcome::Unreachable(why) => format!("Request {n}: cannot connect: {why}"),
    }
}

/// `r` and `t` of the first item of a `RateLimit` header (`"default";r=7;t=42`).
pub fn parse_ratelimit(value: &str) -> (Option<u64>, Option<u64>) {
    let first = value.split(',').next().unwrap_or("");
    let mut remaining = None;
    let mut reset = None;
    for param in first.split(';').skip(1) {
        match param.trim().split_once('=') {
            Some(("r", v)) => remaining = v.trim().parse().ok(),
            Some(("t", v)) => reset = v.trim().parse().ok(),
            _ => {}
        }
    }
    (remaining, reset)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Classifies an answer from its status, headers and body.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::Limited { retry_after_secs: header_u64(headers, "retry-after") };
    }
    if status.is_success() {
        let (mut remaining, mut reset_secs) =
            headers.get("ratelimit").and_then(|v| v.to_str().ok()).map(parse_ratelimit).unwrap_or((None, None));
        remaining = remaining.or_else(|| header_u64(headers, "x-ratelimit-remaining"));
        reset_secs = reset_secs.or_else(|| header_u64(headers, "x-ratelimit-reset"));
        return Outcome::Ok { remaining, reset_secs };
    }
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    Outcome::Failed { status: status.as_u16(), message }
}

/// Totals for the summary line and the exit code.
#[derive(Debug, Default)]
pub struct Summary {
    pub ok: u64,
    pub limited: u64,
    pub failed: u64,
    pub unreachable: Option<String>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn line(&self) -> String {
        let sent = self.ok + self.limited + self.failed;
        let mut line = format!(
            "Summary: {} in {:.1} s: {} OK, {} rate limited",
            plural(sent, "request"),
            self.elapsed.as_secs_f64(),
            self.ok,
            self.limited
        );
        if self.failed > 0 {
            line.push_str(&format!(", {} failed", self.failed));
        }
        line.push('.');
        line
    }

    /// 0 when every request got an answer (admitted or limited), 1 when some failed, 2 when
    /// the endpoint could not be reached.
    pub fn exit_code(&self) -> i32 {
        if self.unreachable.is_some() {
            2
        } else if self.failed > 0 {
            1
        } else {
            0
        }
    }
}

struct Shared {
    options: ClientOptions,
    client: Client<HttpConnector, Full<Bytes>>,
    next_request: AtomicU64,
    stop: AtomicBool,
    /// Next send slot (for `rate`) and the end of a Retry-After pause.
    schedule: Mutex<(Instant, Instant)>,
    summary: Mutex<Summary>,
}

impl Shared {
    /// Waits for this sender's turn: after any pause, and spaced by `rate`.
    async fn wait_turn(&self) {
        if let Some(at) = self.wait_turn_at() {
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// Books this sender's turn and returns when it is.
    fn wait_turn_at(&self) -> Option<Instant> {
        let mut schedule = self.schedule.lock().ok()?;
        let now = Instant::now();
        let at = schedule.0.max(schedule.1).max(now);
        if let Some(rate) = self.options.rate {
            schedule.0 = at + interval(rate).unwrap_or(MAX_WAIT);
        }
        Some(at)
    }

    fn pause_for(&self, secs: u64) {
        if let Ok(mut schedule) = self.schedule.lock() {
            let until = Instant::now() + Duration::from_secs(retry_wait_secs(secs));
            schedule.1 = schedule.1.max(until);
        }
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, String> {
        let o = &self.options;
        let body = if o.method == Method::GET || o.method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(serde_json::json!({ "text": o.text }).to_string())
        };
        let mut builder = Request::builder().method(o.method.clone()).uri(o.url.clone());
        if !body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(key) = &o.api_key {
            let value = if o.api_key_header == header::AUTHORIZATION { format!("Bearer {key}") } else { key.clone() };
            let value =
                HeaderValue::from_str(&value).map_err(|_| "the API key is not a valid header value".to_string())?;
            builder = builder.header(o.api_key_header.clone(), value);
        }
        builder.body(Full::new(body)).map_err(|e| e.to_string())
    }

    async fn send(&self) -> Outcome {
        let request = match self.request() {
            Ok(r) => r,
            Err(e) => return Outcome::Unreachable(e),
        };
        let answer = tokio::time::timeout(self.options.timeout, async {
            let response = self.client.request(request).await.map_err(|e| error_chain(&e))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| error_chain(&e))?.to_bytes();
            Ok::<_, String>((parts, body))
        })
        .await;
        match answer {
            Ok(Ok((parts, body))) => classify(parts.status, &parts.headers, &body),
            Ok(Err(why)) => Outcome::Unreachable(why),
            Err(_) => Outcome::Failed {
                status: 0,
                message: format!("no answer within {} ms", self.options.timeout.as_millis()),
            },
        }
    }
}

async fn sender(shared: Arc<Shared>) {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let n = shared.next_request.fetch_add(1, Ordering::SeqCst);
        if n > shared.options.count {
            return;
        }
        shared.wait_turn().await;
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let outcome = shared.send().await;
        let line = describe(n, &outcome);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        if let Ok(mut summary) = shared.summary.lock() {
            match &outcome {
                Outcome::Ok { .. } => summary.ok += 1,
                Outcome::Limited { retry_after_secs } => {
                    summary.limited += 1;
                    if let (true, Some(secs)) = (shared.options.wait, retry_after_secs) {
                        if n < shared.options.count {
                            let _ = writeln!(out, "{}", waiting_line(*secs));
                        }
                        shared.pause_for(*secs);
                    }
                }
                Outcome::Failed { .. } => summary.failed += 1,
                Outcome::Unreachable(why) => {
                    shared.stop.store(true, Ordering::SeqCst);
                    summary.unreachable.get_or_insert_with(|| why.clone());
                }
            }
        }
        let _ = out.flush();
    }
}

/// Sends the requests, prints a line per answer and the summary; returns the exit code.
pub async fn run(options: ClientOptions) -> i32 {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(options.timeout));
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let concurrency = options.concurrency.clamp(1, 1024);
    let now = Instant::now();
    let shared = Arc::new(Shared {
        options,
        client,
        next_request: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        schedule: Mutex::new((now, now)),
        summary: Mutex::new(Summary::default()),
    });
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency).map(|_| tokio::spawn(sender(shared.clone()))).collect();
    for worker in workers {
        let _ = worker.await;
    }
    let Ok(mut summary) = shared.summary.lock() else { return 1 };
    summary.elapsed = start.elapsed();
    println!("{}", summary.line());
    if let Some(why) = &summary.unreachable {
        eprintln!("error: cannot connect to {}: {why}. Is the gateway running there?", shared.options.url);
    }
    summary.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_the_issue_asks() {
        let ok = Outcome::Ok { remaining: Some(7), reset_secs: Some(42) };
        assert_eq!(describe(3, &ok), "Request 3: OK. You can send 7 more requests in the next 42 seconds.");
        let limited = Outcome::Limited { retry_after_secs: Some(6) };
        assert_eq!(describe(11, &limited), "Request 11: rate limited. Please try again after 6 seconds.");
        let one = Outcome::Ok { remaining: Some(1), reset_secs: Some(1) };
        assert_eq!(describe(1, &one), "Request 1: OK. You can send 1 more request in the next 1 second.");
    }

    #[test]
    fn reads_the_draft_header_then_the_x_headers() {
        assert_eq!(parse_ratelimit("\"default\";r=7;t=42"), (Some(7), Some(42)));
        assert_eq!(parse_ratelimit("\"a\";r=1;t=2, \"b\";r=9;t=9"), (Some(1), Some(2)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("4"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("9"));
        assert_eq!(classify(StatusCode::OK, &h, b""), Outcome::Ok { remaining: Some(4), reset_secs: Some(9) });
        h.insert("ratelimit", HeaderValue::from_static("\"default\";r=3;t=5"));
        assert_eq!(classify(StatusCode::OK, &h, b""), Outcome::Ok { remaining: Some(3), reset_secs: Some(5) });
        let body = br#"{"error":{"type":"upstream_unavailable","message":"down"}}"#;
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), body),
            Outcome::Failed { status: 502, message: "down".into() }
        );
    }

    #[test]
    fn rates_and_waits_are_bounded() {
        assert_eq!(interval(2.0), Ok(Duration::from_millis(500)));
        assert_eq!(interval(1.0 / 3600.0), Ok(MAX_WAIT));
        for bad in [1e-300, 1e-4, 0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(interval(bad).is_err(), "{bad}");
        }
        assert!(interval(1e-300).unwrap_err().contains("too slow"));
        assert_eq!(retry_wait_secs(5), 5);
        assert_eq!(retry_wait_secs(u64::MAX), 3600);
        assert_eq!(waiting_line(1), "Waiting 1 second as Retry-After asks...");
        assert_eq!(
            waiting_line(u64::MAX),
            format!("Retry-After asks for {} seconds; waiting 3600 seconds (the longest wait) instead...", u64::MAX)
        );
    }

    #[tokio::test]
    async fn a_huge_retry_after_or_rate_does_not_panic() {
        let now = Instant::now();
        let options = ClientOptions {
            url: Uri::from_static("http://127.0.0.1:1/"),
            count: 1,
            rate: Some(1e-300),
            concurrency: 1,
            method: Method::GET,
            text: String::new(),
            api_key: None,
            api_key_header: header::AUTHORIZATION,
            wait: true,
            timeout: Duration::from_secs(1),
        };
        let shared = Shared {
            options,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            next_request: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            schedule: Mutex::new((now, now)),
            summary: Mutex::new(Summary::default()),
        };
        shared.pause_for(u64::MAX);
        assert!(shared.wait_turn_at().is_some());
        let schedule = *shared.schedule.lock().unwrap();
        assert!(schedule.1 <= Instant::now() + MAX_WAIT);
        assert!(schedule.0 <= schedule.1 + MAX_WAIT);
    }

    #[test]
    fn summary_and_exit_codes() {
        let mut s = Summary { ok: 5, limited: 3, elapsed: Duration::from_millis(1234), ..Summary::default() };
        assert_eq!(s.line(), "Summary: 8 requests in 1.2 s: 5 OK, 3 rate limited.");
        assert_eq!(s.exit_code(), 0);
        s.failed = 1;
        assert_eq!(s.exit_code(), 1);
        s.unreachable = Some("refused".into());
        assert_eq!(s.exit_code(), 2);
    }
}
