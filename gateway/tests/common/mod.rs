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
    /// Where it listens: 127.0.0.1, or its node's address on a testkit `Network`.
    pub host: Ipv4Addr,
    process: ChildGuard,
}

impl Proc {
    /// Starts `gateway args...` with `env` (and without the caller's `GATEWAY_KEY_SECRET`).
    pub fn spawn(name: &str, port: u16, args: &[String], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env_remove("GATEWAY_KEY_SECRET").envs(env.iter().copied());
        Proc { port, host: Ipv4Addr::LOCALHOST, process: ChildGuard::spawn(name, cmd) }
    }

    /// Runs `command` (which must start the `gateway` binary listening on `port`); killed on drop.
    pub fn from_command(name: &str, port: u16, command: Command) -> Proc {
        Proc { port, host: Ipv4Addr::LOCALHOST, process: ChildGuard::spawn(name, command) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}", self.host, self.port, path)
    }

    /// Polls `/healthz` until it answers 200; panics with the logs if the process exits first.
    pub fn wait_healthy(&mut self) {
        let (host, port) = (self.host, self.port);
        let mut exited = None;
        let healthy = wait_until(Instant::now() + START_TIMEOUT, || {
            exited = self.process.exited();
            exited.is_some() || http_status_at(host, port, "/healthz") == Some(200)
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
    http_status_at(Ipv4Addr::LOCALHOST, port, path)
}

/// [`http_status`] at another address than 127.0.0.1.
pub fn http_status_at(host: Ipv4Addr, port: u16, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = try_raw_answer_at(host, port, request.as_bytes(), Duration::from_secs(5)).ok()?;
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The demo model on a free port.
pub fn start_model(latency_ms: u64) -> Proc {
    start_model_with(Ipv4Addr::LOCALHOST, &["--latency-ms".into(), latency_ms.to_string()])
}

/// The demo model on a free port of `host` (e.g. a testkit `Network`'s host address, which
/// gateways in its nodes reach), with `args` (`--latency-ms`, `--token-latency-ms`).
pub fn start_model_with(host: Ipv4Addr, args: &[String]) -> Proc {
    let port = free_port();
    let mut all = vec!["model".into(), "--listen".into(), format!("{host}:{port}")];
    all.extend(args.iter().cloned());
    let mut cmd = Command::new(BIN);
    cmd.args(&all);
    let mut model = Proc { port, host, process: ChildGuard::spawn("model", cmd) };
    model.wait_healthy();
    model
}

/// `gateway serve` with `--limit/--window` and the given extra flags, in front of `upstream`.
pub fn start_gateway(redis: &RedisServer, upstream: &str, limit: u64, window: u64, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["--limit".into(), limit.to_string(), "--window".into(), window.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    start_gateway_args(&redis.url(), upstream, &args)
}

/// `gateway serve` on the one server at `redis_url`, with `args`. With `RL_TEST_ACL=1` (`make
/// test-acl`) the gateway connects as a user restricted to the README's ACL (see
/// [`restricted_url`]); the test's own connections stay the administrator's.
pub fn start_gateway_args(redis_url: &str, upstream: &str, args: &[String]) -> Proc {
    let redis_url = match acl_mode() {
        true => {
            let prefix = args.iter().position(|a| a == "--key-prefix").and_then(|i| args.get(i + 1));
            restricted_url(redis_url, prefix.map_or("rl:", String::as_str))
        }
        false => redis_url.to_string(),
    };
    let mut all: Vec<String> = vec!["--redis-url".into(), redis_url];
    all.extend(args.iter().cloned());
    start_serve("gateway", upstream, &all)
}

/// `gateway serve` inside `node` of a testkit `Network`, listening on the node's address, on
/// the one server at `redis_url`, with `args`, once it answers `/healthz`.
pub fn start_gateway_on(node: &testkit::Node, redis_url: &str, upstream: &str, args: &[String]) -> Proc {
    let mut all: Vec<String> = vec!["--redis-url".into(), redis_url.into()];
    all.extend(args.iter().cloned());
    start_serve_on(node, upstream, &all)
}

/// `gateway serve` inside `node`, listening on the node's address, with `args` (which name
/// the Redis server or the sentinels), once it answers `/healthz`.
pub fn start_serve_on(node: &testkit::Node, upstream: &str, args: &[String]) -> Proc {
    let port = free_port();
    let mut all: Vec<String> =
        vec!["serve".into(), "--listen".into(), format!("{}:{port}", node.addr), "--upstream".into(), upstream.into()];
    all.extend(args.iter().cloned());
    let mut cmd = node.command(BIN);
    cmd.args(&all).env_remove("GATEWAY_KEY_SECRET").envs(serve_env());
    let mut gateway = Proc { port, host: node.addr, process: ChildGuard::spawn(&node.name, cmd) };
    gateway.wait_healthy();
    gateway
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
    try_raw_answer_at(Ipv4Addr::LOCALHOST, port, request, wait)
}

fn try_raw_answer_at(host: Ipv4Addr, port: u16, request: &[u8], wait: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&(host, port).into(), Duration::from_secs(1))?;
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

/// The README's ACL for the module: its nine commands (keys `~rl:*` beside them).
pub const MODULE_ACL: &str =
    "+rl.check +rl.checkall +rl.peek +rl.refund +rl.reset +cl.throttle +rl.acquire +rl.release +rl.renew";

/// Whether this run gives the gateway (and the Python client) a restricted Redis user:
/// `RL_TEST_ACL=1`, set by `make test-acl`.
pub fn acl_mode() -> bool {
    std::env::var("RL_TEST_ACL").is_ok_and(|v| v == "1")
}

/// The README's rules for the backend a server offers: the module's commands where it is
/// loaded, else the library's calls and what they call (with `+evalsha +script|load` in place
/// of `FUNCTION`'s where the server has no Functions: the library as a script).
pub fn readme_acl(admin: &mut testkit::redis::Connection) -> String {
    let mut has = |command: &str| {
        let info: testkit::redis::Value = testkit::redis::cmd("COMMAND").arg("INFO").arg(command).query(admin).unwrap();
        matches!(info, testkit::redis::Value::Array(ref entries) if !matches!(entries.first(), Some(testkit::redis::Value::Nil) | None))
    };
    if has("rl.check") {
        MODULE_ACL.to_string()
    } else if has("fcall") {
        gateway::limiter::LIBRARY_ACL.to_string()
    } else {
        gateway::limiter::LIBRARY_ACL.replace("+fcall +fcall_ro +function|load", "+evalsha +script|load")
    }
}

/// Makes the user `limiter` (password `pw`) on the server at `admin_url` (`redis://host:port/...`,
/// the default user) with exactly the README's ACL for that server's backend on the keys
/// `~<key_prefix>*`, and returns the same URL as that user. A URL that already names a user
/// or password (a test of credentials), or where nothing answers yet (a test of Redis being
/// down), is returned as it is. A server restarted empty has lost the user: a test that
/// restarts one calls this again.
pub fn restricted_url(admin_url: &str, key_prefix: &str) -> String {
    let Some(rest) = admin_url.strip_prefix("redis://").filter(|rest| !rest.contains('@')) else {
        return admin_url.to_string();
    };
    let Ok(mut admin) = testkit::redis::Client::open(admin_url).unwrap().get_connection() else {
        return admin_url.to_string();
    };
    let rules = readme_acl(&mut admin);
    let keys = format!("~{key_prefix}*");
    let mut acl: Vec<&str> = vec!["SETUSER", "limiter", "reset", "on", ">pw", &keys];
    acl.extend(rules.split(' '));
    let _: () = testkit::redis::cmd("ACL").arg(&acl).query(&mut admin).unwrap();
    format!("redis://limiter:pw@{rest}")
}

/// The resident memory of process `pid`, in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `usage.total_tokens` of a streamed (SSE) answer's last data event, its usage chunk.
pub fn stream_usage(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(body);
    let chunk = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .last()
        .unwrap_or_else(|| panic!("no events: {text}"));
    let json: serde_json::Value = serde_json::from_str(chunk).unwrap();
    json["usage"]["total_tokens"].as_u64().unwrap_or_else(|| panic!("no usage: {text}"))
}
