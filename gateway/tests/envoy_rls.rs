//! The Envoy rate limit service of `gateway serve --envoy-listen ... --envoy-config ...`, over
//! real gRPC, on a real Redis (the module, or the Functions library when the suite runs with
//! `RL_TEST_BACKEND=functions`), with envoyproxy/ratelimit's own example configuration as it is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

fn example_config() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/rls/reference/example.yaml").display().to_string()
}

/// A gateway serving the rate limit service from the reference example on a free port.
fn start(redis: &RedisServer) -> (Proc, u16) {
    let grpc = free_port();
    let args =
        vec!["--envoy-listen".to_string(), format!("127.0.0.1:{grpc}"), "--envoy-config".to_string(), example_config()];
    (start_gateway_args(&redis.url(), "http://127.0.0.1:9", &args), grpc)
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        ..RateLimitDescriptor::default()
    }
}

/// One `ShouldRateLimit` of domain `rl`.
fn ask(port: u16, descriptors: &[&[(&str, &str)]]) -> Result<RateLimitResponse, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = RateLimitServiceClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
        let request = RateLimitRequest {
            domain: "rl".into(),
            descriptors: descriptors.iter().map(|d| descriptor(d)).collect(),
            hits_addend: 0,
        };
        client.should_rate_limit(request).await.map(|r| r.into_inner())
    })
}

fn codes(response: &RateLimitResponse) -> (i32, Vec<i32>) {
    (response.overall_code, response.statuses.iter().map(|s| s.code).collect())
}

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

#[test]
fn two_services_on_one_redis_share_the_reference_examples_limits() {
    let redis = RedisServer::start();
    let (_a, port_a) = start(&redis);
    let (_b, port_b) = start(&redis);
    // category=account: 4 per minute, whichever service is asked.
    let account: &[(&str, &str)] = &[("category", "account")];
    for (i, port) in [port_a, port_b, port_a, port_b].into_iter().enumerate() {
        let ok = ask(port, &[account]).unwrap();
        assert_eq!(codes(&ok), (OK, vec![OK]), "request {i}");
        assert_eq!(ok.statuses[0].limit_remaining, 3 - i as u32);
        assert_eq!(ok.statuses[0].current_limit.as_ref().unwrap().requests_per_unit, 4);
    }
    let refused = ask(port_b, &[account]).unwrap();
    assert_eq!(codes(&refused), (OVER, vec![OVER]));
    let reset = refused.statuses[0].duration_until_reset.unwrap();
    assert!((14..=15).contains(&reset.seconds), "a token every 15 s: {reset:?}");
    assert_eq!(refused.response_headers_to_add[0].key, "retry-after");
    // Unlimited, and no limit at all.
    let open = ask(port_a, &[&[("foo", "x"), ("bay", "1")], &[("nothing", "here")]]).unwrap();
    assert_eq!(codes(&open), (OK, vec![OK, OK]));
    assert_eq!(open.statuses[0].limit_remaining, u32::MAX);
    assert_eq!(open.statuses[1].current_limit, None);
}

#[test]
fn a_request_over_the_narrow_descriptor_leaves_the_broad_one_uncharged() {
    let redis = RedisServer::start();
    let (_gateway, port) = start(&redis);
    // foo=x: 2 per minute (the broad one); source_cluster=proxy + destination_cluster=mock: 1.
    let broad: &[(&str, &str)] = &[("foo", "x")];
    let narrow: &[(&str, &str)] = &[("source_cluster", "proxy"), ("destination_cluster", "mock")];
    assert_eq!(codes(&ask(port, &[broad, narrow]).unwrap()), (OK, vec![OK, OK]));
    for _ in 0..3 {
        assert_eq!(codes(&ask(port, &[broad, narrow]).unwrap()), (OVER, vec![OK, OVER]));
    }
    let alone = ask(port, &[broad]).unwrap();
    assert_eq!(codes(&alone), (OK, vec![OK]), "the refusals charged foo=x nothing");
    assert_eq!(alone.statuses[0].limit_remaining, 0);
    // requests_per_unit 0 (bar=banned): refused, and it charges nothing either.
    let banned = ask(port, &[&[("foo", "y"), ("bar", "banned")], &[("foo", "y")]]).unwrap();
    assert_eq!(codes(&banned), (OVER, vec![OVER, OK]));
    assert_eq!(ask(port, &[&[("foo", "y")]]).unwrap().statuses[0].limit_remaining, 1);
}

