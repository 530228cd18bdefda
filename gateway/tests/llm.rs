//! LLM routes end to end: a real gateway process and Redis with the module, in front of a
//! small OpenAI-shaped upstream started by the test, whose `usage.total_tokens` the test
//! chooses (header `x-test-usage`; without it the answer has no usage).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::{to_bytes, Bytes};
use axum::extract::Request;
use axum::{Json, Router};
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;
use testkit::{redis, tokens};

/// 3 requests a minute and 1000 tokens a day (so nothing refills during a test) on
/// /v1/chat/completions.
const CHAT: &str = "[[policy]]\nname = \"chat\"\npaths = [\"/v1\"]\nkind = \"openai\"\nlimit = 3\nwindow = 60\n\
    [[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 1000\nwindow = 86400\n";

/// The upstream: answers a chat completion with the usage the request's `x-test-usage` asks for;
/// with `"stream": true`, as server-sent events (two content chunks that say whether usage
/// was asked for, then the usage chunk if it was, then `[DONE]`).
async fn llm_upstream() -> String {
    async fn answer(request: Request) -> axum::response::Response {
        use axum::response::IntoResponse;
        let usage = request.headers().get("x-test-usage").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let headers_events =
            request.headers().get("x-test-events").and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let accept_encoding = request.headers().get("accept-encoding").map(|v| v.to_str().unwrap().to_string());
        let endless = request.headers().contains_key("x-test-endless-event");
        let stall = request.headers().contains_key("x-test-stall-after-headers");
        let forever = request.headers().contains_key("x-test-forever");
        if request.headers().contains_key("x-test-no-answer") {
            // Reads nothing, answers nothing, holds the connection.
            std::future::pending::<()>().await;
        }
        let body = to_bytes(request.into_body(), usize::MAX).await.unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if stall {
            // The headers, the first bytes of the answer, and then nothing.
            let (content_type, first) = match sent["stream"] == true {
                true => ("text/event-stream", Bytes::from_static(b"data: {}\n\n")),
                false => ("application/json", Bytes::from_static(b"{\"object\":")),
            };
            let stream = frames::Stalled::new(first);
            return ([("content-type", content_type)], axum::body::Body::new(stream)).into_response();
        }
        if forever {
            // Well-formed events, one every 2 ms, never a last one.
            let chunk = json!({"choices": [{"delta": {"content": "x".repeat(1000)}}]});
            let stream = frames::Forever::new(Bytes::from(format!("data: {chunk}\n\n")));
            return ([("content-type", "text/event-stream")], axum::body::Body::new(stream)).into_response();
        }
        if endless {
            // One event that never ends: 64 KiB frames of data without a blank line.
            let frame = Bytes::from(format!("data: {}", "x".repeat(64 * 1024 - 6)));
            let stream = futures_endless(frame);
            return ([("content-type", "text/event-stream")], axum::body::Body::new(stream)).into_response();
        }
        if sent["stream"] == true {
            let asked = sent["stream_options"]["include_usage"] == true;
            let chunk = json!({"choices": [{"delta": {"content": format!("include_usage={asked}")}}]});
            let n = headers_events.unwrap_or(2);
            let mut events: Vec<String> = (0..n).map(|_| format!("data: {chunk}\n\n")).collect();
            if let (true, Some(total)) = (asked, usage) {
                events.push(format!("data: {}\n\n", json!({"choices": [], "usage": {"total_tokens": total}})));
            }
            events.push("data: [DONE]\n\n".into());
            let stream = futures_stream(events);
            return ([("content-type", "text/event-stream")], axum::body::Body::new(stream)).into_response();
        }
        let mut reply = json!({"object": "chat.completion", "choices": [], "seen_bytes": body.len(), "accept_encoding": accept_encoding});
        if let Some(total) = usage {
            reply["usage"] =
                json!({"prompt_tokens": 1, "completion_tokens": total.saturating_sub(1), "total_tokens": total});
        }
        Json(reply).into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, Router::new().fallback(answer)).await.unwrap() });
    url
}

/// A body yielding `events` one frame each, 20 ms apart (so the gateway sees them separately).
fn futures_stream(events: Vec<String>) -> frames::Frames {
    frames::Frames::new(events)
}

