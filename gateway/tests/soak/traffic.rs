//! The soak's clients: mixed HTTP traffic (plain, LLM streamed and not, leased bursts) and gRPC
//! `ShouldRateLimit` calls from hundreds of identities at a steady rate, and the probe
//! identities whose admissions are recorded one by one; what every answer was, per interval.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use testkit::fuzz::SplitMix;
use tokio::sync::Semaphore;

/// Identities of each kind of traffic (API keys `plain-0`..., `llm-0`..., and so on).
pub const PLAIN_KEYS: usize = 300;
pub const LLM_KEYS: usize = 100;
pub const LEASE_KEYS: usize = 20;
pub const GRPC_KEYS: usize = 100;
/// The models a gRPC call names (one bucket per API key and model).
pub const GRPC_MODELS: [&str; 2] = ["small", "large"];
pub const HTTP_PROBES: usize = 4;
pub const GRPC_PROBES: usize = 2;
/// Requests a leased burst sends at once on one key (its policy allows 2 in flight).
const BURST_SIZE: usize = 3;
/// Time between two requests of one HTTP probe, and of one gRPC probe (each far above its limit).
const HTTP_PROBE_PAUSE: Duration = Duration::from_millis(250);
const GRPC_PROBE_PAUSE: Duration = Duration::from_millis(100);
/// One request's whole time (headers and body) before the client gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests (and gRPC calls) in flight at most; a dispatch finding none free is counted as
/// dropped rather than piling up behind a fault.
const MAX_IN_FLIGHT: usize = 256;

/// What one answer meant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Forwarded and answered (HTTP 200, gRPC `OK`).
    Admitted,
    /// Refused by a limit (HTTP 429, or 503 `upstream_busy`; gRPC `OVER_LIMIT`).
    Limited,
    /// Anything else: 503 `rate_limiter_unavailable`, another status, a transport error.
    Error,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Limited => "limited",
            Outcome::Error => "error",
        }
    }
}

/// The answers that ended in one interval.
#[derive(Clone, Debug, Default)]
pub struct Bucket {
    /// HTTP answers: admitted, limited, errors.
    pub http: [u64; 3],
    /// gRPC answers: admitted, limited, errors.
    pub grpc: [u64; 3],
    /// The time of every HTTP request (whole answer), in microseconds.
    pub latencies_us: Vec<u32>,
    /// Dispatches skipped: `MAX_IN_FLIGHT` requests were in flight, or the test process itself
    /// fell more than a second behind.
    pub dropped: u64,
}

/// One admitted request of a probe identity, as the client saw it: sent at `sent`, answered at
/// `answered` (seconds since the start of the run). The limiter decided somewhere in between.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    pub sent: f64,
    pub answered: f64,
}

/// Everything the clients saw.
pub struct Stats {
    pub t0: Instant,
    pub interval: Duration,
    pub buckets: Mutex<Vec<Bucket>>,
    /// (kind, outcome) -> answers.
    pub kinds: Mutex<BTreeMap<(&'static str, Outcome), u64>>,
    /// What the errors were ("503 rate_limiter_unavailable", "transport: ...") -> how many.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Probe identity -> its admissions, in the order sent.
    pub probes: Mutex<BTreeMap<String, Vec<Admission>>>,
    /// Statuses other than 200, 429 and 503 (which the gateway must never answer here), with
    /// the time and the body's start: for the report.
    pub unexpected: Mutex<Vec<(f64, String)>>,
}

impl Stats {
    pub fn new(t0: Instant, interval: Duration) -> Stats {
        Stats {
            t0,
            interval,
            buckets: Mutex::new(Vec::new()),
            kinds: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            probes: Mutex::new(BTreeMap::new()),
            unexpected: Mutex::new(Vec::new()),
        }
    }

