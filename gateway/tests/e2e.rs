//! End to end: a real redis-server with the module, the real demo model, the real gateway
//! binary, real HTTP over loopback. Windows are 1-2 s so waiting out a limit is quick.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::*;
use hyper::{Method, StatusCode};
use testkit::redis;

#[tokio::test]
async fn under_the_limit_answers_200_with_the_rate_limit_headers() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 3, 60, &[]);

    let first = predict(&gateway, &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", gateway.logs());
    assert_eq!(first.json()["label"], "positive", "the model's answer is relayed");
    assert_eq!(first.header("ratelimit-policy"), "\"default\";q=3;w=60");
    // One of three tokens used; one token takes 20 s to come back.
    assert_eq!(first.header("ratelimit"), "\"default\";r=2;t=20");
    assert_eq!(first.header("x-ratelimit-limit"), "3");
    assert_eq!(first.header("x-ratelimit-remaining"), "2");
    assert_eq!(first.header("x-ratelimit-reset"), "20");
    assert!(first.headers.get("retry-after").is_none());

    let second = predict(&gateway, &[]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("ratelimit"), "\"default\";r=1;t=40");
    assert_eq!(second.header("x-ratelimit-remaining"), "1");
    assert_eq!(second.header("x-ratelimit-reset"), "40");
}

