//! Real processes for the end-to-end tests: the `gateway` binary in its `model` and `serve`
//! roles on free loopback ports, a real `redis-server` with the module (testkit), and a real
//! HTTP client. Every process is killed when its guard drops, also when a test fails.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use testkit::{free_port, RedisServer};

pub const BIN: &str = env!("CARGO_BIN_EXE_gateway");
pub const SECRET: &str = "test-secret-for-key-hashing";

/// A child process, killed on drop; its stdout and stderr go to files for failure messages.
pub struct Proc {
    pub name: String,
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Proc {
    pub fn spawn(name: &str, port: u16, args: &[String], env: &[(&str, &str)]) -> Proc {
        let dir = tempfile::Builder::new().prefix("gw-test-").tempdir().unwrap();
        let out = fs::File::create(dir.path().join("stdout")).unwrap();
        let err = fs::File::create(dir.path().join("stderr")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env_remove("GATEWAY_KEY_SECRET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        Proc { name: name.to_string(), port, child, dir }
    }

    /// Sends SIGTERM (via `kill`, as a service manager would).
    pub fn terminate(&self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("--- {} stdout ---\n{}\n--- {} stderr ---\n{}", self.name, read("stdout"), self.name, read("stderr"))
    }

    /// Polls `/healthz` until it answers 200; panics with the logs if the process exits first.
    pub async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited at start ({status})\n{}", self.name, self.logs());
            }
            if let Ok(r) = get(&self.url("/healthz")).await {
                if r.status == StatusCode::OK {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{} never became healthy\n{}", self.name, self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo model on a free port.
pub async fn start_model(latency_ms: u64) -> Proc {
    let port = free_port();
    let args = vec![
        "model".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--latency-ms".into(),
        latency_ms.to_string(),
    ];
    let mut model = Proc::spawn("model", port, &args, &[]);
    model.wait_healthy().await;
    model
}

/// `gateway serve` with `--limit/--window` and the given extra flags, in front of `upstream`.
pub async fn start_gateway(redis: &RedisServer, upstream: &str, limit: u64, window: u64, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["--limit".into(), limit.to_string(), "--window".into(), window.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    start_gateway_args(&redis.url(), upstream, &args).await
}

pub async fn start_gateway_args(redis_url: &str, upstream: &str, args: &[String]) -> Proc {
    let port = free_port();
    let mut all: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--upstream".into(),
        upstream.into(),
        "--redis-url".into(),
        redis_url.into(),
    ];
    all.extend(args.iter().cloned());
    let mut gateway = Proc::spawn("gateway", port, &all, &[("GATEWAY_KEY_SECRET", SECRET), ("RUST_LOG", "debug")]);
    gateway.wait_healthy().await;
    gateway
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
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).to_string()
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