/// A body yielding `frame` again and again, as fast as it is read.
fn futures_endless(frame: Bytes) -> frames::Endless {
    frames::Endless(frame)
}

mod frames {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use axum::body::Bytes;
    use hyper::body::Frame;

    /// The same frame for ever.
    pub struct Endless(pub Bytes);

    impl axum::body::HttpBody for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(Ok(Frame::data(self.0.clone()))))
        }
    }

    /// The same frame every 2 ms, for ever.
    pub struct Forever {
        frame: Bytes,
        sleep: Pin<Box<tokio::time::Sleep>>,
    }

    impl Forever {
        pub fn new(frame: Bytes) -> Self {
            Forever { frame, sleep: Box::pin(tokio::time::sleep(Duration::from_millis(2))) }
        }
    }

    impl axum::body::HttpBody for Forever {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if std::future::Future::poll(self.sleep.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = Box::pin(tokio::time::sleep(Duration::from_millis(2)));
            Poll::Ready(Some(Ok(Frame::data(self.frame.clone()))))
        }
    }

    /// One frame, then nothing ever again.
    pub struct Stalled(Option<Bytes>);

    impl Stalled {
        pub fn new(first: Bytes) -> Self {
            Stalled(Some(first))
        }
    }

    impl axum::body::HttpBody for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
                None => Poll::Pending,
            }
        }
    }

    /// Frames from a list, with a pause before each.
    pub struct Frames {
        events: VecDeque<String>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl Frames {
        pub fn new(events: Vec<String>) -> Self {
            Frames { events: events.into(), sleep: None }
        }
    }

    impl axum::body::HttpBody for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.events.is_empty() {
                return Poll::Ready(None);
            }
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
            if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            Poll::Ready(self.events.pop_front().map(|e| Ok(Frame::data(Bytes::from(e)))))
        }
    }
}

struct Setup {
    redis: RedisServer,
    gateway: Proc,
    _dir: tempfile::TempDir,
}

async fn setup(config: &str) -> Setup {
    let redis = RedisServer::start();
    let (dir, path) = config_file(config);
    let upstream = llm_upstream().await;
    let gateway = start_gateway_args(&redis.url(), &upstream, &["--config".into(), path.display().to_string()]);
    Setup { redis, gateway, _dir: dir }
}

/// A chat completion of "abcd" (1 token at 4 characters a token) with `max_tokens`: it reserves
/// `1 + max_tokens`.
async fn chat(gateway: &Proc, key: &str, max_tokens: u64, usage: Option<u64>) -> Answer {
    let usage = usage.map(|u| u.to_string());
    let mut headers = vec![("x-api-key", key), ("content-type", "application/json")];
    if let Some(usage) = &usage {
        headers.push(("x-test-usage", usage.as_str()));
    }
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "abcd"}], "max_tokens": max_tokens});
    send(Method::POST, &gateway.url("/v1/chat/completions"), &headers, body.to_string())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.logs()))
}

/// The one caller's key of limit `name`.
fn key_of(con: &mut redis::Connection, name: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("rl:*:chat:{name}")).query(con).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0].clone()
}

/// Whole tokens left (RL.PEEK) in the one caller's limit `name` (burst = limit).
fn left(con: &mut redis::Connection, name: &str, limit: u64, window: u64) -> u64 {
    let key = key_of(con, name);
    tokens(con, &key, limit, window, limit)
}

