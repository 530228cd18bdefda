//! Failure paths that used to be reached only by log lines, end to end with real processes:
//! Redis dies while a streamed LLM answer is running, so the settlement at its end cannot
//! reach it. The client must get the whole answer, the reservation must stand as the charge
//! (nothing given back, nothing charged twice), and the metrics must say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use testkit::redis;

/// An LLM policy whose token budget does not refill during the test: what is left is exactly
/// what was charged.
const CHAT: &str = "[[policy]]\nname = \"chat\"\npaths = [\"/v1/chat\"]\nkind = \"openai\"\nlimit = 100\nwindow = 60\n\
    [[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 1\nwindow = 86400\nburst = 1000\n";

/// The one token bucket in Redis: `(key, tokens left)` (a peek with the policy's numbers, on
/// either backend).
fn token_bucket(redis: &RedisServer) -> Option<(String, i64)> {
    let mut con = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*tokens*").query(&mut con).unwrap();
    let key = keys.into_iter().next()?;
    let left = testkit::commands::tokens(&mut con, &key, 1, 86400, 1000);
    Some((key, i64::try_from(left).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_dying_during_a_stream_leaves_the_client_its_answer_and_the_reservation_as_the_charge() {
    // Every write on disk before it is acknowledged: what a kill leaves is what was charged.
    let mut redis = RedisServer::builder().arg("appendonly", "yes").arg("appendfsync", "always").start();
    let port = free_port();
    let model_args: Vec<String> = ["model", "--listen", &format!("127.0.0.1:{port}"), "--latency-ms", "0"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--token-latency-ms".to_string(), "100".to_string()])
        .collect();
    let mut model = Proc::spawn("model", port, &model_args, &[]);
    model.wait_healthy();
    let (_dir, config) = config_file(CHAT);
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), config.display().to_string()]);

    // 24 words to echo: about 28 tokens at 100 ms each, so the answer streams for ~3 s.
    let text = "word ".repeat(24);
    let body = format!(
        r#"{{"model":"m","stream":true,"max_tokens":200,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        text.trim()
    );
    let url = gateway.url("/v1/chat/completions");
    let streaming = tokio::spawn(async move {
        send(Method::POST, &url, &[("x-api-key", "k"), ("content-type", "application/json")], body).await
    });
    // The reservation is in Redis once the check ran: then Redis goes away mid-stream.
    let deadline = Instant::now() + Duration::from_secs(5);
    assert!(wait_until(deadline, || token_bucket(&redis).is_some()), "{}", gateway.logs());
    let (key, after_reservation) = token_bucket(&redis).unwrap();
    let reserved = 1000 - after_reservation;
    assert!(reserved > 200, "prompt + max_tokens reserved: {reserved}");
    redis.kill();

    let answer = streaming.await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&answer.body);
    assert!(text.ends_with("data: [DONE]\n\n"), "the whole stream reached the client: {text}");
    assert_eq!(answer.header("x-ratelimit-remaining-tokens"), after_reservation.to_string());

    // The settlement could not reach Redis: said once, and the reservation counted as charged.
    let deadline = Instant::now() + Duration::from_secs(5);
    assert!(
        wait_until(deadline, || gateway.logs().contains("settlement failed: reservation kept")),
        "{}",
        gateway.logs()
    );
    redis.respawn();
    let (same_key, left) = token_bucket(&redis).unwrap();
    assert_eq!(same_key, key);
    assert_eq!(left, after_reservation, "no refund of the unused reservation, no second charge");
    let metrics = scrape(&gateway).await;
    let charged = value(&metrics, "gateway_tokens_charged_total", &[("policy", "chat"), ("limit", "tokens")]);
    assert_eq!(charged, Some(reserved as f64));
    let refunded = value(&metrics, "gateway_tokens_refunded_total", &[("policy", "chat"), ("limit", "tokens")]);
    assert_eq!(refunded, Some(0.0));
}
