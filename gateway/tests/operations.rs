//! Running the gateway in production, end to end with real processes: `/metrics` as a
//! Prometheus server reads it, the Grafana dashboard against what is exported, shadow
//! policies, and the local deny cache (Redis calls counted by Redis itself).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use prometheus_parse::{Scrape, Value};
use testkit::{redis, tokens};

#[tokio::test]
async fn metrics_count_every_outcome_and_time_every_redis_and_model_call() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 3, 60, &[]);
    let key = [("x-api-key", "metrics")];
    let statuses: Vec<StatusCode> = {
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(predict(&gateway, &key).await.status);
        }
        statuses
    };
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 3, "{statuses:?}");

    let m = scrape(&gateway).await;
    let requests = |outcome| value(&m, "gateway_requests_total", &[("policy", "default"), ("outcome", outcome)]);
    assert_eq!(requests("allowed"), Some(3.0));
    assert_eq!(requests("limited"), Some(3.0));
    assert_eq!(requests("shadow_limited"), Some(0.0), "declared at zero from the start");
    assert_eq!(requests("fail_open"), Some(0.0));
    assert_eq!(
        value(
            &m,
            "gateway_limit_decisions_total",
            &[("policy", "default"), ("limit", "requests"), ("outcome", "limited")]
        ),
        Some(3.0)
    );
    // The first refusal came from Redis, the next two from the deny cache: Redis saw 4 checks,
    // and the latency histogram has exactly Redis's count.
    assert_eq!(value(&m, "gateway_deny_cache_hits_total", &[("policy", "default")]), Some(2.0));
    assert_eq!(value(&m, "gateway_deny_cache_entries", &[]), Some(1.0));
    let checks = testkit::command_calls(&mut redis.client(), "RL.CHECK");
    assert_eq!(checks, 4);
    let timed = m
        .samples
        .iter()
        .find(|s| {
            s.metric == "gateway_redis_duration_seconds"
                && s.labels.get("command") == Some("check")
                && s.labels.get("result") == Some("ok")
        })
        .expect("a histogram of RL.CHECK calls");
    let Value::Histogram(buckets) = &timed.value else { panic!("not a histogram: {timed:?}") };
    assert_eq!(buckets.last().map(|b| (b.less_than, b.count)), Some((f64::INFINITY, checks as f64)));
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "cumulative buckets: {buckets:?}");
    assert_eq!(value(&m, "gateway_upstream_duration_seconds", &[("status", "2xx")]), Some(3.0));
}

/// Every series name a PromQL expression of the dashboard names (`gateway_...`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("gateway_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

/// The label names in the `by (...)` clauses of `expr`.
fn grouping_labels(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .flat_map(|part| part.split(')').next().unwrap_or("").split(','))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != "le")
        .collect()
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_and_labels_the_gateway_exports() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    // A gateway with every feature that has metrics: tokens, leases, upstream capacity.
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_dir, config) = config_file(
        "[upstream]\nmax_concurrent = 10\n[upstream.capacity]\nlimit = 100\nwindow = 1\n\
         [[policy]]\nname = \"chat\"\npaths = [\"/v1/chat/completions\"]\nkind = \"openai\"\nlimit = 10\nwindow = 60\n\
         max_concurrent = 2\n[[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 1000\nwindow = 60\n",
    );
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), config.display().to_string()]);
    let m = scrape(&gateway).await;
    // Histograms appear under their base name (prometheus-parse folds _bucket/_sum/_count),
    // counters as <name>_total, gauges as is.
    let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in &m.samples {
        exported.entry(sample.metric.clone()).or_default().extend(sample.labels.keys().cloned());
    }
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "queries no gateway metric: {expr}");
        for name in names {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|b| exported.contains_key(*b)))
                .unwrap_or(&name);
            let labels = exported.get(base).unwrap_or_else(|| panic!("{name} is not exported; it has {exported:?}"));
            for label in grouping_labels(expr) {
                let on_a_sibling =
                    metric_names(expr).iter().any(|n| exported.get(n.as_str()).is_some_and(|l| l.contains(&label)));
                assert!(labels.contains(&label) || on_a_sibling, "{expr}: no label {label} on {base} ({labels:?})");
            }
        }
    }
}