#[tokio::test]
async fn over_the_limit_429_with_retry_after_then_200_after_waiting_it() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 2, 2, &[]);

    assert_eq!(predict(&gateway, &[]).await.status, StatusCode::OK);
    assert_eq!(predict(&gateway, &[]).await.status, StatusCode::OK);
    let limited = predict(&gateway, &[]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "{}", gateway.logs());
    // A token comes back every second; the bucket is full again in 2 s.
    assert_eq!(limited.header("retry-after"), "1");
    assert_eq!(limited.header("ratelimit"), "\"default\";r=0;t=1");
    assert_eq!(limited.header("ratelimit-policy"), "\"default\";q=2;w=2");
    assert_eq!(limited.header("x-ratelimit-remaining"), "0");
    assert_eq!(limited.header("x-ratelimit-reset"), "2");
    assert_eq!(limited.header("content-type"), "application/json");
    let body = limited.json();
    assert_eq!(
        body["error"]["message"],
        "Rate limit exceeded: \"requests\" of policy \"default\" (2 requests per 2 seconds). Please try again after 1 second.",
        "{body}"
    );
    assert_eq!((&body["error"]["type"], &body["error"]["retry_after_seconds"]), (&"rate_limited".into(), &1.into()));
    let refused = body["error"]["limits"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{body}");
    assert_eq!((&refused[0]["policy"], &refused[0]["name"]), (&"default".into(), &"requests".into()));
    assert_eq!(refused[0]["unit"], "requests");
    let wait = refused[0]["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 0 && wait <= 1000, "{body}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = predict(&gateway, &[]).await;
    assert_eq!(again.status, StatusCode::OK, "Retry-After was too short: {again:?}");
    assert_eq!(again.header("x-ratelimit-remaining"), "0");

    // The access log says whose request each was and, for the refusal, which limit refused it.
    let logs = gateway.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains(" request ") && l.contains("/v1/predict")).collect();
    assert_eq!(lines.len(), 4, "{logs}");
    for line in &lines {
        for field in ["policy=default", "tier=anonymous", "caller=\"ip\"", "id="] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
    }
    assert!(lines[2].contains("status=429") && lines[2].contains("refused_by=requests"), "{}", lines[2]);
    assert!(!lines[3].contains("refused_by"), "{}", lines[3]);
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_one_limit() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let a = start_gateway(&redis, &model.url(""), 3, 60, &[]);
    let b = start_gateway(&redis, &model.url(""), 3, 60, &[]);
    let key = [("authorization", "Bearer shared-key")];

    let remaining = |answer: &Answer| answer.header("x-ratelimit-remaining").to_string();
    let r1 = predict(&a, &key).await;
    let r2 = predict(&b, &key).await;
    let r3 = predict(&a, &key).await;
    assert_eq!([r1.status, r2.status, r3.status], [StatusCode::OK; 3]);
    assert_eq!([remaining(&r1), remaining(&r2), remaining(&r3)], ["2", "1", "0"]);
    assert_eq!(predict(&b, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(predict(&a, &key).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn api_keys_are_isolated_and_never_stored_raw() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 1, 60, &["--key-prefix", "test:"]);

    assert_eq!(predict(&gateway, &[("authorization", "Bearer key-alpha-123")]).await.status, StatusCode::OK);
    // The same key in the other header is the same caller.
    assert_eq!(predict(&gateway, &[("x-api-key", "key-alpha-123")]).await.status, StatusCode::TOO_MANY_REQUESTS);
    // Another key, and a caller without a key (limited by IP), have their own buckets.
    assert_eq!(predict(&gateway, &[("authorization", "Bearer key-beta-456")]).await.status, StatusCode::OK);
    assert_eq!(predict(&gateway, &[]).await.status, StatusCode::OK);
    assert_eq!(predict(&gateway, &[("x-api-key", "key-beta-456")]).await.status, StatusCode::TOO_MANY_REQUESTS);

    let mut con = redis.client();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    keys.sort();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for key in &keys {
        // test:{<hash>}:<policy>:<limit>
        let tagged = key.strip_prefix("test:{").and_then(|k| k.strip_suffix("}:default:requests"));
        let hash = tagged.unwrap_or_else(|| panic!("unexpected key {key}"));
        assert_eq!(hash.len(), 32, "{key}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        assert!(!key.contains("alpha") && !key.contains("beta") && !key.contains("127.0.0.1"), "{key}");
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "{key} has PTTL {ttl}");
    }
}

#[tokio::test]
async fn ip_fallback_ignores_a_spoofed_forwarded_for_from_an_untrusted_peer() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 1, 60, &[]);

    assert_eq!(predict(&gateway, &[("x-forwarded-for", "198.51.100.1")]).await.status, StatusCode::OK);
    // A new address in X-Forwarded-For does not buy a new bucket: the peer is 127.0.0.1.
    let spoofed = predict(&gateway, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(spoofed.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(predict(&gateway, &[]).await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn ip_fallback_honours_forwarded_for_from_a_trusted_proxy() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 1, 60, &["--trusted-proxy", "127.0.0.0/8"]);

    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(predict(&gateway, &xff("198.51.100.1")).await.status, StatusCode::OK);
    assert_eq!(predict(&gateway, &xff("198.51.100.2")).await.status, StatusCode::OK);
    assert_eq!(predict(&gateway, &xff("198.51.100.1")).await.status, StatusCode::TOO_MANY_REQUESTS);
    // The right-most untrusted hop is the client: a client-supplied left part changes nothing.
    assert_eq!(predict(&gateway, &xff("203.0.113.9, 198.51.100.2")).await.status, StatusCode::TOO_MANY_REQUESTS);
    // Without the header the trusted peer itself is the client.
    assert_eq!(predict(&gateway, &[]).await.status, StatusCode::OK);
    let junk = predict(&gateway, &xff("198.51.100.3, not-an-address")).await;
    assert_eq!(junk.status, StatusCode::BAD_REQUEST);
    assert_eq!(junk.json()["error"]["type"], "bad_request");
}

#[tokio::test]
async fn upstream_down_gives_502_with_a_json_error() {
    let redis = RedisServer::start();
    let nowhere = format!("http://127.0.0.1:{}", dead_port());
    let gateway = start_gateway(&redis, &nowhere, 5, 60, &[]);

    let answer = predict(&gateway, &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.json()["error"]["type"], "upstream_unavailable");
    // The request was metered, and the headers say so.
    assert_eq!(answer.header("x-ratelimit-remaining"), "4");
}

#[tokio::test]
async fn slow_upstream_gives_504() {
    let redis = RedisServer::start();
    let model = start_model(3000);
    let gateway = start_gateway(&redis, &model.url(""), 5, 60, &["--upstream-timeout-ms", "200"]);
    let answer = predict(&gateway, &[]).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(answer.json()["error"]["type"], "upstream_timeout");
}

#[tokio::test]
async fn oversize_bodies_get_413_and_malformed_requests_a_4xx() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 5, 60, &["--max-body-bytes", "100"]);

    let big = format!(r#"{{"text":"{}"}}"#, "a".repeat(200));
    let answer = send(Method::POST, &gateway.url("/v1/predict"), &[], big.clone()).await.unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.json()["error"]["type"], "payload_too_large");
    // A declared length over the limit is refused before the limiter: no quota spent.
    let small = predict(&gateway, &[]).await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(small.header("x-ratelimit-remaining"), "4");

    // Without a declared length (chunked), the limit holds while reading.
    let chunked = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        big.len(),
        big
    );
    assert!(raw_status_line(gateway.port, chunked.as_bytes()).starts_with("HTTP/1.1 413"));
    // Nonsense on the wire gets a 400, and the gateway goes on serving.
    assert!(raw_status_line(gateway.port, b"HELLO THERE\r\n\r\n").starts_with("HTTP/1.1 400"));
    let bad_length = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\nConnection: close\r\n\r\n";
    assert!(raw_status_line(gateway.port, bad_length).starts_with("HTTP/1.1 400"));
    // The model's own 400 for a bad body is relayed.
    let not_json = send(Method::POST, &gateway.url("/v1/predict"), &[], "not json").await.unwrap();
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(predict(&gateway, &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn forwards_method_path_query_headers_and_body_but_not_hop_by_hop_headers() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 5, 60, &[]);

    let headers = [
        ("authorization", "Bearer k"),
        ("x-custom", "kept"),
        ("connection", "x-hop"),
        ("x-hop", "dropped"),
        ("x-forwarded-for", "192.0.2.1"),
    ];
    let answer = send(Method::PUT, &gateway.url("/v1/echo?a=1&b=two"), &headers, "0123456789").await.unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{}", gateway.logs());
    let seen = answer.json();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["path"], "/v1/echo");
    assert_eq!(seen["query"], "a=1&b=two");
    assert_eq!(seen["body_bytes"], 10);
    assert_eq!(seen["headers"]["x-custom"], "kept");
    assert_eq!(seen["headers"]["authorization"], "Bearer k");
    // From an untrusted peer the claimed earlier hops are dropped: only the peer is reported.
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-host"], format!("127.0.0.1:{}", gateway.port));
    assert!(seen["headers"].get("x-hop").is_none(), "{seen}");
    assert!(answer.headers.contains_key("ratelimit"));
}

