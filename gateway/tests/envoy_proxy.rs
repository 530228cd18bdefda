//! A real Envoy 1.40 in front of the demo model, limited by the gateway's rate limit service
//! (`gateway serve --envoy-listen`), on a real Redis (the module, or the Functions library when
//! the suite runs with `RL_TEST_BACKEND=functions`). The bootstrap and the limits are the files
//! users are given (`deploy/envoy/envoy.yaml`, `deploy/envoy/ratelimit.yaml`), with only their
//! ports moved (and, where a test says so, one setting changed); the last test runs
//! envoyproxy/ratelimit's own example limits behind the routes of its own example proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use hyper::{Method, StatusCode};
use testkit::envoy::with_ports;
use testkit::{tokens, Envoy};

fn deploy_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/envoy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shipped limits with the chat token budget per day instead of per minute: a test that
/// counts tokens then sees no refill between its calls (1000 a day is 0.01 a second).
fn limits_per_day() -> String {
    let limits = deploy_file("ratelimit.yaml");
    let minute = "name: chat_tokens\n          unit: minute";
    assert_eq!(limits.matches(minute).count(), 1);
    limits.replace(minute, "name: chat_tokens\n          unit: day")
}

/// A rate limit service for `limits` (YAML) on `redis`; its gRPC port.
fn start_service(redis: &RedisServer, limits: &str) -> (Proc, u16, tempfile::TempDir) {
    start_service_on(redis, limits, free_port())
}

fn start_service_on(redis: &RedisServer, limits: &str, grpc: u16) -> (Proc, u16, tempfile::TempDir) {
    let (dir, path) = config_file(limits);
    let args = vec![
        "--envoy-listen".to_string(),
        format!("127.0.0.1:{grpc}"),
        "--envoy-config".to_string(),
        path.display().to_string(),
    ];
    (start_gateway_args(&redis.url(), "http://127.0.0.1:9", &args), grpc, dir)
}

/// Envoy on `bootstrap` (written for the listener 10000, admin 9901, model 9000 and service
/// 8081), moved to free ports and to `model` and `service`.
fn start_envoy(bootstrap: &str, model: &Proc, service: u16) -> Envoy {
    let (port, admin) = (free_port(), free_port());
    let moved = with_ports(bootstrap, &[(10000, port), (9901, admin), (9000, model.port), (8081, service)]);
    Envoy::start(&moved, port, admin)
}

async fn call(envoy: &Envoy, method: Method, path: &str, key: &str, body: &str) -> Answer {
    let url = format!("http://127.0.0.1:{}{path}", envoy.port);
    let headers = [("x-api-key", key), ("content-type", "application/json")];
    send(method, &url, &headers, body.to_string()).await.unwrap()
}

async fn predict_via(envoy: &Envoy, key: &str) -> Answer {
    call(envoy, Method::POST, "/v1/predict", key, r#"{"text":"what a great model"}"#).await
}

/// A chat request's body, and the number of tokens the shipped Lua filter reserves for it.
fn chat_body(content: &str, max_tokens: u64, stream: bool) -> (String, u64) {
    let mut body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    });
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let body = body.to_string();
    let reserve = (body.len() as u64).div_ceil(4) + max_tokens;
    (body, reserve)
}