#[tokio::test]
async fn a_shadow_policy_never_refuses_and_sends_no_headers_but_counts_and_logs() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_dir, config) = config_file("[[policy]]\nname = \"beta\"\nlimit = 2\nwindow = 60\nshadow = true\n");
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), config.display().to_string()]);
    let key = [("x-api-key", "shadow")];
    for i in 0..5 {
        let answer = predict(&gateway, &key).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}: {answer:?}");
        for name in ["ratelimit", "ratelimit-policy", "x-ratelimit-limit", "x-ratelimit-remaining", "retry-after"] {
            assert!(answer.headers.get(name).is_none(), "request {i} has {name}: {answer:?}");
        }
    }
    let m = scrape(&gateway).await;
    let requests = |outcome| value(&m, "gateway_requests_total", &[("policy", "beta"), ("outcome", outcome)]);
    assert_eq!(
        (requests("allowed"), requests("shadow_limited"), requests("limited")),
        (Some(2.0), Some(3.0), Some(0.0))
    );
    // Evaluated for real: the caller's bucket in Redis is spent as an enforced one would be.
    let mut con = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("rl:*:beta:requests").query(&mut con).unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(tokens(&mut con, &keys[0], 2, 60, 2), 0);
    assert!(gateway.logs().contains("shadow policy would have refused"), "{}", gateway.logs());
    assert!(gateway.logs().contains("(shadow: counted, never enforced)"), "said at start: {}", gateway.logs());
}

/// Sends `n` requests with `key`, 8 at a time; returns how many were refused with 429.
async fn hammer(gateway: &Proc, key: &'static str, n: usize) -> usize {
    let url = gateway.url("/v1/predict");
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let url = url.clone();
        tasks.spawn(async move {
            let mut refused = 0;
            for _ in (worker..n).step_by(8) {
                let answer = send(hyper::Method::POST, &url, &[("x-api-key", key)], "{}").await.unwrap();
                if answer.status == StatusCode::TOO_MANY_REQUESTS {
                    assert!(answer.headers.contains_key("retry-after"), "{answer:?}");
                    refused += 1;
                }
            }
            refused
        });
    }
    let mut refused = 0;
    while let Some(n) = tasks.join_next().await {
        refused += n.unwrap();
    }
    refused
}

#[tokio::test]
async fn the_deny_cache_spares_redis_at_least_90_percent_of_the_calls_of_a_hammering_client() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_dir, off) = config_file("[deny_cache]\nenabled = false\n");
    let cached = start_gateway(&redis, &model.url(""), 1, 60, &[]);
    let uncached = start_gateway(&redis, &model.url(""), 1, 60, &["--config", &off.display().to_string()]);
    let mut con = redis.client();
    const N: usize = 400;

    let before = testkit::command_calls(&mut con, "RL.CHECK");
    assert_eq!(hammer(&uncached, "abuser-a", N).await, N - 1);
    let without_cache = testkit::command_calls(&mut con, "RL.CHECK") - before;
    let before = testkit::command_calls(&mut con, "RL.CHECK");
    assert_eq!(hammer(&cached, "abuser-b", N).await, N - 1, "the same answers, with or without the cache");
    let with_cache = testkit::command_calls(&mut con, "RL.CHECK") - before;

    assert_eq!(without_cache, N as u64, "one call per request without the cache");
    let saved = 1.0 - with_cache as f64 / without_cache as f64;
    println!(
        "Redis calls for {N} requests: {without_cache} without the deny cache, {with_cache} with it ({:.1}% fewer)",
        saved * 100.0
    );
    assert!(saved >= 0.9, "only {:.1}% fewer Redis calls ({with_cache} vs {without_cache})", saved * 100.0);
    let m = scrape(&cached).await;
    let hits = value(&m, "gateway_deny_cache_hits_total", &[("policy", "default")]).unwrap();
    assert_eq!(hits as u64 + with_cache, N as u64, "every request was either a Redis call or a cache hit");
}

