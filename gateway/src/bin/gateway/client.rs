//! The demo client (`gateway client`): sends requests to an endpoint and says, per request,
//! what the gateway answered, in words ([`report`]):
//!
//! ```text
//! Request 3: OK. 7 more requests can be sent now, one more comes back every 6 seconds, the bucket is full again in 42 seconds.
//! Request 4: OK. No more requests left right now: the next one comes back within 6 seconds, all of them in 48 seconds.
//! Request 11: rate limited. Please try again after 6 seconds.
//! ```
//!
//! The numbers come from the `RateLimit` header (else `X-RateLimit-Remaining`/`-Reset`),
//! `RateLimit-Policy` (`w / q`: how often one request comes back) and `Retry-After`. With `wait`, a `429` pauses every sender for `Retry-After` seconds before
//! the next request. A connection error stops the run with a clear message and exit code 2.
//!
//! With `--chat` it sends OpenAI chat completions instead ([`chat`]) and prints the tokens
//! used and what is left of both budgets, or which limit refused:
//!
//! ```text
//! Request 1: OK, 28 tokens used (14 prompt + 14 completion). Left: 9 of 10 requests (full in 6s), 172 of 200 tokens (full in 8.4s).
//! Request 6: rate limited by the tokens limit. Please try again after 5 seconds.
//! ```
//!
//! With `--plot run.svg` it also counts the answers per second as they arrive and, after the
//! summary, writes them as an SVG chart with the limit drawn in ([`plot`]).

mod chat;
mod plot;
mod report;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use gateway::error::error_chain;

use chat::classify_chat;
use plot::Timeline;
use report::{classify, describe, plural, Outcome, Summary};

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

/// The endpoint without `--url`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080/v1/predict";
/// The endpoint without `--url` in chat mode.
pub const DEFAULT_CHAT_URL: &str = "http://127.0.0.1:8080/v1/chat/completions";

/// The flags of `gateway client`.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Endpoint to call [default: http://127.0.0.1:8080/v1/predict, with --chat
    /// http://127.0.0.1:8080/v1/chat/completions].
    #[arg(long, value_parser = parse_url)]
    pub url: Option<Uri>,
    /// Number of requests.
    #[arg(long, short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Requests per second over all senders (default: as fast as answers come).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Requests in flight at once (1 to 1024).
    #[arg(long, short = 'c', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// HTTP method; POST sends {"text": TEXT} as JSON (with --chat, a chat completion).
    #[arg(long, default_value = "POST")]
    pub method: Method,
    /// Text to score; with --chat, the user message.
    #[arg(long, visible_alias = "prompt", default_value = "I love how fast this model is!")]
    pub text: String,
    /// Send OpenAI chat completions ({"model", "messages": [{"role": "user", "content": TEXT}],
    /// "max_tokens"}) and print the tokens used and left, or which limit refused.
    #[arg(long)]
    pub chat: bool,
    /// Chat mode: the model to name.
    #[arg(long, default_value = "lexicon-chat-v1")]
    pub model: String,
    /// Chat mode: max_tokens to ask for (0: send none, the gateway then reserves its default).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u64,
    /// Chat mode: stream the answer (server-sent events, with stream_options.include_usage).
    #[arg(long)]
    pub stream: bool,
    /// API key to send (default: none, so the gateway limits by client IP).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Header for the API key; "authorization" sends "Bearer <key>".
    #[arg(long, default_value = "authorization")]
    pub api_key_header: HeaderName,
    /// After a 429, wait Retry-After seconds, then go on with the next requests.
    #[arg(long)]
    pub wait: bool,
    /// Timeout per request in ms.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// After the run, write an SVG chart of the admitted and limited requests per second to
    /// PATH, with the limit (RateLimit-Policy q/w) as a line.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
}

