//! Helpers for the unit tests: settings from TOML, requests as `serve::run` would hand them
//! over (with the peer address), answers read whole, and a stand-in model on a loopback port.

use std::net::SocketAddr;

use axum::body::{to_bytes, Body};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request};
use axum::response::Response;
use axum::routing::any;
use axum::{Json, Router};
use serde_json::json;

use crate::config::{FileConfig, Overrides, Settings, DEFAULT_SECRET_ENV};

/// The peer of every test request unless a test says otherwise.
pub const PEER: &str = "203.0.113.9:4000";

/// Settings from a config file's text, with a secret.
pub fn settings(toml: &str) -> Settings {
    settings_with(toml, &Overrides::default())
}

pub fn settings_with(toml: &str, overrides: &Overrides) -> Settings {
    let file = FileConfig::parse(toml).unwrap();
    let file = if file.policies.is_empty() && overrides.limit.is_none() {
        FileConfig::parse(&format!("{toml}\n[[policy]]\nname = \"default\"\nlimit = 3\nwindow = 60\n")).unwrap()
    } else {
        file
    };
    Settings::resolve(file, overrides, |name| (name == DEFAULT_SECRET_ENV).then(|| "test-secret".to_string())).unwrap()
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

/// A request from [`PEER`].
pub fn request(method: &str, uri: &str, pairs: &[(&str, &str)], body: impl Into<Body>) -> Request<Body> {
    request_from(PEER, method, uri, pairs, body)
}

pub fn request_from(
    peer: &str,
    method: &str,
    uri: &str,
    pairs: &[(&str, &str)],
    body: impl Into<Body>,
) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(uri).body(body.into()).unwrap();
    *request.headers_mut() = headers(pairs);
    // As every HTTP/1.1 client sends one.
    if !request.headers().contains_key("host") {
        request.headers_mut().insert("host", HeaderValue::from_static("gw.example"));
    }
    request.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    request
}

pub async fn json(response: Response) -> serde_json::Value {
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

pub fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

/// A model stand-in on a free loopback port that answers every request with what it
/// received (method, path, query, headers, body length); its base URL.
pub async fn echo_upstream() -> String {
    async fn echo(request: axum::extract::Request) -> Json<serde_json::Value> {
        let (parts, body) = request.into_parts();
        let body = to_bytes(body, usize::MAX).await.unwrap();
        let headers: serde_json::Map<String, serde_json::Value> =
            parts.headers.iter().map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap()))).collect();
        Json(json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body_bytes": body.len(),
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(any(echo))).await.unwrap() });
    url
}

/// A port with nothing listening on it (bound, then released).
pub fn dead_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// The value of one series in this process's /metrics (0 when absent). Metrics are per
/// process: each test counts under a policy of its own.
pub fn series(line_start: &str) -> u64 {
    let text = crate::metrics::metrics().encode();
    text.lines().find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}