#[tokio::test]
async fn requests_and_tokens_are_limited_together_and_a_refusal_costs_nothing() {
    let s = setup(CHAT).await;
    let first = chat(&s.gateway, "k", 99, Some(100)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", s.gateway.logs());
    assert_eq!(
        first.header("ratelimit-policy"),
        "\"chat-requests\";q=3;w=60, \"chat-tokens\";q=1000;w=86400;qu=\"tokens\""
    );
    assert_eq!(
        (first.header("x-ratelimit-limit-tokens"), first.header("x-ratelimit-remaining-tokens")),
        ("1000", "900")
    );
    assert_eq!(
        (first.header("x-ratelimit-limit-requests"), first.header("x-ratelimit-remaining-requests")),
        ("3", "2")
    );
    assert_eq!(first.header("x-ratelimit-reset-requests"), "20s");
    assert!(first.header("x-ratelimit-reset-tokens").ends_with('s'), "{first:?}");

    // 901 tokens do not fit in the 900 left: refused by the token limit alone, nothing charged.
    let refused = chat(&s.gateway, "k", 900, Some(1)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let limits = refused.json()["error"]["limits"].clone();
    assert_eq!(limits.as_array().unwrap().len(), 1, "{limits}");
    assert_eq!((&limits[0]["policy"], &limits[0]["name"]), (&json!("chat"), &json!("tokens")));
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), "2");
    let mut con = s.redis.client();
    assert_eq!(left(&mut con, "requests", 3, 60), 2, "the refusal took a request");
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 900, "the refusal took tokens");

    // The request limit refuses on its own too, and then no tokens are taken.
    assert_eq!(chat(&s.gateway, "k", 9, Some(10)).await.status, StatusCode::OK);
    assert_eq!(chat(&s.gateway, "k", 9, Some(10)).await.status, StatusCode::OK);
    let no_requests = chat(&s.gateway, "k", 9, Some(10)).await;
    assert_eq!(no_requests.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(no_requests.json()["error"]["limits"][0]["name"], "requests");
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 880);
}

#[tokio::test]
async fn a_smaller_usage_is_refunded_and_the_answer_shows_the_settled_bucket() {
    let s = setup(CHAT).await;
    // Reserves 101, uses 40: 61 come back before the answer's headers are written.
    let answer = chat(&s.gateway, "k", 100, Some(40)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", s.gateway.logs());
    assert_eq!(answer.json()["usage"]["total_tokens"], 40, "the model's answer is relayed whole");
    assert_eq!(answer.header("x-ratelimit-remaining-tokens"), "960");
    assert!(answer.header("ratelimit").ends_with("\"chat-tokens\";r=960;t=3456"), "{answer:?}");
    let mut con = s.redis.client();
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 960);
    // Without a usage in the answer the reservation is kept.
    let kept = chat(&s.gateway, "k", 100, None).await;
    assert_eq!(kept.header("x-ratelimit-remaining-tokens"), "859");
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 859);
}

#[tokio::test]
async fn a_larger_usage_is_charged_as_a_debt() {
    let s = setup(CHAT).await;
    // Reserves 11, uses 150: 139 more are charged though only 989 are asked to fit.
    let answer = chat(&s.gateway, "k", 10, Some(150)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", s.gateway.logs());
    let mut con = s.redis.client();
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 850, "{}", s.gateway.logs());
    assert_eq!(answer.header("x-ratelimit-remaining-tokens"), "850");
}

#[tokio::test]
async fn concurrent_requests_never_overspend_the_token_budget() {
    let config = "[[policy]]\nname = \"chat\"\npaths = [\"/v1\"]\nkind = \"openai\"\nlimit = 100\nwindow = 60\n\
        [[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 1000\nwindow = 86400\n";
    let s = setup(config).await;
    let url = s.gateway.url("/v1/chat/completions");
    // Each reserves 100 (an empty prompt, max_tokens 100) and uses exactly that.
    let body = json!({"messages": [{"role": "user", "content": ""}], "max_tokens": 100}).to_string();
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let (url, body) = (url.clone(), Bytes::from(body.clone()));
            tokio::spawn(
                async move { send(Method::POST, &url, &[("x-api-key", "k"), ("x-test-usage", "100")], body).await },
            )
        })
        .collect();
    let mut admitted = 0;
    for request in requests {
        match request.await.unwrap().unwrap().status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}\n{}", s.gateway.logs()),
        }
    }
    assert_eq!(admitted, 10, "exactly the budget's worth");
    let mut con = s.redis.client();
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 0);
    assert_eq!(left(&mut con, "requests", 100, 60), 90, "refusals took no request");
}

