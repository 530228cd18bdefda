//! What the gateway's end-to-end tests share beyond testkit: the `gateway` binary in its
//! `model` and `serve` roles on free loopback ports (each a testkit [`ChildGuard`], killed
//! when it drops, also when a test fails), and a real HTTP client. Servers, clusters,
//! processes and waiting come from testkit.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_parse::{Scrape, Value};

pub use testkit::{free_port, wait_until, ChildGuard, RedisServer};

pub const BIN: &str = env!("CARGO_BIN_EXE_gateway");
pub const SECRET: &str = "test-secret-for-key-hashing";

/// How long the gateway or the model may take to answer `/healthz` after starting.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `gateway` binary serving HTTP on `port` (as `model` or `serve`); killed on drop. The
/// process itself ([`ChildGuard`]: `logs`, `terminate`, `wait_exit`) is reached through it.
pub struct Proc {
    pub port: u16,
    process: ChildGuard,
}

impl Proc {
    /// Starts `gateway args...` with `env` (and without the caller's `GATEWAY_KEY_SECRET`).
    pub fn spawn(name: &str, port: u16, args: &[String], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env_remove("GATEWAY_KEY_SECRET").envs(env.iter().copied());
        Proc { port, process: ChildGuard::spawn(name, cmd) }
    }

    /// Runs `command` (which must start the `gateway` binary listening on `port`); killed on drop.
    pub fn from_command(name: &str, port: u16, command: Command) -> Proc {
        Proc { port, process: ChildGuard::spawn(name, command) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Polls `/healthz` until it answers 200; panics with the logs if the process exits first.
    pub fn wait_healthy(&mut self) {
        let port = self.port;
        let mut exited = None;
        let healthy = wait_until(Instant::now() + START_TIMEOUT, || {
            exited = self.process.exited();
            exited.is_some() || http_status(port, "/healthz") == Some(200)
        });
        if let Some(status) = exited {
            panic!("{} exited at start ({status})\n{}", self.name(), self.logs());
        }
        assert!(healthy, "{} never became healthy\n{}", self.name(), self.logs());
    }
}

impl Deref for Proc {
    type Target = ChildGuard;

    fn deref(&self) -> &ChildGuard {
        &self.process
    }
}

impl DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut ChildGuard {
        &mut self.process
    }
}

/// The status code of `GET path` on a loopback port, or `None` when nothing answers there
/// (a blocking probe, for waiting on a process that is starting).
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let answer = try_raw_answer(port, request.as_bytes(), Duration::from_secs(5)).ok()?;
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The demo model on a free port.
pub fn start_model(latency_ms: u64) -> Proc {
    let port = free_port();
    let args = vec![
        "model".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--latency-ms".into(),
        latency_ms.to_string(),
    ];
    let mut model = Proc::spawn("model", port, &args, &[]);
    model.wait_healthy();
    model
}

/// `gateway serve` with `--limit/--window` and the given extra flags, in front of `upstream`.
pub fn start_gateway(redis: &RedisServer, upstream: &str, limit: u64, window: u64, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["--limit".into(), limit.to_string(), "--window".into(), window.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    start_gateway_args(&redis.url(), upstream, &args)
}

/// `gateway serve` on the one server at `redis_url`, with `args`.
pub fn start_gateway_args(redis_url: &str, upstream: &str, args: &[String]) -> Proc {
    let mut all: Vec<String> = vec!["--redis-url".into(), redis_url.into()];
    all.extend(args.iter().cloned());
    start_serve("gateway", upstream, &all)
}

/// `gateway serve --listen <free port> --upstream <upstream> args...` with the test secret,
/// once it answers `/healthz`. `args` name the Redis server or cluster.
pub fn start_serve(name: &str, upstream: &str, args: &[String]) -> Proc {
    let port = free_port();
    let mut gateway = Proc::spawn(name, port, &serve_args(port, upstream, args), &serve_env());
    gateway.wait_healthy();
    gateway
}

/// The arguments of `gateway serve` on `port` in front of `upstream`, then `args`.
pub fn serve_args(port: u16, upstream: &str, args: &[String]) -> Vec<String> {
    let mut all: Vec<String> =
        vec!["serve".into(), "--listen".into(), format!("127.0.0.1:{port}"), "--upstream".into(), upstream.into()];
    all.extend(args.iter().cloned());
    all
}

/// The environment of a gateway under test: the test secret, debug logs.
pub fn serve_env() -> [(&'static str, &'static str); 2] {
    [("GATEWAY_KEY_SECRET", SECRET), ("RUST_LOG", "debug")]
}

/// `gateway hash-key <key>` with the tests' secret.
pub fn digest(key: &str) -> String {
    let out = Command::new(BIN).args(["hash-key", key]).env("GATEWAY_KEY_SECRET", SECRET).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("no {name} header in {self:?}")).to_str().unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Answer, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url).body(Full::new(body.into())).unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer { status: parts.status, headers: parts.headers, body })
}

