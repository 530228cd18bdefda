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

/// A gateway serving the rate limit service from the reference example on a free port, once
/// that port takes connections: a healthy HTTP listener says nothing of the gRPC one (a CI run
/// was once refused there on its first calls), and a gateway that exited shows its logs.
fn start(redis: &RedisServer) -> (Proc, u16) {
    let grpc = free_port();
    let args =
        vec!["--envoy-listen".to_string(), format!("127.0.0.1:{grpc}"), "--envoy-config".to_string(), example_config()];
    let gateway = start_gateway_args(&redis.url(), "http://127.0.0.1:9", &args);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
        assert!(std::time::Instant::now() < deadline, "the gRPC listener never took a connection\n{}", gateway.logs());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (gateway, grpc)
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

/// Bytes sent as the request message as they are: a malformed `RateLimitRequest`.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = RateLimitResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<RateLimitResponse>, tonic::Status> {
        use prost::Message;
        RateLimitResponse::decode(src).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = RateLimitResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// The gRPC front under attack: megabyte values, ten thousand descriptors, malformed messages
/// and two thousand concurrent calls. Each gets a clear status; the Redis keys stay short;
/// the service's memory stays bounded and it answers normally after.
#[test]
fn the_grpc_front_under_attack_answers_clearly_with_bounded_memory() {
    let redis = RedisServer::start();
    let (gateway, port) = start(&redis);
    let before = rss_kib(gateway.id());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = RateLimitServiceClient::new(channel.clone());
        let request = |descriptors: Vec<RateLimitDescriptor>| RateLimitRequest {
            domain: "rl".into(),
            descriptors,
            hits_addend: 0,
        };
        // A megabyte value on a descriptor whose every value has a bucket of its own (`foo`).
        let huge = "v".repeat(1 << 20);
        let answer = client.should_rate_limit(request(vec![descriptor(&[("foo", &huge)])])).await.unwrap().into_inner();
        assert_eq!(codes(&answer), (OK, vec![OK]));
        // Beyond 4 MiB a message is not read at all.
        let oversized = "v".repeat(5 << 20);
        let refused = client.should_rate_limit(request(vec![descriptor(&[("foo", &oversized)])])).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
        // Ten thousand descriptors: refused before anything is looked up.
        let many: Vec<RateLimitDescriptor> = (0..10_000).map(|i| descriptor(&[("foo", &i.to_string())])).collect();
        let refused = client.should_rate_limit(request(many)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        // Bytes that are no RateLimitRequest (a truncated field, a wrong wire type, noise).
        let path: tonic::codegen::http::uri::PathAndQuery =
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit".parse().unwrap();
        for raw in [vec![0x0a, 0xff], vec![0x0b, 0x01, 0x02], vec![0xff; 64]] {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let status = grpc.unary(tonic::Request::new(raw), path.clone(), RawCodec).await.unwrap_err();
            assert!(
                matches!(status.code(), tonic::Code::Internal | tonic::Code::InvalidArgument),
                "a clear status for a malformed message: {status:?}"
            );
        }
        // Two thousand concurrent calls on one connection.
        let calls: Vec<_> = (0..2000)
            .map(|i| {
                let mut client = client.clone();
                let one = request(vec![descriptor(&[("foo", &format!("c{}", i % 50))])]);
                tokio::spawn(async move { client.should_rate_limit(one).await.map(|r| r.into_inner().overall_code) })
            })
            .collect();
        let mut answered = 0;
        for call in calls {
            if let Ok(code) = call.await.unwrap() {
                assert!(code == OK || code == OVER);
                answered += 1;
            }
        }
        assert_eq!(answered, 2000, "every call answered");
    });
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.client()).unwrap();
    assert!(
        keys.iter().all(|k| k.len() < 120),
        "no key carries the megabyte: {:?}",
        keys.iter().map(String::len).max()
    );
    let after = rss_kib(gateway.id());
    assert!(after < before + 64 * 1024, "memory bounded: {before} KiB before, {after} KiB after");
    assert_eq!(codes(&ask(port, &[&[("category", "account")]]).unwrap()), (OK, vec![OK]), "still serving");
    eprintln!("gRPC attack: RSS {before} KiB before, {after} KiB after");
}

