//! Budgets under real contention: three gateways on one Redis, many clients at once on one
//! key. For tokens: answers that use less than their reservation (refunds) and more (forced
//! charges), streamed and not, racing each other; the bucket must end exactly at what the
//! admitted requests used. For requests: a limit that binds across gateways admits exactly its
//! burst.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::*;
use hyper::{Method, StatusCode};
use testkit::redis;

/// Tokens that do not refill during a test (1 a day): what is left is exactly what was spent.
const BURST: u64 = 3000;

/// The gateway counts 8 characters a token, the demo model 4: a long prompt is reserved at
/// half its cost, so its answer uses more than the reservation (a forced charge); a short
/// prompt with a large `max_tokens` uses less (a refund).
fn config() -> String {
    format!(
        "[[policy]]\nname = \"chat\"\npaths = [\"/v1/chat\"]\nkind = \"openai\"\nchars_per_token = 8\n\
         limit = 100000\nwindow = 60\n\
         [[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 1\nwindow = 86400\nburst = {BURST}\n"
    )
}

/// Tokens spent from the one tokens bucket, debt included, read from its stored TAT (whole
/// nanoseconds) against the server's clock: a fresh bucket's TAT is now, each token spent
/// moves it one emission interval (a day) later, and a test lasts far less than a day, so the
/// spent count is the distance rounded up.
fn tokens_spent(redis: &RedisServer) -> u64 {
    let mut con = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:tokens").query(&mut con).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let tat: u128 = redis::cmd("GET").arg(&keys[0]).query::<String>(&mut con).unwrap().parse().unwrap();
    let (secs, micros): (u128, u128) = redis::cmd("TIME").query(&mut con).unwrap();
    let now = secs * 1_000_000_000 + micros * 1_000;
    const INTERVAL_NANOS: u128 = 86_400 * 1_000_000_000;
    u64::try_from(tat.saturating_sub(now).div_ceil(INTERVAL_NANOS)).unwrap()
}

/// `usage.total_tokens` of a JSON answer, or of a stream's usage chunk.
fn usage_of(body: &[u8], streamed: bool) -> u64 {
    if streamed {
        return stream_usage(body);
    }
    let json = serde_json::from_slice::<serde_json::Value>(body).unwrap();
    json["usage"]["total_tokens"].as_u64().unwrap_or_else(|| panic!("no usage: {}", String::from_utf8_lossy(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_shared_by_three_gateways_ends_exactly_at_what_the_admitted_requests_used() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_dir, path) = config_file(&config());
    let args = ["--config".to_string(), path.display().to_string()];
    let gateways: Vec<Proc> = (0..3).map(|_| start_gateway_args(&redis.url(), &model.url(""), &args)).collect();
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/v1/chat/completions")).collect();

    // 90 requests at once on one key, round robin over the gateways (each gateway gets every
    // kind): a third use less than reserved, a third more, a third are streamed (with the
    // usage chunk asked for). The
    // reservation is the gateway's estimate: the prompt's characters / 8, rounded up, plus
    // `max_tokens`.
    let long = "many words in this prompt ".repeat(20);
    let started = Instant::now();
    let tasks: Vec<_> = (0..90)
        .map(|i| {
            let url = urls[(i / 3) % 3].clone();
            let (text, max_tokens, stream) = match i % 3 {
                0 => ("short", 200, false),     // reserves 1 + 200, uses ~6: refunded
                1 => (long.as_str(), 1, false), // reserves 65 + 1, uses ~131: forced
                _ => ("stream me", 150, true),  // reserves 2 + 150, uses ~8: refunded at the end
            };
            let reserved = (text.chars().count() as u64).div_ceil(8) + max_tokens;
            let mut body = serde_json::json!({
                "model": "m", "max_tokens": max_tokens, "stream": stream,
                "messages": [{"role": "user", "content": text}],
            });
            if stream {
                body["stream_options"] = serde_json::json!({"include_usage": true});
            }
            let body = body.to_string();
            tokio::spawn(async move {
                let headers = [("x-api-key", "shared"), ("content-type", "application/json")];
                (stream, reserved, send(Method::POST, &url, &headers, body).await.unwrap())
            })
        })
        .collect();
    let (mut used, mut overage, mut admitted, mut refused) = (0u64, 0u64, 0u64, 0u64);
    let (mut refunded_kind, mut forced_kind) = (0, 0);
    for task in tasks {
        let (streamed, reserved, answer) = task.await.unwrap();
        match answer.status {
            StatusCode::OK => {
                let usage = usage_of(&answer.body, streamed);
                used += usage;
                overage += usage.saturating_sub(reserved);
                admitted += 1;
                if usage > reserved {
                    forced_kind += 1;
                } else {
                    refunded_kind += 1;
                }
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer.json()["error"]["limits"][0]["name"], "tokens", "{answer:?}");
                refused += 1;
            }
            other => panic!("{other}: {answer:?}"),
        }
    }
    let elapsed = started.elapsed();
    assert!(refused > 0, "the reservations contended: {admitted} admitted, {refused} refused");
    assert!(refunded_kind > 0 && forced_kind > 0, "both settlements raced: {refunded_kind} / {forced_kind}");
    // A reservation is admitted only where it fits, so what went beyond the burst (plus what
    // refilled: 1 token a day, nothing here) is at most the answers' use beyond their
    // reservations, charged as a debt that is itself bounded at one burst.
    let refilled = elapsed.as_secs() / 86400;
    assert!(used <= BURST + refilled + overage, "used {used} of {BURST}, {overage} of it beyond reservations");
    assert!(used <= 2 * BURST, "the debt is bounded at one burst: used {used}");

    // Every settlement is done once the streams' ends are settled: the bucket has spent
    // exactly what the admitted requests used, refunds and forced charges (debt) included.
    let settled = wait_until(Instant::now() + std::time::Duration::from_secs(10), || tokens_spent(&redis) == used);
    assert!(settled, "spent {} != used {used}\n{}", tokens_spent(&redis), gateways[0].logs());
    // And the three gateways' metrics add up to the same.
    let mut charged = 0.0;
    for gateway in &gateways {
        let metrics = scrape(gateway).await;
        charged += value(&metrics, "gateway_tokens_charged_total", &[("policy", "chat"), ("limit", "tokens")]).unwrap();
    }
    assert_eq!(charged, used as f64, "the metrics count what was charged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_limit_that_binds_admits_exactly_its_burst_across_three_gateways() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_dir, path) = config_file("[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 86400\nburst = 50\n");
    let args = ["--config".to_string(), path.display().to_string()];
    let gateways: Vec<Proc> = (0..3).map(|_| start_gateway_args(&redis.url(), &model.url(""), &args)).collect();
    let served_before = get(&model.url("/stats")).await.unwrap().json()["served"].as_u64().unwrap();
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let url = gateways[i % 3].url("/v1/predict");
            tokio::spawn(async move {
                let headers = [("x-api-key", "one-key"), ("content-type", "application/json")];
                send(Method::POST, &url, &headers, r#"{"text":"good"}"#).await.unwrap().status
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(admitted, 50, "exactly the burst, however the 150 raced over three gateways");
    let served = get(&model.url("/stats")).await.unwrap().json()["served"].as_u64().unwrap();
    assert_eq!(served - served_before, 50, "and only those reached the model");
}