    pub fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.t0).as_secs_f64()
    }

    fn with_bucket(&self, at: Instant, f: impl FnOnce(&mut Bucket)) {
        let index = (self.secs(at) / self.interval.as_secs_f64()) as usize;
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() <= index {
            buckets.resize(index + 1, Bucket::default());
        }
        f(&mut buckets[index]);
    }

    fn record(&self, kind: &'static str, grpc: bool, answer: &Answered, started: Instant, ended: Instant) {
        let slot = match answer.outcome {
            Outcome::Admitted => 0,
            Outcome::Limited => 1,
            Outcome::Error => 2,
        };
        let latency = u32::try_from(ended.duration_since(started).as_micros()).unwrap_or(u32::MAX);
        self.with_bucket(ended, |b| {
            if grpc {
                b.grpc[slot] += 1;
            } else {
                b.http[slot] += 1;
                b.latencies_us.push(latency);
            }
        });
        *self.kinds.lock().unwrap().entry((kind, answer.outcome)).or_default() += 1;
        if let Some(detail) = &answer.detail {
            *self.errors.lock().unwrap().entry(format!("{kind}: {detail}")).or_default() += 1;
        }
        if let Some(body) = &answer.unexpected {
            self.unexpected.lock().unwrap().push((self.secs(ended), format!("{kind}: {body}")));
        }
    }

    fn dropped(&self, count: u64) {
        self.with_bucket(Instant::now(), |b| b.dropped += count);
    }

    fn admitted(&self, probe: &str, sent: Instant, answered: Instant) {
        let admission = Admission { sent: self.secs(sent), answered: self.secs(answered) };
        self.probes.lock().unwrap().entry(probe.to_string()).or_default().push(admission);
    }
}

/// An answer, classified.
struct Answered {
    outcome: Outcome,
    /// For an error: what it was.
    detail: Option<String>,
    /// For a status the gateway should never give here: the status and the body's start.
    unexpected: Option<String>,
}

/// Where the traffic goes: the gateways' HTTP ports and the gRPC port of the first one.
#[derive(Clone)]
pub struct Targets {
    pub http_ports: Vec<u16>,
    pub grpc_port: u16,
}

/// A keep-alive HTTP/1.1 client (one pool for the whole run: a new connection per request
/// would leave tens of thousands of sockets in TIME_WAIT over a long run).
#[derive(Clone)]
struct Http(Client<HttpConnector, Full<Bytes>>);

impl Http {
    fn new() -> Http {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // Idle connections are dropped long before the gateway's own 30 s idle limit, so the
        // client never writes on a connection the gateway is closing.
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(5)).build(connector);
        Http(client)
    }

    /// One request, read whole: its status and body, or what went wrong.
    async fn call(
        &self,
        method: Method,
        url: String,
        key: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut request = Request::builder().method(method).uri(url).header("x-api-key", key);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| e.to_string())?;
        let whole = async {
            let response = self.0.request(request).await.map_err(|e| transport_error(&e))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok((parts.status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, whole).await.map_err(|_| "timeout".to_string())?
    }
}

/// A transport error as a short, stable description (its source chain, without addresses).
fn transport_error(error: &hyper_util::client::legacy::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    let short: String = text.chars().take(120).collect();
    format!("transport: {short}")
}

/// An HTTP answer classified; `stream` when the body must be a whole event stream.
fn classify(result: Result<(StatusCode, Bytes), String>, stream: bool) -> Answered {
    let (status, body) = match result {
        Ok(answer) => answer,
        Err(e) => return Answered { outcome: Outcome::Error, detail: Some(e), unexpected: None },
    };
    let error_type = || {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        json["error"]["type"].as_str().unwrap_or("?").to_string()
    };
    match status {
        StatusCode::OK if stream && !String::from_utf8_lossy(&body).contains("data: [DONE]") => Answered {
            outcome: Outcome::Error,
            detail: Some("200 with a stream that did not end with [DONE]".into()),
            unexpected: None,
        },
        StatusCode::OK => Answered { outcome: Outcome::Admitted, detail: None, unexpected: None },
        StatusCode::TOO_MANY_REQUESTS => Answered { outcome: Outcome::Limited, detail: None, unexpected: None },
        StatusCode::SERVICE_UNAVAILABLE if error_type() == "upstream_busy" => {
            Answered { outcome: Outcome::Limited, detail: None, unexpected: None }
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            Answered { outcome: Outcome::Error, detail: Some(format!("503 {}", error_type())), unexpected: None }
        }
        other => {
            let start: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            Answered {
                outcome: Outcome::Error,
                detail: Some(format!("{} {}", other.as_u16(), error_type())),
                unexpected: Some(format!("{other}: {start}")),
            }
        }
    }
}

/// A uniform number in [0, 1).
fn unit(rng: &mut SplitMix) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// One of `n` identities, the first ones far more often (u², so identity 0 gets about
/// 1/sqrt(n) of the calls): hot keys get limited, the long tail hardly ever.
fn skewed(rng: &mut SplitMix, n: usize) -> usize {
    let u = unit(rng);
    ((u * u * n as f64) as usize).min(n - 1)
}

