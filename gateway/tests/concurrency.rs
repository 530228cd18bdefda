//! Concurrency leases end to end (real gateways, a real slow demo model, real Redis): a
//! caller's `max_concurrent` answers `429` and costs no rate-limit token; `[upstream]
//! max_concurrent` holds across three gateways on one Redis (the model never sees more), sheds
//! with `503` + `Retry-After` and charges the refused nothing; a gateway killed with SIGKILL
//! while holding slots frees them within `lease_ms`, and renewal keeps a slow request's slot;
//! as the shared `[upstream.capacity]` bucket runs low, the low tier (keep 50%) is shed first
//! while the high tier (keep 0) still gets through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};

/// A policy on every path whose request bucket never refills during a test (1 a day, a
/// bucket of 10 000): what is left tells exactly how many requests were charged.
const POLICY: &str = "[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 86400\nburst = 10000\n";

fn gateway_with(redis: &RedisServer, model: &Proc, config: &str) -> (tempfile::TempDir, Proc) {
    let (dir, path) = config_file(config);
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), path.display().to_string()]);
    (dir, gateway)
}

/// `X-RateLimit-Remaining` of a fresh cheap request (`GET /v1/models`, no model latency).
async fn remaining(gateway: &Proc, key: &str) -> u64 {
    let answer = send(Method::GET, &gateway.url("/v1/models"), &[("x-api-key", key)], "").await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.header("x-ratelimit-remaining").parse().unwrap()
}

async fn model_stats(model: &Proc) -> serde_json::Value {
    get(&model.url("/stats")).await.unwrap().json()
}