/// `--url`: an absolute `http://` URL. One without a scheme (`127.0.0.1:8080/v1/predict`) is
/// refused with the URL it probably meant, rather than read as something else.
fn parse_url(text: &str) -> Result<Uri, String> {
    if !text.contains("://") {
        return Err(format!("{text:?} has no scheme; did you mean http://{text} ?"));
    }
    let uri: Uri = text.parse().map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(uri),
        Some("http") => Err(format!("{text:?} names no host")),
        _ => Err(format!("{text:?}: only http:// URLs are supported (put a TLS proxy in front for https)")),
    }
}

impl ClientArgs {
    /// `--url`, else the default of the mode.
    pub fn url(&self) -> Uri {
        self.url.clone().unwrap_or_else(|| Uri::from_static(if self.chat { DEFAULT_CHAT_URL } else { DEFAULT_URL }))
    }

    /// The request body (empty for GET and HEAD).
    fn body(&self) -> Bytes {
        if self.method == Method::GET || self.method == Method::HEAD {
            Bytes::new()
        } else if self.chat {
            let max_tokens = (self.max_tokens > 0).then_some(self.max_tokens);
            Bytes::from(chat::body(&self.model, &self.text, max_tokens, self.stream))
        } else {
            Bytes::from(serde_json::json!({ "text": self.text }).to_string())
        }
    }