#[tokio::test]
async fn redis_failure_fails_closed_by_default_and_open_when_configured() {
    let mut redis = RedisServer::start();
    let model = start_model(0);
    let closed = start_gateway(&redis, &model.url(""), 5, 60, &["--redis-timeout-ms", "300"]);
    let open = start_gateway(&redis, &model.url(""), 5, 60, &["--redis-timeout-ms", "300", "--fail-open"]);
    assert_eq!(get(&closed.url("/readyz")).await.unwrap().status, StatusCode::OK);
    assert_eq!(predict(&closed, &[]).await.status, StatusCode::OK);

    redis.kill();
    let refused = predict(&closed, &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["error"]["type"], "rate_limiter_unavailable");
    assert_eq!(get(&closed.url("/readyz")).await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&closed.url("/healthz")).await.unwrap().status, StatusCode::OK);
    let unmetered = predict(&open, &[]).await;
    assert_eq!(unmetered.status, StatusCode::OK);
    assert!(unmetered.headers.get("ratelimit").is_none());

    // A longer outage, with requests all along, so that whatever backs off between
    // reconnection attempts has backed off as far as it goes.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_millis(1500) {
        assert_eq!(predict(&closed, &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(predict(&open, &[]).await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // When Redis is back (respawn returns once it answers PING), the gateway reconnects by
    // itself and admits requests again within a second: every request until then fails
    // exactly as failure_mode says.
    redis.respawn();
    if acl_mode() {
        restricted_url(&redis.url(), "rl:"); // the restarted server has only its default user
    }
    let back = Instant::now();
    let recovered = loop {
        let answer = predict(&closed, &[]).await;
        if answer.status == StatusCode::OK {
            break back.elapsed();
        }
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}\n{}", closed.logs());
        assert!(back.elapsed() < Duration::from_secs(5), "never admitted again\n{}", closed.logs());
    };
    println!("closed gateway admitting again {} ms after Redis came back", recovered.as_millis());
    assert!(recovered < Duration::from_secs(1), "took {recovered:?} to recover\n{}", closed.logs());
    assert_eq!(get(&closed.url("/readyz")).await.unwrap().status, StatusCode::OK);
    // The open gateway forwards unmetered until it is back too, then meters again.
    let metered = loop {
        let answer = predict(&open, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}\n{}", open.logs());
        if answer.headers.get("ratelimit").is_some() {
            break back.elapsed();
        }
        assert!(back.elapsed() < Duration::from_secs(5), "never metered again\n{}", open.logs());
    };
    assert!(metered < Duration::from_secs(1), "took {metered:?} to meter again\n{}", open.logs());
}

#[tokio::test]
async fn redis_passwords_are_used_but_never_logged() {
    let redis = RedisServer::start();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("hunter2").query(&mut redis.client()).unwrap();
    let model = start_model(0);
    let url = format!("redis://:hunter2@127.0.0.1:{}/", redis.port());
    let args: Vec<String> = ["--limit", "5", "--window", "60"].iter().map(|s| s.to_string()).collect();
    let gateway = start_gateway_args(&url, &model.url(""), &args);
    assert_eq!(get(&gateway.url("/readyz")).await.unwrap().status, StatusCode::OK);
    assert_eq!(predict(&gateway, &[]).await.status, StatusCode::OK);

    let wrong = format!("redis://:wrong-password@127.0.0.1:{}/", redis.port());
    let refused = start_gateway_args(&wrong, &model.url(""), &args);
    let not_ready = get(&refused.url("/readyz")).await.unwrap();
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["reason"], "redis unavailable");
    assert_eq!(predict(&refused, &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);

    for (logs, secret) in [(gateway.logs(), "hunter2"), (refused.logs(), "wrong-password")] {
        assert!(logs.contains(":***@127.0.0.1"), "{logs}");
        assert!(!logs.contains(secret), "{logs}");
    }
}

#[tokio::test]
async fn readyz_needs_the_module_when_told_to_use_it() {
    let redis = RedisServer::builder().without_module().start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 5, 60, &["--redis-backend", "module"]);
    let ready = get(&gateway.url("/readyz")).await.unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "not_ready");
    assert_eq!(ready.json()["reason"], "ratelimit module not loaded in redis", "not 'redis unavailable': it answers");
    let refused = predict(&gateway, &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&gateway.url("/healthz")).await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn the_example_config_applies_the_longest_matching_policy() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let args = vec!["--config".to_string(), example_config().display().to_string()];
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &args);

    let predict_answer = predict(&gateway, &[]).await;
    assert_eq!(predict_answer.header("ratelimit-policy"), "\"predict\";q=10;w=60");
    assert_eq!(predict_answer.header("ratelimit"), "\"predict\";r=9;t=6");
    let models = get(&gateway.url("/v1/models")).await.unwrap();
    assert_eq!(models.status, StatusCode::OK);
    assert_eq!(models.header("ratelimit-policy"), "\"default\";q=60;w=60");
    assert_eq!(models.header("x-ratelimit-remaining"), "59");
    // An encoded path is matched in its decoded form: it cannot slip into the larger policy.
    let encoded = send(Method::POST, &gateway.url("/v1/%70redict"), &[], "{}").await.unwrap();
    assert_eq!(encoded.header("ratelimit-policy"), "\"predict\";q=10;w=60");
    assert_eq!(encoded.header("x-ratelimit-remaining"), "8");
    // The gateway's own endpoints are not limited and not forwarded.
    let health = get(&gateway.url("/healthz")).await.unwrap();
    assert!(health.headers.get("ratelimit").is_none());
}