#[tokio::test]
async fn the_deny_cache_is_stricter_than_redis_after_a_reset_elsewhere_until_retry_after() {
    let redis = RedisServer::start();
    let model = start_model(0);
    // 1 request per 2 s: a refusal says retry after at most 2 s.
    let gateway = start_gateway(&redis, &model.url(""), 1, 2, &[]);
    let key = [("x-api-key", "reset-elsewhere")];
    assert_eq!(predict(&gateway, &key).await.status, StatusCode::OK);
    let refused_at = Instant::now();
    assert_eq!(predict(&gateway, &key).await.status, StatusCode::TOO_MANY_REQUESTS);

    // An operator resets the caller's bucket in Redis: Redis would admit now...
    let mut con = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("rl:*:default:requests").query(&mut con).unwrap();
    testkit::rl_reset(&mut con, &keys[0]);
    // ...but this gateway remembers the refusal until its Retry-After moment.
    assert_eq!(predict(&gateway, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
    let mut admitted = false;
    while !admitted && refused_at.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        admitted = predict(&gateway, &key).await.status == StatusCode::OK;
    }
    let waited = refused_at.elapsed();
    assert!(admitted, "never admitted again\n{}", gateway.logs());
    assert!(waited <= Duration::from_millis(2_500), "held longer than the refusal's retry_after: {waited:?}");
}

#[tokio::test]
async fn tokens_reserved_charged_and_refunded_add_up_and_leases_in_flight_go_up_and_down() {
    let redis = RedisServer::start();
    // The demo model, 800 ms before each answer: long enough to see a lease held.
    let model = start_model(800);
    let (_dir, config) = config_file(
        "[[policy]]\nname = \"chat\"\npaths = [\"/v1/chat/completions\"]\nkind = \"openai\"\nlimit = 10\nwindow = 60\n\
         max_concurrent = 2\n[[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 10000\nwindow = 60\n",
    );
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &["--config".into(), config.display().to_string()]);
    let body =
        r#"{"model":"lexicon-chat-v1","max_tokens":64,"messages":[{"role":"user","content":"what a great model"}]}"#;
    let url = gateway.url("/v1/chat/completions");
    let chat = tokio::spawn(async move {
        send(hyper::Method::POST, &url, &[("x-api-key", "tokens"), ("content-type", "application/json")], body).await
    });
    let leases = |m: &Scrape| value(m, "gateway_leases_in_flight", &[("slot", "caller")]);
    let mut held = None;
    let deadline = Instant::now() + Duration::from_millis(700);
    while held != Some(1.0) && Instant::now() < deadline {
        held = leases(&scrape(&gateway).await);
    }
    assert_eq!(held, Some(1.0), "a lease is held while the model thinks");
    let answer = chat.await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let used = answer.json()["usage"]["total_tokens"].as_f64().unwrap();

    // The lease is released when the body ends, the tokens settle on the answer's usage.
    let mut m = scrape(&gateway).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while leases(&m) != Some(0.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = scrape(&gateway).await;
    }
    assert_eq!(leases(&m), Some(0.0));
    let tokens = |name| value(&m, name, &[("policy", "chat"), ("limit", "tokens")]).unwrap();
    let reserved = tokens("gateway_tokens_reserved_total");
    // ceil(18 characters / 4) prompt tokens + max_tokens 64: the gateway's estimate.
    assert_eq!(reserved, 5.0 + 64.0);
    assert_eq!(tokens("gateway_tokens_charged_total"), used);
    assert_eq!(tokens("gateway_tokens_refunded_total"), reserved - used);
    assert!(used < reserved, "the model used less than reserved: {used}");
}