    /// The time allowed for one request (at least 1 ms).
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

struct Shared {
    options: ClientArgs,
    url: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    next_request: AtomicU64,
    stop: AtomicBool,
    /// Next send slot (for `rate`) and the end of a Retry-After pause.
    schedule: Mutex<(Instant, Instant)>,
    summary: Mutex<Summary>,
    /// When the run began, for the per-second counts of `--plot`.
    started: Instant,
    /// With `--plot`: the answers per second and the limit they named.
    timeline: Option<Mutex<Timeline>>,
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
        let body = o.body();
        let mut builder = Request::builder().method(o.method.clone()).uri(self.url.clone());
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
        let answer = tokio::time::timeout(self.options.timeout(), async {
            let response = self.client.request(request).await.map_err(|e| error_chain(&e))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| error_chain(&e))?.to_bytes();
            Ok::<_, String>((parts, body))
        })
        .await;
        if let (Ok(Ok((parts, _))), Some(timeline)) = (&answer, &self.timeline) {
            let policy = parts.headers.get(gateway::headers::RATELIMIT_POLICY).and_then(|v| v.to_str().ok());
            if let (Some(policy), Ok(mut timeline)) = (policy, timeline.lock()) {
                timeline.note_policy(policy);
            }
        }
        match answer {
            Ok(Ok((parts, body))) if self.options.chat => classify_chat(parts.status, &parts.headers, &body),
            Ok(Ok((parts, body))) => classify(parts.status, &parts.headers, &body),
            Ok(Err(why)) => Outcome::Unreachable(why),
            Err(_) => Outcome::Failed {
                status: 0,
                message: format!("no answer within {} ms", self.options.timeout().as_millis()),
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
        if let Some(Ok(mut timeline)) = shared.timeline.as_ref().map(Mutex::lock) {
            timeline.record(shared.started.elapsed(), &outcome);
        }
        let line = describe(n, &outcome);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        if let Ok(mut summary) = shared.summary.lock() {
            match &outcome {
                Outcome::Ok { .. } => summary.ok += 1,
                Outcome::Chat { usage, .. } => {
                    summary.ok += 1;
                    let used = usage.as_ref().map_or(0, |u| u.total);
                    summary.tokens = Some(summary.tokens.unwrap_or(0).saturating_add(used));
                }
                Outcome::Limited { retry_after_secs, .. } => {
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

/// Sends the requests, prints a line per answer and the summary (and with `--plot` writes the
/// chart); returns the exit code.
pub async fn run(options: ClientArgs) -> i32 {
    // Before the run, so that an unwritable path does not cost a whole run.
    if let Some(path) = &options.plot {
        if let Err(e) = std::fs::File::create(path) {
            eprintln!("error: cannot write the plot to {}: {e}", path.display());
            return 2;
        }
    }
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(options.timeout()));
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let concurrency = options.concurrency;
    let now = Instant::now();
    let chat = options.chat;
    let timeline = options.plot.is_some().then(|| Mutex::new(Timeline::default()));
    let shared = Arc::new(Shared {
        url: options.url(),
        options,
        client,
        next_request: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        schedule: Mutex::new((now, now)),
        summary: Mutex::new(Summary { tokens: chat.then_some(0), ..Summary::default() }),
        started: now,
        timeline,
    });
    let workers: Vec<_> = (0..concurrency).map(|_| tokio::spawn(sender(shared.clone()))).collect();
    for worker in workers {
        let _ = worker.await;
    }
    let Ok(mut summary) = shared.summary.lock() else { return 1 };
    summary.elapsed = shared.started.elapsed();
    println!("{}", summary.line());
    if let Some(why) = &summary.unreachable {
        eprintln!("error: cannot connect to {}: {why}. Is the gateway running there?", shared.url);
    }
    let code = summary.exit_code();
    match (&shared.options.plot, &shared.timeline) {
        (Some(path), Some(timeline)) => match timeline.lock() {
            Ok(timeline) => code.max(write_plot(&timeline, path, &shared.url)),
            Err(_) => code.max(1),
        },
        _ => code,
    }
}

/// Writes the chart of `timeline` to `path` and says so; 0, else 1 with the reason on stderr.
fn write_plot(timeline: &Timeline, path: &std::path::Path, url: &Uri) -> i32 {
    let title = format!("gateway client: requests per second to {url}");
    match timeline.svg(&title).and_then(|svg| std::fs::write(path, svg).map_err(|e| e.to_string())) {
        Ok(()) => {
            println!("{}", timeline.written_line(&path.display().to_string()));
            0
        }
        Err(e) => {
            eprintln!("error: cannot write the plot to {}: {e}", path.display());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> ClientArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            client: ClientArgs,
        }
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("client").chain(flags.iter().copied())).unwrap().client
    }

    #[test]
    fn chat_mode_changes_the_default_url_and_the_body_only() {
        let predict = args(&[]);
        assert_eq!(predict.url(), DEFAULT_URL);
        assert_eq!(predict.body(), r#"{"text":"I love how fast this model is!"}"#);
        let chat = args(&["--chat", "--prompt", "hello there", "--max-tokens", "5", "--stream"]);
        assert_eq!(chat.url(), DEFAULT_CHAT_URL);
        let body: serde_json::Value = serde_json::from_slice(&chat.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model": "lexicon-chat-v1", "messages": [{"role": "user", "content": "hello there"}],
                "max_tokens": 5, "stream": true, "stream_options": {"include_usage": true}})
        );
        let no_cap: serde_json::Value = serde_json::from_slice(&args(&["--chat", "--max-tokens", "0"]).body()).unwrap();
        assert!(no_cap.get("max_tokens").is_none());
        let given = args(&["--chat", "--url", "http://10.0.0.1:9/v1/chat/completions"]);
        assert_eq!(given.url(), "http://10.0.0.1:9/v1/chat/completions");
        assert!(args(&["--method", "GET", "--chat"]).body().is_empty());
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
        let mut options = args(&["--method", "GET", "--text", "", "--wait", "--timeout-ms", "1000"]);
        options.url = Some(Uri::from_static("http://127.0.0.1:1/"));
        options.count = 1;
        options.rate = Some(1e-300);
        let shared = Shared {
            url: options.url(),
            options,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            next_request: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            schedule: Mutex::new((now, now)),
            summary: Mutex::new(Summary::default()),
            started: now,
            timeline: None,
        };
        shared.pause_for(u64::MAX);
        assert!(shared.wait_turn_at().is_some());
        let schedule = *shared.schedule.lock().unwrap();
        assert!(schedule.1 <= Instant::now() + MAX_WAIT);
        assert!(schedule.0 <= schedule.1 + MAX_WAIT);
    }
}