const WORDS: [&str; 12] =
    ["great", "model", "slow", "answer", "fine", "terrible", "happy", "token", "budget", "limit", "quick", "soak"];

fn sentence(rng: &mut SplitMix, words: usize) -> String {
    (0..words).map(|_| WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]).collect::<Vec<_>>().join(" ")
}

/// Everything a traffic task needs.
struct Ctx {
    stats: Arc<Stats>,
    http: Http,
    targets: Targets,
    in_flight: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
}

impl Ctx {
    fn url(&self, gateway: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.targets.http_ports[gateway % self.targets.http_ports.len()], path)
    }
}

/// Runs the traffic until `stop` is set: `rate` dispatches a second (each one plain request,
/// LLM request, leased burst or gRPC call) plus the probes; returns once every request has
/// ended.
pub async fn run(stats: Arc<Stats>, targets: Targets, rate: f64, stop: Arc<AtomicBool>, seed: u64) {
    let ctx = Arc::new(Ctx {
        stats,
        http: Http::new(),
        targets: targets.clone(),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        stop,
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", targets.grpc_port))
        .unwrap()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let grpc = RateLimitServiceClient::new(channel);
    let mut probes = Vec::new();
    for i in 0..HTTP_PROBES {
        probes.push(tokio::spawn(http_probe(ctx.clone(), i)));
    }
    for i in 0..GRPC_PROBES {
        probes.push(tokio::spawn(grpc_probe(ctx.clone(), grpc.clone(), i)));
    }
    let mut rng = SplitMix(seed);
    let started = Instant::now();
    let mut dispatched = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !ctx.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        // After a stall of the test process itself, at most a second of backlog is sent.
        if due > dispatched + rate as u64 {
            ctx.stats.dropped(due - rate as u64 - dispatched);
            dispatched = due - rate as u64;
        }
        while dispatched < due {
            dispatched += 1;
            let Ok(permit) = ctx.in_flight.clone().try_acquire_owned() else {
                ctx.stats.dropped(1);
                continue;
            };
            let ctx = ctx.clone();
            let choice = rng.next_u64() % 100;
            let seed = rng.next_u64();
            let grpc = grpc.clone();
            tokio::spawn(async move {
                let mut rng = SplitMix(seed);
                match choice {
                    0..40 => plain(&ctx, &mut rng).await,
                    40..65 => chat(&ctx, &mut rng).await,
                    65..70 => leased_burst(&ctx, &mut rng).await,
                    _ => grpc_call(&ctx, grpc, &mut rng).await,
                }
                drop(permit);
            });
        }
    }
    for probe in probes {
        let _ = probe.await;
    }
    // Every request still in flight ends within its timeout.
    let _ = tokio::time::timeout(REQUEST_TIMEOUT * 2, ctx.in_flight.acquire_many(MAX_IN_FLIGHT as u32)).await;
}

/// `POST /v1/predict` of a plain identity (a request limit, 2 in flight per caller).
async fn plain(ctx: &Ctx, rng: &mut SplitMix) {
    let key = format!("plain-{}", skewed(rng, PLAIN_KEYS));
    let body = serde_json::json!({"text": sentence(rng, 6)}).to_string();
    let url = ctx.url(rng.next_u64() as usize, "/v1/predict");
    let started = Instant::now();
    let answer = classify(ctx.http.call(Method::POST, url, &key, Some(body)).await, false);
    ctx.stats.record("plain", false, &answer, started, Instant::now());
}

/// `POST /v1/chat/completions` of an LLM identity: a request limit and a token budget, half
/// of them streamed (with `stream_options.include_usage`), a quarter with a long prompt.
async fn chat(ctx: &Ctx, rng: &mut SplitMix) {
    let key = format!("llm-{}", skewed(rng, LLM_KEYS));
    let stream = rng.next_u64().is_multiple_of(2);
    let words = if rng.next_u64().is_multiple_of(4) { 200 } else { 8 };
    let mut body = serde_json::json!({
        "model": "lexicon-chat-v1",
        "max_tokens": 8 + rng.next_u64() % 25,
        "messages": [{"role": "user", "content": sentence(rng, words)}],
    });
    if stream {
        body["stream"] = serde_json::json!(true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let url = ctx.url(rng.next_u64() as usize, "/v1/chat/completions");
    let kind = if stream { "chat-stream" } else { "chat" };
    let started = Instant::now();
    let answer = classify(ctx.http.call(Method::POST, url, &key, Some(body.to_string())).await, stream);
    ctx.stats.record(kind, false, &answer, started, Instant::now());
}

/// `BURST_SIZE` predictions at once on one leased identity: its policy lets 2 be in flight.
async fn leased_burst(ctx: &Ctx, rng: &mut SplitMix) {
    let key = format!("lease-{}", skewed(rng, LEASE_KEYS));
    let gateway = rng.next_u64() as usize;
    let calls = (0..BURST_SIZE).map(|i| {
        let url = ctx.url(gateway + i, "/v1/predict");
        let key = key.clone();
        async move {
            let started = Instant::now();
            let body = r#"{"text":"a leased request"}"#.to_string();
            let answer = classify(ctx.http.call(Method::POST, url, &key, Some(body)).await, false);
            ctx.stats.record("leased", false, &answer, started, Instant::now());
        }
    });
    futures_util::future::join_all(calls).await;
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..RateLimitDescriptor::default()
    }
}

type Grpc = RateLimitServiceClient<tonic::transport::Channel>;

/// One `ShouldRateLimit` of domain `soak`; the answer classified.
async fn should_rate_limit(mut client: Grpc, descriptors: Vec<RateLimitDescriptor>) -> Answered {
    let request = RateLimitRequest { domain: "soak".into(), descriptors, hits_addend: 0 };
    match tokio::time::timeout(REQUEST_TIMEOUT, client.should_rate_limit(request)).await {
        Err(_) => Answered { outcome: Outcome::Error, detail: Some("timeout".into()), unexpected: None },
        Ok(Err(status)) => {
            Answered { outcome: Outcome::Error, detail: Some(format!("grpc {:?}", status.code())), unexpected: None }
        }
        Ok(Ok(response)) => match response.into_inner().overall_code {
            code if code == Code::Ok as i32 => Answered { outcome: Outcome::Admitted, detail: None, unexpected: None },
            code if code == Code::OverLimit as i32 => {
                Answered { outcome: Outcome::Limited, detail: None, unexpected: None }
            }
            code => Answered {
                outcome: Outcome::Error,
                detail: Some(format!("overall_code {code}")),
                unexpected: Some(format!("overall_code {code}")),
            },
        },
    }
}

/// A gRPC identity's call: its API key's bucket and its (API key, model) bucket at once.
async fn grpc_call(ctx: &Ctx, client: Grpc, rng: &mut SplitMix) {
    let key = format!("grpc-{}", skewed(rng, GRPC_KEYS));
    let model = GRPC_MODELS[(rng.next_u64() % GRPC_MODELS.len() as u64) as usize];
    let descriptors = vec![descriptor(&[("api_key", &key)]), descriptor(&[("api_key", &key), ("model", model)])];
    let started = Instant::now();
    let answer = should_rate_limit(client, descriptors).await;
    ctx.stats.record("grpc", true, &answer, started, Instant::now());
}

/// An HTTP probe: one request at a time, alternating between the gateways, far above its
/// limit; each admission recorded with the client's own times.
async fn http_probe(ctx: Arc<Ctx>, index: usize) {
    let key = format!("probe-{index}");
    let mut n = 0usize;
    while !ctx.stop.load(Ordering::Relaxed) {
        let url = ctx.url(n, "/v1/echo/probe");
        n += 1;
        let sent = Instant::now();
        let answer = classify(ctx.http.call(Method::GET, url, &key, None).await, false);
        let answered = Instant::now();
        if answer.outcome == Outcome::Admitted {
            ctx.stats.admitted(&key, sent, answered);
        }
        ctx.stats.record("probe", false, &answer, sent, answered);
        tokio::time::sleep(HTTP_PROBE_PAUSE).await;
    }
}

/// A gRPC probe: one call at a time on its own descriptor, far above its limit.
async fn grpc_probe(ctx: Arc<Ctx>, client: Grpc, index: usize) {
    let name = format!("grpc-probe-{index}");
    while !ctx.stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let answer = should_rate_limit(client.clone(), vec![descriptor(&[("probe", &name)])]).await;
        let answered = Instant::now();
        if answer.outcome == Outcome::Admitted {
            ctx.stats.admitted(&name, sent, answered);
        }
        ctx.stats.record("grpc-probe", true, &answer, sent, answered);
        tokio::time::sleep(GRPC_PROBE_PAUSE).await;
    }
}