#[test]
fn redis_down_is_unavailable_for_envoys_failure_mode_deny_to_decide() {
    let mut redis = RedisServer::start();
    let (_gateway, port) = start(&redis);
    assert_eq!(ask(port, &[&[("category", "account")]]).unwrap().overall_code, OK);
    redis.kill();
    let down = ask(port, &[&[("category", "account")]]).unwrap_err();
    assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
}

#[test]
fn a_forced_overage_goes_into_debt_that_later_requests_wait_off() {
    let redis = RedisServer::start();
    let (_gateway, port) = start(&redis);
    // category=account: 4 a minute. An LLM answer settles 6 more than reserved: charged whatever
    // is left (the descriptor ends in ml_api_rate_limiter=force), never refused.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let forced = rt.block_on(async {
        let mut client = RateLimitServiceClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
        let mut overage = descriptor(&[("category", "account"), ("ml_api_rate_limiter", "force")]);
        overage.hits_addend = Some(envoy_types::pb::google::protobuf::UInt64Value { value: 6 });
        let request = RateLimitRequest { domain: "rl".into(), descriptors: vec![overage], hits_addend: 0 };
        client.should_rate_limit(request).await.unwrap().into_inner()
    });
    assert_eq!(codes(&forced), (OK, vec![OK]));
    assert_eq!(forced.statuses[0].limit_remaining, 0);
    let reset = forced.statuses[0].duration_until_reset.unwrap().seconds;
    assert!((89..=90).contains(&reset), "4 a minute, 6 charged: 2 tokens of debt, 30 s past a full minute: {reset}");
    let refused = ask(port, &[&[("category", "account")]]).unwrap();
    assert_eq!(codes(&refused), (OVER, vec![OVER]));
    let wait = refused.statuses[0].duration_until_reset.unwrap().seconds;
    assert!((44..=45).contains(&wait), "the debt and one token: 45 s: {wait}");
}

#[test]
fn grpc_calls_are_counted_and_timed_in_metrics_and_repeated_refusals_answered_locally() {
    let redis = RedisServer::start();
    let (gateway, port) = start(&redis);
    let account: &[(&str, &str)] = &[("category", "account")];
    for _ in 0..4 {
        assert_eq!(ask(port, &[account]).unwrap().overall_code, OK);
    }
    let calls_before = testkit::command_calls(&mut redis.client(), "RL.CHECK");
    for _ in 0..3 {
        assert_eq!(ask(port, &[account]).unwrap().overall_code, OVER);
    }
    let redis_calls = testkit::command_calls(&mut redis.client(), "RL.CHECK") - calls_before;
    assert_eq!(redis_calls, 1, "the first refusal asked Redis, the deny cache answered the others");
    assert!(ask(port, &[]).is_err());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let scrape = rt.block_on(scrape(&gateway));
    let count = |labels: &[(&str, &str)]| value(&scrape, "gateway_envoy_requests_total", labels);
    assert_eq!(count(&[("domain", "rl"), ("code", "ok")]), Some(4.0));
    assert_eq!(count(&[("domain", "rl"), ("code", "over_limit")]), Some(3.0));
    assert_eq!(count(&[("domain", "rl"), ("code", "invalid_argument")]), Some(1.0));
    assert_eq!(count(&[("domain", "other"), ("code", "unavailable")]), Some(0.0), "declared at start");
    assert_eq!(value(&scrape, "gateway_envoy_duration_seconds", &[("code", "ok")]), Some(4.0));
    assert_eq!(value(&scrape, "gateway_deny_cache_hits_total", &[("policy", "envoy")]), Some(2.0));
    let timed = value(&scrape, "gateway_redis_duration_seconds", &[("command", "check"), ("result", "ok")]);
    assert_eq!(timed, Some(5.0), "every limiter call timed");
}