#[tokio::test]
async fn a_callers_third_concurrent_request_gets_429_costs_nothing_and_other_keys_pass() {
    let redis = RedisServer::start();
    let model = start_model(800);
    let (_dir, gateway) = gateway_with(&redis, &model, &format!("{POLICY}max_concurrent = 2\n"));
    let url = gateway.url("/v1/predict");
    let slow = |key: &'static str| {
        let url = url.clone();
        tokio::spawn(async move { send(Method::POST, &url, &[("x-api-key", key)], r#"{"text":"good"}"#).await })
    };
    let first = [slow("alice"), slow("alice")];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = send(Method::POST, &url, &[("x-api-key", "alice")], r#"{"text":"good"}"#).await.unwrap();
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS, "{third:?}\n{}", gateway.logs());
    let retry: u64 = third.header("retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry), "{third:?}");
    let body = third.json();
    assert_eq!(body["error"]["limits"][0]["name"], "concurrent", "{body}");
    assert_eq!(body["error"]["limits"][0]["policy"], "p", "{body}");
    assert!(third.header("ratelimit-policy").contains("\"p-concurrent\";q=2;qu=\"concurrent-requests\""), "{third:?}");
    assert!(third.header("ratelimit").contains("\"p-concurrent\";r=0;"), "{third:?}");
    assert_eq!(third.header("x-ratelimit-remaining"), "9998", "the refused request's token was given back");
    // Another key has its own slots, while alice's two are still in flight.
    let bob = slow("bob");
    for done in first {
        assert_eq!(done.await.unwrap().unwrap().status, StatusCode::OK);
    }
    assert_eq!(bob.await.unwrap().unwrap().status, StatusCode::OK);
    // Charged: alice's two admitted requests (+ this probe), never the refused third.
    assert_eq!(remaining(&gateway, "alice").await, 10_000 - 3);
    // The released slots are free again.
    let again = send(Method::POST, &url, &[("x-api-key", "alice")], r#"{"text":"good"}"#).await.unwrap();
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
}

#[tokio::test]
async fn a_concurrency_refusal_says_retry_after_the_hold_time_seen_not_the_lease_length() {
    let redis = RedisServer::start();
    let model = start_model(2500);
    // One slot, a 30 s lease: the module's own bound would say 30 s.
    let (_dir, gateway) = gateway_with(&redis, &model, &format!("{POLICY}max_concurrent = 1\nlease_ms = 30000\n"));
    let url = gateway.url("/v1/predict");
    let held = |url: String| {
        tokio::spawn(async move { send(Method::POST, &url, &[("x-api-key", "k")], r#"{"text":"good"}"#).await })
    };
    let refusal = |url: String| async move {
        let answer = send(Method::POST, &url, &[("x-api-key", "k")], r#"{"text":"good"}"#).await.unwrap();
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{answer:?}");
        let body = answer.json();
        (answer.header("retry-after").parse::<u64>().unwrap(), body["error"]["limits"][0]["retry_after_ms"].as_u64())
    };
    // Nothing has ended yet: 1 s.
    let first = held(url.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refusal(url.clone()).await, (1, Some(1000)));
    assert_eq!(first.await.unwrap().unwrap().status, StatusCode::OK);
    // One 2.5 s hold seen: a slot frees about every 2.5 s, so retry after 3 s.
    let second = held(url.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (retry, retry_ms) = refusal(url.clone()).await;
    assert_eq!(retry, 3, "ceil(2.5 s), not the 30 s lease");
    let retry_ms = retry_ms.unwrap();
    assert!((2500..2800).contains(&retry_ms), "{retry_ms}");
    assert_eq!(second.await.unwrap().unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn three_gateways_never_let_more_than_upstream_max_concurrent_reach_the_model() {
    let redis = RedisServer::start();
    let model = start_model(200);
    let config = format!("[upstream]\nmax_concurrent = 4\nlease_ms = 5000\n{POLICY}");
    let gateways: Vec<_> = (0..3).map(|_| gateway_with(&redis, &model, &config)).collect();
    let urls: Vec<String> = gateways.iter().map(|(_, g)| g.url("/v1/predict")).collect();
    let served_before = model_stats(&model).await["served"].as_u64().unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..150 {
        let url = urls[i % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            // Up to 3 tries each, 100 ms apart after a 503: bounded in count and time.
            let mut answers = Vec::new();
            for _ in 0..3 {
                let answer = send(Method::POST, &url, &[("x-api-key", "shared")], r#"{"text":"ok"}"#).await.unwrap();
                let busy = answer.status == StatusCode::SERVICE_UNAVAILABLE;
                answers.push(answer);
                if !busy {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answers
        }));
    }
    let (mut ok, mut shed) = (0u64, 0u64);
    for task in tasks {
        for answer in task.await.unwrap() {
            match answer.status {
                StatusCode::OK => ok += 1,
                StatusCode::SERVICE_UNAVAILABLE => {
                    shed += 1;
                    let retry: u64 = answer.header("retry-after").parse().unwrap();
                    assert!((1..=5).contains(&retry), "{answer:?}");
                    assert_eq!(answer.json()["error"]["type"], "upstream_busy");
                    assert!(answer.header("ratelimit-policy").contains("qu=\"concurrent-requests\""), "{answer:?}");
                }
                other => panic!("unexpected {other}: {answer:?}"),
            }
        }
    }
    let stats = model_stats(&model).await;
    assert!(stats["max_in_flight"].as_u64().unwrap() <= 4, "the model saw more than 4 at once: {stats}");
    assert!(ok >= 4 && shed > 0, "ok {ok}, shed {shed}");
    assert_eq!(
        stats["served"].as_u64().unwrap() - served_before,
        ok,
        "every admitted request reached the model: {stats}"
    );
    // Only the admitted requests were charged (+1 for this probe): shed ones cost nothing.
    assert_eq!(remaining(&gateways[0].1, "shared").await, 10_000 - ok - 1, "ok {ok}, shed {shed}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_killed_gateways_upstream_slots_come_back_within_lease_ms_and_renewal_keeps_them_till_then() {
    let redis = RedisServer::start();
    let model = start_model(4000);
    let config = format!("[upstream]\nmax_concurrent = 2\nlease_ms = 1000\n{POLICY}");
    let (_a_dir, mut doomed) = gateway_with(&redis, &model, &config);
    let (_b_dir, survivor) = gateway_with(&redis, &model, &config);
    let url = doomed.url("/v1/predict");
    let _slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { send(Method::POST, &url, &[("x-api-key", "k")], r#"{"text":"ok"}"#).await })
        })
        .collect();
    let probe = || async { send(Method::GET, &survivor.url("/v1/models"), &[], "").await.unwrap().status };
    // Both slow requests inside the model: both slots held.
    let deadline = Instant::now() + Duration::from_secs(5);
    while model_stats(&model).await["in_flight"] != 2 {
        assert!(Instant::now() < deadline, "the slow requests never reached the model");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(probe().await, StatusCode::SERVICE_UNAVAILABLE, "both slots held");
    // Past lease_ms the slow requests still hold their slots: they are renewed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(probe().await, StatusCode::SERVICE_UNAVAILABLE, "renewed past lease_ms\n{}", doomed.logs());
    doomed.kill();
    let killed = Instant::now();
    let mut freed = None;
    while killed.elapsed() < Duration::from_secs(3) {
        if probe().await == StatusCode::OK {
            freed = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let freed = freed.expect("the killed gateway's slots never came back");
    assert!(freed <= Duration::from_millis(1500), "freed after {freed:?}, lease_ms is 1000");
}

#[tokio::test]
async fn a_low_capacity_bucket_sheds_the_free_tier_first_and_keeps_serving_pro() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let config = format!(
        "[upstream.capacity]\nlimit = 1\nwindow = 86400\nburst = 10\n\
         [tiers]\ndefault = \"free\"\n[[tier]]\nname = \"free\"\nkeep_percent = 50\n\
         [[tier]]\nname = \"pro\"\nkeys = [\"{}\"]\nkeep_percent = 0\n{POLICY}",
        digest("pro-key")
    );
    let (_dir, gateway) = gateway_with(&redis, &model, &config);
    let call = |key: &'static str| {
        let url = gateway.url("/v1/models");
        async move { send(Method::GET, &url, &[("x-api-key", key)], "").await.unwrap() }
    };
    // Free may take the bucket of 10 down to its keep of 5, no further.
    for i in 0..5 {
        assert_eq!(call("free-key").await.status, StatusCode::OK, "free request {i}\n{}", gateway.logs());
    }
    let shed = call("free-key").await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE, "{shed:?}");
    assert_eq!(shed.json()["error"]["type"], "upstream_busy");
    assert_eq!(shed.json()["error"]["limits"][0]["name"], "capacity");
    assert!(shed.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert!(shed.header("ratelimit").contains("\"upstream-capacity\";r=5;"), "{shed:?}");
    assert_eq!(shed.header("x-ratelimit-remaining"), "9995", "the shed request's rate-limit token was given back");
    // Pro (keep 0) still gets the last 5.
    for i in 0..5 {
        assert_eq!(call("pro-key").await.status, StatusCode::OK, "pro request {i}");
    }
    assert_eq!(call("pro-key").await.status, StatusCode::SERVICE_UNAVAILABLE, "the bucket is empty now");
    assert_eq!(call("free-key").await.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_streamed_answer_holds_its_callers_slot_until_the_stream_ends() {
    use http_body_util::BodyExt;
    let redis = RedisServer::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<String> = ["model", "--listen", &listen, "--latency-ms", "0", "--token-latency-ms", "60"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut model = Proc::spawn("model", port, &args, &[]);
    model.wait_healthy();
    let config = "[[policy]]\nname = \"chat\"\npaths = [\"/v1/chat/completions\"]\nkind = \"openai\"\n\
                  limit = 1\nwindow = 86400\nburst = 10000\nmax_concurrent = 1\n\
                  [[policy]]\nname = \"p\"\nlimit = 1\nwindow = 86400\nburst = 10000\n";
    let (_dir, gateway) = gateway_with(&redis, &model, config);
    let body = r#"{"model":"lexicon-chat-v1","stream":true,"max_tokens":20,
        "messages":[{"role":"user","content":"good good good good good good good good good good"}]}"#;
    let url = gateway.url("/v1/chat/completions");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<axum::body::Bytes>>();
    let request = hyper::Request::post(&url)
        .header("x-api-key", "streamer")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(axum::body::Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", gateway.logs());
    // Headers are in, the stream is still running: the caller's one slot is taken.
    let chat = |key: &'static str| {
        let url = url.clone();
        async move { send(Method::POST, &url, &[("x-api-key", key), ("content-type", "application/json")], body).await }
    };
    let during = chat("streamer").await.unwrap();
    assert_eq!(during.status, StatusCode::TOO_MANY_REQUESTS, "{during:?}");
    let stream = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&stream.to_bytes()).contains("[DONE]"));
    // The stream ended: the slot comes back (released in the background, so allow a moment).
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut after = chat("streamer").await.unwrap();
    while after.status == StatusCode::TOO_MANY_REQUESTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = chat("streamer").await.unwrap();
    }
    assert_eq!(after.status, StatusCode::OK, "{after:?}");
}