pub async fn get(url: &str) -> Result<Answer, String> {
    send(Method::GET, url, &[], Bytes::new()).await
}

/// `POST /v1/predict` with a text, and extra headers.
pub async fn predict(gateway: &Proc, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(Method::POST, &gateway.url("/v1/predict"), &all, r#"{"text":"what a great model"}"#)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}\n{}", gateway.logs()))
}

/// Writes raw bytes to a port and returns the status line of the answer (for requests a
/// well-behaved client cannot send).
pub fn raw_status_line(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    text.lines().next().unwrap_or("").to_string()
}

/// Writes raw bytes (a request with `Connection: close`) to a port and returns the whole
/// answer as text, or what arrived before `wait` passed.
pub fn raw_answer(port: u16, request: &[u8], wait: Duration) -> String {
    try_raw_answer(port, request, wait).unwrap_or_else(|e| panic!("send a request to port {port}: {e}"))
}

fn try_raw_answer(port: u16, request: &[u8], wait: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(1))?;
    stream.set_read_timeout(Some(wait))?;
    stream.write_all(request)?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(String::from_utf8_lossy(&answer).to_string())
}

/// A config file in a temporary directory (kept while the guard lives).
pub fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("gw-config-").tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    fs::write(&path, text).unwrap();
    (dir, path)
}

/// Runs `gateway client` with `args` to completion.
pub fn run_client(args: &[&str]) -> Output {
    Command::new(BIN).arg("client").args(args).stdin(Stdio::null()).output().unwrap()
}

/// A port with nothing listening on it.
pub fn dead_port() -> u16 {
    free_port()
}

pub fn example_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gateway.toml")
}

/// `gateway serve` through the sentinels of `group` (each a `--redis-sentinel`, and
/// `--redis-sentinel-master`), with `args`.
pub fn start_gateway_via_sentinels(group: &testkit::SentinelGroup, upstream: &str, args: &[String]) -> Proc {
    let mut all: Vec<String> = vec!["--redis-sentinel-master".into(), group.master_name().into()];
    for url in group.sentinel_urls() {
        all.push("--redis-sentinel".into());
        all.push(url);
    }
    all.extend(args.iter().cloned());
    start_serve("gateway", upstream, &all)
}

/// The gateway's `/metrics`, parsed.
pub async fn scrape(gateway: &Proc) -> Scrape {
    let answer = get(&gateway.url("/metrics")).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.header("content-type").starts_with("application/openmetrics-text"), "{answer:?}");
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the sample `name` whose labels include `labels` (counters and gauges), or of
/// its `_count` for a histogram's name; `None` when there is none.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matches =
        |s: &&prometheus_parse::Sample| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
    scrape.samples.iter().find(matches).map(|s| match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
        Value::Summary(_) => panic!("no summaries are exported"),
    })
}