/// One `ShouldRateLimit` of domain `rl` with descriptors built by the caller.
fn ask_raw(
    port: u16,
    descriptors: Vec<RateLimitDescriptor>,
    hits_addend: u32,
) -> Result<RateLimitResponse, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = RateLimitServiceClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
        client
            .should_rate_limit(RateLimitRequest { domain: "rl".into(), descriptors, hits_addend })
            .await
            .map(|r| r.into_inner())
    })
}

fn with_hits(entries: &[(&str, &str)], hits: u64, negative: bool) -> RateLimitDescriptor {
    let mut d = descriptor(entries);
    d.hits_addend = Some(envoy_types::pb::google::protobuf::UInt64Value { value: hits });
    d.is_negative_hits = negative;
    d
}

#[test]
fn hostile_requests_get_clear_answers_and_charge_only_what_they_should() {
    let redis = RedisServer::start();
    let (_gateway, port) = start(&redis);
    let account: &[(&str, &str)] = &[("category", "account")];
    // The same descriptor twice (a virtual host's action and a route's): one bucket, charged
    // both hits, in one call (Redis refuses a call naming a key twice).
    let twice = ask_raw(port, vec![descriptor(account), descriptor(account)], 0).unwrap();
    assert_eq!(codes(&twice), (OK, vec![OK, OK]));
    assert_eq!(twice.statuses[1].limit_remaining, 2, "4 a minute, 2 taken");
    // Absurd hits: refused, can never fit, nothing charged, no error.
    let absurd = ask_raw(port, vec![with_hits(account, u64::MAX, false)], u32::MAX).unwrap();
    assert_eq!(codes(&absurd), (OVER, vec![OVER]));
    assert!(absurd.response_headers_to_add.is_empty(), "no retry-after: it can never fit");
    assert_eq!(ask(port, &[account]).unwrap().statuses[0].limit_remaining, 1, "the absurd request took nothing");
    // An absurd refund fills the bucket to its burst, no further.
    let refill = ask_raw(port, vec![with_hits(account, u64::MAX, true)], 0).unwrap();
    assert_eq!((refill.overall_code, refill.statuses[0].limit_remaining), (OK, 4));
    // An absurd forced charge: a debt of one burst at most.
    let forced = ask_raw(
        port,
        vec![with_hits(&[("category", "account"), ("ml_api_rate_limiter", "force")], u64::MAX, false)],
        0,
    )
    .unwrap();
    assert_eq!((forced.overall_code, forced.statuses[0].limit_remaining), (OK, 0));
    let reset = forced.statuses[0].duration_until_reset.unwrap().seconds;
    assert!((119..=120).contains(&reset), "one burst of debt: 2 minutes to full: {reset}");
    // More limited descriptors than one call may charge: a bad request, nothing charged.
    let many: Vec<RateLimitDescriptor> =
        (0..65).map(|i| descriptor(&[("foo", "x"), ("baz", &format!("v{i}"))])).collect();
    let refused = ask_raw(port, many, 0).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        ask(port, &[&[("foo", "x"), ("baz", "v0")]]).unwrap().statuses[0].limit_remaining,
        0,
        "1 a second: fresh"
    );
    // Unknown domain, empty keys and values, odd bytes: no limit, OK.
    let odd = ask_raw(port, vec![descriptor(&[("", "")]), descriptor(&[("\u{0}", "\u{fffd}\u{202e}")])], 0).unwrap();
    assert_eq!(codes(&odd), (OK, vec![OK, OK]));
}