/// Thousands of calls at once on many connections are all answered, each connection told it
/// may carry at most 1024 calls at once, connections beyond `max_connections` closed at once,
/// and the memory stays bounded.
#[test]
fn thousands_of_streams_on_many_connections_are_answered_within_bounds() {
    const CONNECTIONS: usize = 16;
    let redis = RedisServer::start();
    let grpc = free_port();
    let args = vec![
        "--envoy-listen".to_string(),
        format!("127.0.0.1:{grpc}"),
        "--envoy-config".to_string(),
        example_config(),
        "--max-connections".to_string(),
        (CONNECTIONS + 1).to_string(),
    ];
    let gateway = start_gateway_args(&redis.url(), "http://127.0.0.1:9", &args);
    let before = rss_kib(gateway.id());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (during, refused_quickly) = rt.block_on(async {
        // What the service announces: the most calls one connection may carry at once.
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", grpc)).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut h2 = h2.ready().await.unwrap();
        let announced = wait_for_settings(&mut h2).await;
        assert_eq!(announced, 1024, "SETTINGS_MAX_CONCURRENT_STREAMS");

        // Sixteen connections (with the one above: max_connections is 17), 400 calls at once
        // on each: 6400 streams in flight.
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            channels.push(channel);
        }
        let calls: Vec<_> = (0..CONNECTIONS * 400)
            .map(|i| {
                let mut client = RateLimitServiceClient::new(channels[i % CONNECTIONS].clone());
                let one = RateLimitRequest {
                    domain: "rl".into(),
                    descriptors: vec![descriptor(&[("foo", &format!("s{}", i % 100))])],
                    hits_addend: 0,
                };
                tokio::spawn(async move { client.should_rate_limit(one).await.map(|r| r.into_inner().overall_code) })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let during = rss_kib(gateway.id());
        let mut answered = 0;
        for call in calls {
            let code = call.await.unwrap().unwrap();
            assert!(code == OK || code == OVER, "{code}");
            answered += 1;
        }
        assert_eq!(answered, CONNECTIONS * 400);

        // One connection more than max_connections: closed at once, the call fails quickly.
        let started = std::time::Instant::now();
        let extra = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
            .unwrap()
            .timeout(std::time::Duration::from_secs(5))
            .connect()
            .await;
        let failed = match extra {
            Err(_) => true,
            Ok(channel) => RateLimitServiceClient::new(channel)
                .should_rate_limit(RateLimitRequest {
                    domain: "rl".into(),
                    descriptors: vec![descriptor(&[("foo", "extra")])],
                    hits_addend: 0,
                })
                .await
                .is_err(),
        };
        assert!(failed, "a connection beyond max_connections is not served");
        (during, started.elapsed() < std::time::Duration::from_secs(3))
    });
    assert!(refused_quickly, "closed at once, not after a timeout");
    let after = rss_kib(gateway.id());
    eprintln!("gRPC streams: RSS {before} KiB before, {during} KiB with 6400 calls in flight, {after} KiB after");
    assert!(during < before + 128 * 1024, "memory bounded: {before} -> {during} KiB");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.client()).unwrap();
    assert!(keys.iter().all(|k| !k.contains("extra")), "the refused connection charged nothing: {keys:?}");
    // Once connections leave, new ones are served again.
    let served = wait_until(std::time::Instant::now() + std::time::Duration::from_secs(5), || {
        ask(grpc, &[&[("category", "account")]]).is_ok()
    });
    assert!(served, "{}", gateway.logs());
    assert!(gateway.logs().contains("max_connections are open"), "{}", gateway.logs());
}

/// The peer's `SETTINGS_MAX_CONCURRENT_STREAMS` once its SETTINGS frame has arrived (h2 reads
/// it with the connection's first frames; until then it reports no limit).
async fn wait_for_settings(h2: &mut h2::client::SendRequest<bytes::Bytes>) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let max = h2.current_max_send_streams();
        if max != usize::MAX || std::time::Instant::now() > deadline {
            return max;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