/// `usage.total_tokens` of an answer, plain JSON or the last of a stream's events.
fn usage(answer: &Answer) -> u64 {
    let text = String::from_utf8_lossy(&answer.body);
    let at = text.rfind("\"total_tokens\":").unwrap_or_else(|| panic!("no usage in {text}"));
    text[at + 15..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

fn token_key(api_key: &str) -> String {
    format!("rl:{{ml_api}}:envoy:llm_tokens_chat.api_key_{api_key}")
}

/// The chat tokens left for `api_key` (1000 a day), once they equal `expected` or after 10 s.
fn tokens_settle_to(redis: &RedisServer, api_key: &str, expected: u64) -> u64 {
    let mut con = redis.client();
    let mut left = 0;
    wait_until(Instant::now() + Duration::from_secs(10), || {
        left = tokens(&mut con, &token_key(api_key), 1000, 86_400, 1000);
        left == expected
    });
    left
}

#[tokio::test]
async fn two_envoys_on_one_redis_share_the_limits_and_refuse_with_the_headers_right() {
    let redis = RedisServer::start();
    let model = start_model(1);
    let bootstrap = deploy_file("envoy.yaml");
    let (_service_a, grpc_a, _a) = start_service(&redis, &deploy_file("ratelimit.yaml"));
    let (_service_b, grpc_b, _b) = start_service(&redis, &deploy_file("ratelimit.yaml"));
    let envoys = [start_envoy(&bootstrap, &model, grpc_a), start_envoy(&bootstrap, &model, grpc_b)];
    // /v1/predict: 5 a minute per API key, whichever Envoy is asked.
    for i in 0..5u64 {
        let ok = predict_via(&envoys[(i % 2) as usize], "alice").await;
        assert_eq!(ok.status, StatusCode::OK, "request {i}: {ok:?}");
        assert_eq!(ok.header("x-ratelimit-remaining"), (4 - i).to_string());
        // The nearest limit first, then every policy of the request (Envoy's draft 03 format).
        assert_eq!(ok.header("x-ratelimit-limit"), "5, 20;w=60, 5;w=60");
    }
    let refused = predict_via(&envoys[1], "alice").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{refused:?}");
    assert_eq!(refused.header("retry-after"), "12", "a token every 12 s");
    assert_eq!(refused.header("x-ratelimit-remaining"), "0");
    let reset: u64 = refused.header("x-ratelimit-reset").parse().unwrap();
    assert!((11..=12).contains(&reset), "never earlier than the token: {reset}");
    assert_eq!(refused.header("x-envoy-ratelimited"), "true");
    // Another key has its own buckets.
    assert_eq!(predict_via(&envoys[0], "bob").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_request_over_the_narrow_limit_leaves_the_broad_one_uncharged() {
    let redis = RedisServer::start();
    let model = start_model(1);
    let (_service, grpc, _dir) = start_service(&redis, &deploy_file("ratelimit.yaml"));
    let envoy = start_envoy(&deploy_file("envoy.yaml"), &model, grpc);
    for _ in 0..5 {
        assert_eq!(predict_via(&envoy, "carol").await.status, StatusCode::OK);
    }
    for _ in 0..4 {
        assert_eq!(predict_via(&envoy, "carol").await.status, StatusCode::TOO_MANY_REQUESTS);
    }
    // The broad limit (20 a minute on every route) was charged by the 5 admitted requests only.
    let models = call(&envoy, Method::GET, "/v1/models", "carol", "").await;
    assert_eq!(models.status, StatusCode::OK);
    assert_eq!(models.header("x-ratelimit-limit"), "20, 20;w=60");
    assert_eq!(models.header("x-ratelimit-remaining"), "14");
    // Without the API key header Envoy sends no descriptor: nothing to limit.
    let url = format!("http://127.0.0.1:{}/v1/models", envoy.port);
    assert!(get(&url).await.unwrap().headers.get("x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn an_llm_answer_plain_or_streamed_settles_to_exactly_its_usage() {
    let redis = RedisServer::start();
    let model = start_model(1);
    let (_service, grpc, _dir) = start_service(&redis, &limits_per_day());
    let envoy = start_envoy(&deploy_file("envoy.yaml"), &model, grpc);
    let mut spent = 0;
    for stream in [false, true] {
        let (body, reserve) = chat_body("one two three four five six", 100, stream);
        let answer = call(&envoy, Method::POST, "/v1/chat/completions", "dave", &body).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        let used = usage(&answer);
        assert!(used < reserve, "the estimate covers the answer: {used} < {reserve}");
        spent += used;
        assert_eq!(tokens_settle_to(&redis, "dave", 1000 - spent), 1000 - spent, "stream {stream}: refunded the rest");
    }
    // A request without max_tokens is reserved the default 256 and pays the overage when the
    // answer is done.
    let words = vec!["word"; 400].join(" ");
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": words}]}).to_string();
    let reserve = (body.len() as u64).div_ceil(4) + 256;
    let answer = call(&envoy, Method::POST, "/v1/chat/completions", "dave", &body).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let used = usage(&answer);
    assert!(used > reserve, "an overage: {used} > {reserve}");
    spent += used;
    assert_eq!(tokens_settle_to(&redis, "dave", 1000 - spent), 1000 - spent, "the overage charged");
    // A request that can never fit is refused and charges nothing.
    let (huge, _) = chat_body("hi", 5000, false);
    let refused = call(&envoy, Method::POST, "/v1/chat/completions", "dave", &huge).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(tokens_settle_to(&redis, "dave", 1000 - spent), 1000 - spent);
}

#[tokio::test]
async fn the_estimate_reads_what_the_model_reads_however_it_is_written() {
    let redis = RedisServer::start();
    let model = start_model(1);
    let (_service, grpc, _dir) = start_service(&redis, &limits_per_day());
    let envoy = start_envoy(&deploy_file("envoy.yaml"), &model, grpc);
    let messages = r#""messages":[{"role":"user","content":"hi"}]"#;
    // Each asks for more than the day's 1000 tokens, in a form a pattern could miss; each
    // would pass (reserving 256) if the filter missed it.
    let hostile = [
        ("/v1/chat/completions", format!(r#"{{"model":"m",{messages},"max\u005ftokens":5000}}"#)),
        ("/v1/chat/completions", format!(r#"{{"model":"m",{messages},"max_tokens" : 2000000000}}"#)),
        ("/v1/chat/completions", format!(r#"{{"model":"m",{messages},"max_tokens":100,"n":1,"n":20}}"#)),
        (
            "/v1/chat/completions",
            format!(r#"{{"model":"m",{messages},"max_completion_tokens":900,"max_tokens":10,"n":2}}"#),
        ),
        ("/v1/chat/completions?api-version=1", format!(r#"{{"model":"m",{messages},"max_tokens":5000}}"#)),
        ("/v1//chat/completions", format!(r#"{{"model":"m",{messages},"max_tokens":5000}}"#)),
    ];
    for (path, body) in &hostile {
        let answer = call(&envoy, Method::POST, path, "gina", body).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{path} {body}: {answer:?}");
        assert_eq!(answer.header("x-ratelimit-remaining"), "20", "the API key's limit charged nothing: {answer:?}");
    }
    assert_eq!(tokens_settle_to(&redis, "gina", 1000), 1000, "refused: nothing charged");
    // The same requests asking for little pass, and settle to their usage.
    let small = format!(r#"{{"model":"m",{messages},"max\u005ftokens":5}}"#);
    let answer = call(&envoy, Method::POST, "/v1/chat/completions?api-version=1", "gina", &small).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let used = usage(&answer);
    assert_eq!(tokens_settle_to(&redis, "gina", 1000 - used), 1000 - used);
}

#[tokio::test]
async fn a_request_let_through_without_the_service_is_charged_its_usage_never_refunded() {
    let redis = RedisServer::start();
    // Three seconds before the first token: the service comes back while the answer is made.
    let model = start_model(3000);
    let limits = limits_per_day();
    let grpc = free_port();
    let first = start_service_on(&redis, &limits, grpc);
    let lenient = deploy_file("envoy.yaml").replace("failure_mode_deny: true", "failure_mode_deny: false");
    let envoy = std::sync::Arc::new(start_envoy(&lenient, &model, grpc));
    let (body, _) = chat_body("one two three", 50, true);
    let paid = call(&envoy, Method::POST, "/v1/chat/completions", "hana", &body).await;
    assert_eq!(paid.status, StatusCode::OK, "{paid:?}");
    let mut spent = usage(&paid);
    assert_eq!(tokens_settle_to(&redis, "hana", 1000 - spent), 1000 - spent);
    drop(first);
    let unpaid = tokio::spawn({
        let (envoy, body) = (envoy.clone(), body.clone());
        async move { call(&envoy, Method::POST, "/v1/chat/completions", "hana", &body).await }
    });
    // Envoy has let the request through (the service is gone) once the model has it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _back = start_service_on(&redis, &limits, grpc);
    let unpaid = unpaid.await.unwrap();
    assert_eq!(unpaid.status, StatusCode::OK, "{unpaid:?}");
    spent += usage(&unpaid);
    // Refunding the unused part of a reservation never made would give tokens back.
    assert_eq!(tokens_settle_to(&redis, "hana", 1000 - spent), 1000 - spent, "its usage charged, nothing given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_llm_requests_never_reserve_more_than_the_budget() {
    let redis = RedisServer::start();
    // Two seconds before the first token: every request below is decided while the admitted
    // ones still hold their reservations.
    let model = start_model(2000);
    let (_service, grpc, _dir) = start_service(&redis, &limits_per_day());
    let envoy = std::sync::Arc::new(start_envoy(&deploy_file("envoy.yaml"), &model, grpc));
    let (body, reserve) = chat_body("hello", 300, true);
    let fits = 1000 / reserve;
    assert_eq!(fits, 3, "three reservations of {reserve} fit in 1000");
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let (envoy, body) = (envoy.clone(), body.clone());
            tokio::spawn(async move { call(&envoy, Method::POST, "/v1/chat/completions", "erin", &body).await })
        })
        .collect();
    let mut used = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            StatusCode::OK => used.push(usage(&answer)),
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}: {answer:?}"),
        }
    }
    assert_eq!(used.len() as u64, fits, "admitted: as many as the budget holds");
    let spent: u64 = used.iter().sum();
    assert_eq!(tokens_settle_to(&redis, "erin", 1000 - spent), 1000 - spent, "and each settled to its usage");
}

#[tokio::test]
async fn redis_down_refuses_with_failure_mode_deny_and_admits_without() {
    let mut redis = RedisServer::start();
    let model = start_model(1);
    let (_service, grpc, _dir) = start_service(&redis, &deploy_file("ratelimit.yaml"));
    let deny = deploy_file("envoy.yaml");
    let allow = deny.replace("failure_mode_deny: true", "failure_mode_deny: false");
    assert_ne!(deny, allow);
    let (strict, lenient) = (start_envoy(&deny, &model, grpc), start_envoy(&allow, &model, grpc));
    assert_eq!(predict_via(&strict, "frank").await.status, StatusCode::OK);
    redis.kill();
    let refused = predict_via(&strict, "frank").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused:?}");
    assert_eq!(predict_via(&lenient, "frank").await.status, StatusCode::OK);
    assert!(envoy_stat(&strict, "failure_mode_allowed").is_none_or(|n| n == 0));
    assert!(envoy_stat(&lenient, "failure_mode_allowed").is_some_and(|n| n >= 1), "{:?}", lenient.admin_get("/stats"));
}

/// Envoy's `cluster.ratelimit.ratelimit.<name>` counter.
fn envoy_stat(envoy: &Envoy, name: &str) -> Option<u64> {
    envoy.stat(&format!("cluster.model.ratelimit.{name}"))
}

/// The routes of envoyproxy/ratelimit's example proxy (`examples/envoy/proxy.yaml`) that its
/// example limits (`gateway/tests/rls/reference/example.yaml`, domain `rl`) are written for.
const REFERENCE_PROXY: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
static_resources:
  listeners:
    - address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                http_filters:
                  - name: envoy.filters.http.ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
                      domain: rl
                      request_type: external
                      stage: 0
                      rate_limited_as_resource_exhausted: true
                      failure_mode_deny: false
                      enable_x_ratelimit_headers: DRAFT_VERSION_03
                      rate_limit_service:
                        grpc_service: {envoy_grpc: {cluster_name: ratelimit}}
                        transport_api_version: V3
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
                route_config:
                  name: route
                  virtual_hosts:
                    - name: backend
                      domains: ["*"]
                      routes:
                        - match: {prefix: /header}
                          route:
                            cluster: mock
                            prefix_rewrite: /v1/echo
                            rate_limits:
                              - actions:
                                  - request_headers: {header_name: "foo", descriptor_key: "foo"}
                        - match: {prefix: /twoheader}
                          route:
                            cluster: mock
                            prefix_rewrite: /v1/echo
                            rate_limits:
                              - actions:
                                  - request_headers: {header_name: "foo", descriptor_key: "foo"}
                                  - request_headers: {header_name: "bar", descriptor_key: "bar"}
                              - actions:
                                  - request_headers: {header_name: "foo", descriptor_key: "foo"}
                                  - request_headers: {header_name: "baz", descriptor_key: "baz"}
  clusters:
    - name: ratelimit
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {http2_protocol_options: {}}
      load_assignment:
        cluster_name: ratelimit
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8081}}}}]}]
    - name: mock
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: mock
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9000}}}}]}]
"#;