#[tokio::test]
async fn a_body_that_is_not_the_expected_json_gets_400_and_costs_nothing() {
    let s = setup(CHAT).await;
    let url = s.gateway.url("/v1/chat/completions");
    for (body, param) in
        [("not json", None), (r#"{"model":"m"}"#, None), (r#"{"messages":[],"max_tokens":"9"}"#, Some("max_tokens"))]
    {
        let answer = send(Method::POST, &url, &[("x-api-key", "k")], body).await.unwrap();
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        let error = &answer.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert_eq!(error["param"].as_str(), param, "{body}");
        assert!(answer.headers.get("ratelimit").is_none());
    }
    let keys: Vec<String> = redis::cmd("KEYS").arg("rl:*").query(&mut s.redis.client()).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// A chat completion with `"stream": true` (and `include_usage` if `asked`); the SSE text.
async fn stream_chat(gateway: &Proc, max_tokens: u64, usage: u64, asked: bool) -> Answer {
    let mut body = json!({"stream": true, "messages": [{"role": "user", "content": "abcd"}], "max_tokens": max_tokens});
    if asked {
        body["stream_options"] = json!({"include_usage": true});
    }
    let usage = usage.to_string();
    let headers = [("x-api-key", "k"), ("x-test-usage", usage.as_str())];
    send(Method::POST, &gateway.url("/v1/chat/completions"), &headers, body.to_string()).await.unwrap()
}

#[tokio::test]
async fn a_stream_passes_through_and_settles_on_its_final_usage_chunk() {
    let s = setup(CHAT).await;
    // Reserves 101, uses 30: settled (refund of 71) when the stream ends.
    let answer = stream_chat(&s.gateway, 100, 30, false).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", s.gateway.logs());
    assert_eq!(answer.header("content-type"), "text/event-stream");
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    assert!(text.contains("include_usage=true"), "the gateway asked for the usage: {text}");
    assert!(!text.contains("total_tokens"), "a client that did not ask gets no usage chunk: {text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(answer.header("x-ratelimit-remaining-tokens"), "899", "headers are sent with the reservation");
    let mut con = s.redis.client();
    let settled = wait_until(Instant::now() + Duration::from_secs(5), || left(&mut con, "tokens", 1000, 86400) == 970);
    assert!(settled, "{}", s.gateway.logs());
    // The next answer's headers show it; a client that asked for usage gets the chunk.
    let next = stream_chat(&s.gateway, 100, 101, true).await;
    assert_eq!(next.header("x-ratelimit-remaining-tokens"), "869");
    assert!(String::from_utf8(next.body.to_vec()).unwrap().contains("\"total_tokens\":101"));
}

// Multi-threaded: the test reads its socket blocking while the in-test upstream streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_keeps_the_reservation() {
    use std::io::{Read, Write};
    let s = setup(CHAT).await;
    let body =
        json!({"stream": true, "messages": [{"role": "user", "content": "abcd"}], "max_tokens": 100}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nX-Test-Usage: 5\r\nX-Test-Events: 40\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", s.gateway.port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("include_usage") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream); // after the first chunk, long before the usage chunk (40 chunks, 20 ms apart)
                  // First the positive event: the gateway saw the stream end and counted the reservation as
                  // charged. Only then does "nothing was given back" mean something.
    let labels = [("policy", "chat"), ("limit", "tokens")];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let charged = value(&scrape(&s.gateway).await, "gateway_tokens_charged_total", &labels);
        if charged == Some(101.0) {
            break;
        }
        assert!(Instant::now() < deadline, "never counted as charged: {charged:?}\n{}", s.gateway.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut con = s.redis.client();
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 899, "the reservation of 101 stays\n{}", s.gateway.logs());
}

/// Bodies whose reservation is beyond any budget, and beyond what a Redis integer holds.
fn never_fitting_bodies() -> Vec<serde_json::Value> {
    let prompt = json!([{"role": "user", "content": "abcd"}]);
    vec![
        json!({"messages": prompt, "max_tokens": i64::MAX}),
        json!({"messages": prompt, "max_tokens": 1u64 << 63}),
        json!({"messages": prompt, "max_tokens": u64::MAX}),
        json!({"messages": prompt, "max_tokens": 1u64 << 32, "n": 1u64 << 32}),
        json!({"messages": prompt, "max_completion_tokens": u64::MAX, "stream": true}),
        json!({"messages": prompt, "max_tokens": 1000}),
    ]
}

#[tokio::test]
async fn a_request_that_can_never_fit_is_refused_whatever_the_failure_mode_and_costs_nothing() {
    for mode in ["open", "closed"] {
        let s = setup(&format!("[redis]\nfailure_mode = \"{mode}\"\n{CHAT}")).await;
        let url = s.gateway.url("/v1/chat/completions");
        for body in never_fitting_bodies() {
            let answer =
                send(Method::POST, &url, &[("x-api-key", "k"), ("x-test-usage", "5")], body.to_string()).await.unwrap();
            assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{mode} {body}: {answer:?}");
            let error = answer.json()["error"].clone();
            assert_eq!(
                error["limits"],
                json!([{"policy": "chat", "name": "tokens", "unit": "tokens", "retry_after_ms": null}]),
                "{body}"
            );
            assert!(answer.headers.get("retry-after").is_none(), "it can never fit: no time to wait for");
            assert_eq!(answer.header("x-should-retry"), "false", "the OpenAI SDK would retry a bare 429");
        }
        let m = scrape(&s.gateway).await;
        let requests = |outcome| value(&m, "gateway_requests_total", &[("policy", "chat"), ("outcome", outcome)]);
        assert_eq!(requests("limited"), Some(6.0), "{mode}");
        assert_eq!((requests("fail_open"), requests("error")), (Some(0.0), Some(0.0)), "{mode}");
        let keys: Vec<String> = redis::cmd("KEYS").arg("rl:*").query(&mut s.redis.client()).unwrap();
        assert!(keys.is_empty(), "{mode}: nothing charged anywhere: {keys:?}");
        assert!(!s.gateway.logs().contains("ERROR"), "{mode}: no limiter-down alarm\n{}", s.gateway.logs());
    }
}

#[tokio::test]
async fn a_command_the_module_refuses_is_never_taken_for_an_outage() {
    // The caller's requests key holds application data: the module refuses to touch it.
    let s = setup(&format!("[redis]\nfailure_mode = \"open\"\n{CHAT}")).await;
    let key = format!("rl:{{{}}}:chat:requests", digest("k"));
    let _: () = redis::cmd("SET").arg(&key).arg("hello").query(&mut s.redis.client()).unwrap();
    let answer = chat(&s.gateway, "k", 10, Some(5)).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "not forwarded unmetered: {answer:?}");
    assert_eq!(answer.json()["error"]["type"], "internal_error");
    let m = scrape(&s.gateway).await;
    let requests = |outcome| value(&m, "gateway_requests_total", &[("policy", "chat"), ("outcome", outcome)]);
    assert_eq!((requests("module_error"), requests("fail_open")), (Some(1.0), Some(0.0)));
    let stored: String = redis::cmd("GET").arg(&key).query(&mut s.redis.client()).unwrap();
    assert_eq!(stored, "hello");
}

#[tokio::test]
async fn a_model_reporting_absurd_usage_is_charged_at_most_one_burst_of_debt() {
    let s = setup(CHAT).await;
    let answer = chat(&s.gateway, "k", 10, Some(u64::MAX)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", s.gateway.logs());
    assert_eq!(answer.header("x-ratelimit-remaining-tokens"), "0", "settled: the bucket is empty");
    let mut con = s.redis.client();
    // One burst of debt at most: the bucket is whole again within two windows.
    let key = key_of(&mut con, "tokens");
    let reset_ms = testkit::peek(&mut con, &key, 1000, 86400, 1000).reset_after_ms;
    assert!(reset_ms <= 2 * 86_400_000 && reset_ms > 86_400_000, "{reset_ms}");
    assert!(!s.gateway.logs().contains("settlement failed"), "{}", s.gateway.logs());
}

// Multi-threaded: the test reads its socket blocking while the in-test upstream streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_never_ends_cuts_the_stream_at_max_event_bytes_and_keeps_the_reservation() {
    use std::io::{Read, Write};
    let config = CHAT.replace("kind = \"openai\"", "kind = \"openai\"\nmax_event_bytes = 262144");
    let s = setup(&config).await;
    let body =
        json!({"stream": true, "messages": [{"role": "user", "content": "abcd"}], "max_tokens": 100}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-API-Key: k\r\nX-Test-Endless-Event: 1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", s.gateway.port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{}", &text[..text.len().min(300)]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stream was cut, not left running: {:?}",
        started.elapsed()
    );
    assert!(!text.ends_with("0\r\n\r\n"), "cut, not ended as if complete");
    assert!(answer.len() < 64 * 1024, "no part of the endless event reached the client: {} bytes", answer.len());
    let mut con = s.redis.client();
    let kept = wait_until(Instant::now() + Duration::from_secs(5), || left(&mut con, "tokens", 1000, 86400) == 899);
    assert!(kept, "a cut stream keeps its reservation of 101\n{}", s.gateway.logs());
    assert!(s.gateway.logs().contains("longer than max_event_bytes"), "{}", s.gateway.logs());
    assert_eq!(chat(&s.gateway, "k", 1, Some(2)).await.status, StatusCode::OK, "the gateway serves on");
}

#[tokio::test]
async fn many_megabyte_bodies_at_once_are_read_without_starving_the_redis_calls() {
    // Half a million zeros beside the prompt: 1 MB the estimate must skip, 40 times at once.
    let config = CHAT.replace("limit = 3\nwindow = 60\n", "limit = 100\nwindow = 86400\n");
    let s = setup(&config).await;
    let zeros = vec!["0"; 500_000].join(",");
    let body = format!(r#"{{"messages":[{{"role":"user","content":"abcd"}}],"max_tokens":9,"pad":[{zeros}]}}"#);
    assert!(body.len() > 1_000_000);
    let url = s.gateway.url("/v1/chat/completions");
    let requests: Vec<_> = (0..40)
        .map(|_| {
            let (url, body) = (url.clone(), Bytes::from(body.clone()));
            tokio::spawn(
                async move { send(Method::POST, &url, &[("x-api-key", "k"), ("x-test-usage", "10")], body).await },
            )
        })
        .collect();
    for request in requests {
        let answer = request.await.unwrap().unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}\n{}", s.gateway.logs());
        assert_eq!(answer.json()["seen_bytes"], body.len(), "forwarded byte for byte");
    }
    let mut con = s.redis.client();
    assert_eq!(left(&mut con, "requests", 100, 86400), 60);
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 1000 - 40 * 10, "each settled on its usage");
}

#[tokio::test]
async fn a_model_that_stalls_after_its_headers_gets_504_at_the_response_timeout_and_keeps_the_reservation() {
    let s = setup(&format!("[upstream]\nresponse_timeout_ms = 500\n{CHAT}")).await;
    let url = s.gateway.url("/v1/chat/completions");
    let body = json!({"messages": [{"role": "user", "content": "abcd"}], "max_tokens": 100}).to_string();
    let started = Instant::now();
    let answer =
        send(Method::POST, &url, &[("x-api-key", "k"), ("x-test-stall-after-headers", "1")], body).await.unwrap();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{answer:?}\n{}", s.gateway.logs());
    assert_eq!(answer.json()["error"]["type"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let mut con = s.redis.client();
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 899, "the reservation of 101 is kept");
    // A streamed answer that stalls is cut at the same bound.
    let streamed = json!({"stream": true, "messages": [{"role": "user", "content": "abcd"}], "max_tokens": 100});
    let started = Instant::now();
    let cut =
        send(Method::POST, &url, &[("x-api-key", "k"), ("x-test-stall-after-headers", "1")], streamed.to_string())
            .await;
    assert!(cut.is_err(), "the body ends broken: {cut:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(left(&mut con, "tokens", 1000, 86400), 798, "kept as well");
}

#[tokio::test]
async fn a_request_estimated_at_nothing_still_reserves_a_token_and_is_refused_while_in_debt() {
    let s = setup(CHAT.replace("limit = 3\n", "limit = 100\n").as_str()).await;
    let url = s.gateway.url("/v1/chat/completions");
    let nothing = json!({"messages": [{"role": "user", "content": ""}], "max_tokens": 0}).to_string();
    let first =
        send(Method::POST, &url, &[("x-api-key", "k"), ("x-test-usage", "5000")], nothing.clone()).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-ratelimit-remaining-tokens"), "0", "settled: one burst of debt");
    // In debt, a request that claims to need nothing is refused like any other.
    for _ in 0..3 {
        let again = send(Method::POST, &url, &[("x-api-key", "k"), ("x-test-usage", "5000")], nothing.clone()).await;
        let again = again.unwrap();
        assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS, "{again:?}");
        assert_eq!(again.json()["error"]["limits"][0]["name"], "tokens");
    }
}

#[tokio::test]
async fn the_model_is_asked_for_an_uncompressed_answer_so_its_usage_can_be_settled() {
    let s = setup(CHAT).await;
    let url = s.gateway.url("/v1/chat/completions");
    let body = json!({"messages": [{"role": "user", "content": "abcd"}], "max_tokens": 100}).to_string();
    let headers = [("x-api-key", "k"), ("x-test-usage", "7"), ("accept-encoding", "gzip, br")];
    let answer = send(Method::POST, &url, &headers, body).await.unwrap();
    assert_eq!(answer.json()["accept_encoding"], "identity");
    assert_eq!(answer.header("x-ratelimit-remaining-tokens"), "993", "settled on the usage of 7");
}

/// Tokens left in each caller's bucket of `limit` tokens a day, and the leases held in each
/// caller's concurrency set.
fn buckets_and_leases(con: &mut redis::Connection) -> (Vec<u64>, u64) {
    let buckets: Vec<String> = redis::cmd("KEYS").arg("*:tokens").query(con).unwrap();
    let left = buckets.iter().map(|key| tokens(con, key, 1000, 86400, 1000)).collect();
    let sets: Vec<String> = redis::cmd("KEYS").arg("*:concurrent").query(con).unwrap();
    let leases = sets.iter().map(|key| redis::cmd("ZCARD").arg(key).query::<u64>(con).unwrap()).sum();
    (left, leases)
}

// Multi-threaded: ten streams run through the in-test upstream while the test measures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_streams_forever_or_never_answers_is_cut_at_its_timeouts_and_frees_everything() {
    let config = format!(
        "[upstream]\ntimeout_ms = 500\nresponse_timeout_ms = 1500\n{}",
        CHAT.replace("limit = 3\nwindow = 60\n", "limit = 3\nwindow = 60\nmax_concurrent = 1\n")
    );
    let s = setup(&config).await;
    let pid = s.gateway.id();
    let before = rss_kib(pid);
    let url = s.gateway.url("/v1/chat/completions");
    let streamed = json!({"stream": true, "messages": [{"role": "user", "content": "abcd"}], "max_tokens": 100});

    // Ten callers, each a stream that never ends (~500 KB a second each through the gateway).
    let started = Instant::now();
    let streams: Vec<_> = (0..10)
        .map(|i| {
            let (url, body) = (url.clone(), streamed.to_string());
            tokio::spawn(async move {
                let key = format!("caller-{i}");
                let headers = [("x-api-key", key.as_str()), ("x-test-forever", "1")];
                let answer = send(Method::POST, &url, &headers, body).await;
                (answer, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = rss_kib(pid);
    for stream in streams {
        let (answer, ended) = stream.await.unwrap();
        assert!(answer.is_err(), "the stream is cut, not ended as if complete: {answer:?}");
        let took = ended - started;
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
            "cut at the response timeout: {took:?}"
        );
    }

    // One that never answers at all: 504 at upstream.timeout_ms.
    let asked = Instant::now();
    let body = json!({"messages": [{"role": "user", "content": "abcd"}], "max_tokens": 100}).to_string();
    let silent = send(Method::POST, &url, &[("x-api-key", "silent"), ("x-test-no-answer", "1")], body).await.unwrap();
    assert_eq!(silent.status, StatusCode::GATEWAY_TIMEOUT, "{silent:?}");
    assert_eq!(silent.json()["error"]["type"], "upstream_timeout");
    assert!(asked.elapsed() < Duration::from_secs(3), "{:?}", asked.elapsed());

    // Every reservation kept (the model may have worked: 1 + 100 each), no lease left behind.
    let mut con = s.redis.client();
    let settled = wait_until(Instant::now() + Duration::from_secs(5), || {
        let (left, leases) = buckets_and_leases(&mut con);
        left.len() == 11 && left.iter().all(|&l| l == 899) && leases == 0
    });
    assert!(settled, "{:?}\n{}", buckets_and_leases(&mut con), s.gateway.logs());
    // Each caller's one slot (max_concurrent = 1) is free again: a normal request passes.
    for key in ["caller-0", "caller-9", "silent"] {
        assert_eq!(chat(&s.gateway, key, 1, Some(2)).await.status, StatusCode::OK, "{key}");
    }
    let after = rss_kib(pid);
    println!("gateway RSS: {before} KiB before, {during} KiB with ten endless streams, {after} KiB after");
    assert!(during < before + 64 * 1024, "memory bounded while streaming: {before} -> {during} KiB");
    assert!(after < before + 64 * 1024, "{before} -> {after} KiB");
}