#[tokio::test]
async fn the_client_prints_each_outcome_waits_for_retry_after_and_sums_up() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 2, 2, &[]);
    let url = gateway.url("/v1/predict");

    let out = run_client(&["--url", &url, "-n", "4", "--wait", "--api-key", "client-test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    // 2 per 2 s: one comes back every second, and "0 left" is not "wait for the whole bucket".
    assert_eq!(
        lines[0],
        "Request 1: OK. 1 more request can be sent now, one more comes back every 1 second, the bucket is full again in 1 second.",
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        "Request 2: OK. No more requests left right now: the next one comes back within 1 second, all of them in 2 seconds.",
        "{stdout}"
    );
    assert_eq!(lines[2], "Request 3: rate limited. Please try again after 1 second.", "{stdout}");
    assert_eq!(lines[3], "Waiting 1 second as Retry-After asks...", "{stdout}");
    assert!(
        lines[4].starts_with("Request 4: OK. No more requests left right now: the next one comes back within 1 second"),
        "{stdout}"
    );
    assert!(
        lines[5].starts_with("Summary: 4 requests in ") && lines[5].ends_with(": 3 OK, 1 rate limited."),
        "{stdout}"
    );

    // Without --wait the limited requests are just reported.
    let out = run_client(&["--url", &url, "-n", "3", "--api-key", "client-test-2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("Request 3: rate limited. Please try again after 1 second.\n"), "{stdout}");
    assert!(stdout.contains(": 2 OK, 1 rate limited."), "{stdout}");
}

#[tokio::test]
async fn the_client_explains_a_connection_error_and_exits_non_zero() {
    let url = format!("http://127.0.0.1:{}/v1/predict", dead_port());
    let out = run_client(&["--url", &url, "-n", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("Request 1: cannot connect: "), "{stdout}");
    assert!(!stdout.contains("Request 2"), "it stops at the first connection error: {stdout}");
    assert!(
        stderr.contains(&format!("cannot connect to {url}")) && stderr.contains("Is the gateway running"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_demo_model_answers_directly() {
    let model = start_model(0);
    let answer = send(Method::POST, &model.url("/v1/predict"), &[], r#"{"text":"this is not good"}"#).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["label"], "negative");
    assert_eq!(answer.json()["model"], "lexicon-sentiment-v1");
    let bad = send(Method::POST, &model.url("/v1/predict"), &[], Bytes::from_static(b"{")).await.unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn two_different_api_keys_or_a_hop_by_hop_key_header_get_400_before_any_charge() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 1, 60, &[]);

    let refused = [
        vec![("authorization", "Bearer victim-key"), ("x-api-key", "my-key")],
        vec![("x-api-key", "victim-key"), ("x-api-key", "my-key")],
        vec![("authorization", "Bearer victim-key"), ("authorization", "Bearer my-key")],
        vec![("authorization", "Bearer victim-key"), ("connection", "authorization")],
        vec![("x-api-key", "my-key"), ("connection", "keep-alive, X-API-Key")],
    ];
    for headers in &refused {
        let answer = predict(&gateway, headers).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{headers:?}\n{}", gateway.logs());
        assert_eq!(answer.json()["error"]["type"], "bad_request", "{headers:?}");
        assert!(answer.headers.get("ratelimit").is_none(), "{headers:?}");
    }
    // Nothing was charged: each key (and the IP) still has its one request.
    for headers in [vec![("authorization", "Bearer victim-key")], vec![("x-api-key", "my-key")], vec![]] {
        let answer = predict(&gateway, &headers).await;
        assert_eq!(answer.status, StatusCode::OK, "{headers:?}");
        assert_eq!(answer.header("x-ratelimit-remaining"), "0");
    }
    // The same key twice is one caller.
    let same = predict(&gateway, &[("authorization", "Bearer k"), ("x-api-key", "k")]).await;
    assert_eq!(same.status, StatusCode::OK);
    let mut con = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[tokio::test]
async fn require_api_key_answers_401_to_requests_without_one() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let (_dir, config) =
        config_file("[identity]\nrequire_api_key = true\n[[policy]]\nname = \"default\"\nlimit = 5\nwindow = 60\n");
    let args = vec!["--config".to_string(), config.display().to_string()];
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &args);

    let anonymous = predict(&gateway, &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", gateway.logs());
    assert_eq!(anonymous.json()["error"]["type"], "unauthorized");
    assert_eq!(anonymous.header("www-authenticate"), "Bearer");
    let keyed = predict(&gateway, &[("x-api-key", "k")]).await;
    assert_eq!(keyed.status, StatusCode::OK);
    assert_eq!(keyed.header("x-ratelimit-remaining"), "4");
}

#[tokio::test]
async fn a_request_target_that_is_not_a_path_gets_400_and_costs_nothing() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 1, 60, &[]);

    let answer = raw_answer(
        gateway.port,
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}\n{}", gateway.logs());
    assert!(answer.contains(r#""type":"bad_request""#), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("ratelimit"), "{answer}");
    let connect = raw_answer(
        gateway.port,
        b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(connect.starts_with("HTTP/1.1 400"), "{connect}\n{}", gateway.logs());
    let first = predict(&gateway, &[]).await;
    assert_eq!(first.status, StatusCode::OK, "OPTIONS * or CONNECT was charged");
}

#[tokio::test]
async fn the_model_gets_exactly_the_normalized_path_the_policy_was_chosen_on() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let args = vec!["--config".to_string(), example_config().display().to_string()];
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &args);

    let path_seen = |answer: &Answer| answer.json()["path"].as_str().unwrap().to_string();
    for (sent, forwarded) in [
        ("/v1//echo", "/v1/echo"),
        ("/v1/%65cho", "/v1/echo"),
        ("/v1/echo/x/..", "/v1/echo"),
        ("/x/../v1/./echo", "/v1/echo"),
        ("/v1/echo/a;x=1", "/v1/echo/a%3Bx=1"),
        ("/v1/echo/%2570?q=1", "/v1/echo/%2570"),
    ] {
        let answer = send(Method::GET, &gateway.url(sent), &[], Bytes::new()).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{sent}\n{}", gateway.logs());
        assert_eq!(path_seen(&answer), forwarded, "{sent}");
        assert_eq!(answer.header("ratelimit-policy"), "\"default\";q=60;w=60", "{sent}");
    }
    // Paths that only look like /v1/predict fall under another policy, and the model does
    // not treat them as /v1/predict either.
    for sent in ["/v1/predict;x=1", "/V1/predict", "/v1/predict/.."] {
        let answer = send(Method::POST, &gateway.url(sent), &[], r#"{"text":"hi"}"#).await.unwrap();
        assert_eq!(answer.header("ratelimit-policy"), "\"default\";q=60;w=60", "{sent}");
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{sent} reached the model's predict: {answer:?}");
    }
    // Encoded or dot-segment ways to /v1/predict are charged to the predict policy.
    for sent in ["/v1/%70redict", "/v1/x/../predict", "/v1//predict"] {
        let answer = send(Method::POST, &gateway.url(sent), &[], r#"{"text":"hi"}"#).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{sent}");
        assert_eq!(answer.header("ratelimit-policy"), "\"predict\";q=10;w=60", "{sent}");
    }
    // A backslash is not a separator: it reaches the model encoded, so no server can read it as one.
    let raw = raw_answer(
        gateway.port,
        b"GET /v1/echo/a\\b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains(r#""path":"/v1/echo/a%5Cb""#), "{raw}");
}

#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 5, 60, &["--client-body-timeout-ms", "300"]);

    let started = Instant::now();
    let partial = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"text\":";
    let answer = raw_answer(gateway.port, partial, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}\n{}", gateway.logs());
    assert!(answer.contains(r#""type":"request_timeout""#), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(9), "answered only when the client gave up");
}

#[tokio::test]
async fn forwarding_headers_are_kept_from_a_trusted_proxy_and_dropped_from_anyone_else() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let headers = [
        ("x-forwarded-for", "192.0.2.1"),
        ("x-forwarded-for", "198.51.100.2, 198.51.100.3"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example.com"),
        ("forwarded", "for=192.0.2.1;proto=https"),
        ("x-real-ip", "192.0.2.1"),
    ];

    let trusted = start_gateway(&redis, &model.url(""), 5, 60, &["--trusted-proxy", "127.0.0.1"]);
    let seen = send(Method::GET, &trusted.url("/v1/echo"), &headers, Bytes::new()).await.unwrap().json();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "192.0.2.1, 198.51.100.2, 198.51.100.3, 127.0.0.1", "{seen}");
    assert_eq!(h["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(h["x-forwarded-host"], "api.example.com", "{seen}");
    assert_eq!(h["forwarded"], "for=192.0.2.1;proto=https", "{seen}");
    assert_eq!(h["x-real-ip"], "192.0.2.1", "{seen}");

    let direct = start_gateway(&redis, &model.url(""), 5, 60, &[]);
    let seen = send(Method::GET, &direct.url("/v1/echo"), &headers, Bytes::new()).await.unwrap().json();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(h["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", direct.port), "{seen}");
    assert!(h.get("forwarded").is_none() && h.get("x-real-ip").is_none(), "{seen}");
}

#[test]
fn the_client_refuses_a_rate_it_cannot_schedule() {
    for rate in ["1e-300", "0", "-1", "NaN"] {
        let flag = format!("--rate={rate}");
        let out = run_client(&["--url", "http://127.0.0.1:1/", "-n", "1", &flag]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--rate {rate}: {stderr}");
        assert!(stderr.contains("error: --rate"), "--rate {rate}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn ipv6_callers_without_a_key_share_a_bucket_per_64() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 1, 60, &["--trusted-proxy", "127.0.0.1"]);

    let xff = |v: &'static str| [("x-forwarded-for", v)];
    assert_eq!(predict(&gateway, &xff("2001:db8:0:1::1")).await.status, StatusCode::OK);
    // Another address of the same /64 is the same caller.
    let same_net = predict(&gateway, &xff("2001:db8:0:1:ffff::2")).await;
    assert_eq!(same_net.status, StatusCode::TOO_MANY_REQUESTS, "{}", gateway.logs());
    // Another /64 is another caller.
    assert_eq!(predict(&gateway, &xff("2001:db8:0:2::1")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let redis = RedisServer::start();
    let model = start_model(0);
    let gateway = start_gateway(&redis, &model.url(""), 5, 60, &["--client-header-timeout-ms", "300"]);

    let started = Instant::now();
    let answer = raw_answer(gateway.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ", Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(9), "the connection stayed open: {answer:?}\n{}", gateway.logs());
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Whole requests are still served.
    assert_eq!(get(&gateway.url("/v1/models")).await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_lets_an_open_request_finish_then_exits() {
    let redis = RedisServer::start();
    let model = start_model(1500);
    let mut gateway = start_gateway(&redis, &model.url(""), 5, 60, &[]);

    let url = gateway.url("/v1/predict");
    let open = tokio::spawn(async move {
        send(Method::POST, &url, &[("content-type", "application/json")], r#"{"text":"good"}"#).await
    });
    // Terminated once the request is inside the model (not merely sent).
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&model.url("/stats")).await.unwrap().json()["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the request never reached the model");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.terminate();
    let answer = open.await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK, "the open request was cut off: {answer:?}");
    let status = gateway.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", gateway.logs());
    assert!(gateway.logs().contains("gateway stopped"), "{}", gateway.logs());
}

#[test]
fn a_fatal_error_is_said_once_and_a_short_secret_is_warned_about() {
    // A config the gateway refuses: the reason once on stderr (it used to come twice).
    let out = std::process::Command::new(BIN)
        .args(["serve", "--upstream", "http://127.0.0.1:1", "--limit", "0", "--window", "60"])
        .envs(serve_env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("limit must be").count(), 1, "{stderr}");
    // With errors logged off, still said (plainly).
    let out = std::process::Command::new(BIN)
        .args(["serve", "--upstream", "http://127.0.0.1:1", "--limit", "0", "--window", "60"])
        .envs(serve_env())
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("limit must be").count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
}

#[tokio::test]
async fn a_key_secret_under_16_bytes_starts_with_a_warning() {
    let redis = RedisServer::start();
    let port = free_port();
    let args = serve_args(
        port,
        "http://127.0.0.1:1",
        &["--redis-url".into(), redis.url(), "--limit".into(), "5".into(), "--window".into(), "60".into()],
    );
    let mut short = Proc::spawn("gateway", port, &args, &[("GATEWAY_KEY_SECRET", "x"), ("RUST_LOG", "info")]);
    short.wait_healthy();
    assert!(short.logs().contains("the key-hashing secret is shorter than 16 bytes"), "{}", short.logs());
    assert!(short.logs().contains("bytes=1"), "{}", short.logs());
    let long = start_gateway(&redis, "http://127.0.0.1:1", 5, 60, &[]);
    assert!(!long.logs().contains("key-hashing secret is shorter"), "{}", long.logs());
}

#[test]
fn the_client_refuses_a_url_without_http_and_counts_of_zero() {
    for (args, says) in [
        (&["--url", "127.0.0.1:8080/v1/predict"][..], "did you mean http://127.0.0.1:8080/v1/predict ?"),
        (&["--url", "https://127.0.0.1/v1/predict"], "only http:// URLs are supported"),
        (&["-c", "0"], "0 is not in 1..=1024"),
        (&["-c", "1025"], "1025 is not in 1..=1024"),
        (&["-n", "0"], "0 is not in 1.."),
        (&["--timeout-ms", "0"], "0 is not in 1.."),
    ] {
        let out = run_client(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing sent");
    }
}