#[tokio::test]
async fn the_reference_services_example_limits_behave_behind_its_example_proxy() {
    let redis = RedisServer::start();
    let model = start_model(1);
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/rls/reference/example.yaml");
    let (_service, grpc, _dir) = start_service(&redis, &std::fs::read_to_string(example).unwrap());
    let envoy = start_envoy(REFERENCE_PROXY, &model, grpc);
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", envoy.port);
    let ask = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let url = url(path);
        async move { send(Method::GET, &url, &headers, "").await.unwrap() }
    };
    // foo (any value): 2 a minute; the third is refused.
    for left in ["1", "0"] {
        let ok = ask("/header", vec![("foo", "a")]).await;
        assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
        assert_eq!(ok.header("x-ratelimit-remaining"), left);
    }
    let refused = ask("/header", vec![("foo", "a")]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{refused:?}");
    // foo + bar=banned: requests_per_unit 0 refuses, and charges foo nothing.
    let banned = ask("/twoheader", vec![("foo", "b"), ("bar", "banned")]).await;
    assert_eq!(banned.status, StatusCode::TOO_MANY_REQUESTS, "{banned:?}");
    assert_eq!(ask("/header", vec![("foo", "b")]).await.header("x-ratelimit-remaining"), "1");
    // foo + baz=shady: shadow mode, never refused; foo + bay: unlimited.
    for _ in 0..4 {
        let shadow = ask("/twoheader", vec![("foo", "c"), ("baz", "shady")]).await;
        assert_eq!(shadow.status, StatusCode::OK, "{shadow:?}");
    }
}
