//! Faults between hosts (issue 23), on one machine: Redis and some gateways each in a network
//! namespace of their own on a private segment (testkit's `Network`), cut off silently by an
//! `nft` rule (no reset: the sender waits), unplugged, or behind testkit's proxy with latency,
//! stalls and closed connections; then healed. For each fault: every request is answered
//! within the configured timeouts and as `failure_mode` says (closed: nothing admitted
//! without Redis; open: forwarded unmetered and counted), and after healing the buckets hold
//! exactly what Redis acknowledged, leases of a cut-off gateway come back within the lease
//! time, and the time to serve normally again is measured (printed).
//!
//! Needs root, iproute2 and nftables (`make test` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use testkit::{redis, Network, Proxy, SentinelGroup};

/// The tests here measure answer times and times to recover on a 2-core machine: they run one
/// at a time (each holds this while it runs), so that one test's processes do not slow
/// another's past its bounds.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One request a day per caller, a burst that never runs out in a test: each admission moves
/// the bucket's TAT one day on, so what was charged is read back exactly ([`spent`]).
const COUNTED: &str = "[[policy]]\nname = \"p\"\npaths = [\"/v1/predict\"]\nlimit = 1\nwindow = 86400\nburst = 10000\n";

/// How long any answer may take while Redis is unreachable: a command's `redis.timeout_ms`
/// (250 ms), or a reconnection's `redis.connect_timeout_ms` (1 s) and then the command's
/// timeout, plus scheduling slack on a busy 2-core machine.
const ANSWER_BOUND: Duration = Duration::from_millis(2500);

/// Requests charged so far to the bucket of caller `key` under [`COUNTED`]: its TAT is one
/// day (the emission interval) per charge ahead of the server's clock, less the time passed.
fn spent(redis: &mut redis::Connection, key: &str) -> u64 {
    let buckets: Vec<String> = redis::cmd("KEYS").arg("rl:*").query(redis).unwrap();
    let day_nanos: u128 = 86_400 * 1_000_000_000;
    let (secs, micros): (u128, u128) = redis::cmd("TIME").query(redis).unwrap();
    let now = secs * 1_000_000_000 + micros * 1_000;
    let hash = digest(key);
    let bucket = buckets.iter().find(|b| b.contains(&hash) && !b.ends_with(":concurrent"));
    bucket.map_or(0, |bucket| {
        let tat: u128 = redis::cmd("GET").arg(bucket).query::<String>(redis).unwrap().parse().unwrap();
        u64::try_from(tat.saturating_sub(now).div_ceil(day_nanos)).unwrap()
    })
}

/// A prediction by caller `key`: the status, whether it carried rate-limit headers (metered),
/// and how long it took.
async fn predict_as(gateway: &Proc, key: &str) -> (StatusCode, bool, Duration) {
    let started = Instant::now();
    let headers = [("x-api-key", key), ("content-type", "application/json")];
    let answer = send(hyper::Method::POST, &gateway.url("/v1/predict"), &headers, r#"{"text":"good"}"#).await.unwrap();
    (answer.status, answer.headers.contains_key("ratelimit"), started.elapsed())
}

/// What one gateway did during a run of requests.
#[derive(Debug, Default)]
struct Tally {
    metered: u64,
    unmetered: u64,
    unavailable: u64,
    slowest: Duration,
}

impl Tally {
    fn add(&mut self, (status, metered, took): (StatusCode, bool, Duration)) {
        self.slowest = self.slowest.max(took);
        match (status, metered) {
            (StatusCode::OK, true) => self.metered += 1,
            (StatusCode::OK, false) => self.unmetered += 1,
            (StatusCode::SERVICE_UNAVAILABLE, _) => self.unavailable += 1,
            (other, _) => panic!("unexpected {other}"),
        }
    }
}

/// Sends requests as `key` through `gateway` until the first metered 200; how long that took.
async fn time_to_serve(gateway: &Proc, key: &str, tally: &mut Tally) -> Duration {
    let healed = Instant::now();
    loop {
        let answer = predict_as(gateway, key).await;
        tally.add(answer);
        if answer.0 == StatusCode::OK && answer.1 {
            return healed.elapsed();
        }
        assert!(healed.elapsed() < Duration::from_secs(15), "never served again: {tally:?}\n{}", gateway.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private network with Redis (the module loaded) alone on a node of it.
fn redis_on_a_node() -> (Network, testkit::Node, testkit::RedisServer) {
    let network = Network::new();
    let node = network.node("redis");
    let redis = testkit::RedisServer::builder().on_node(&node).start();
    (network, node, redis)
}

/// Sends requests for `length` through each `(gateway, caller)` in turn; what each got.
async fn traffic(length: Duration, callers: &[(&Proc, &str)]) -> Vec<Tally> {
    let mut tallies: Vec<Tally> = callers.iter().map(|_| Tally::default()).collect();
    let started = Instant::now();
    while started.elapsed() < length {
        for ((gateway, key), tally) in callers.iter().zip(&mut tallies) {
            tally.add(predict_as(gateway, key).await);
        }
    }
    tallies
}

/// Admits predictions by `key` until one is refused (waiting out `503`s): how many were
/// admitted, and the refusal. Panics beyond `at_most`.
async fn admit_until_refused(gateway: &Proc, key: &str, at_most: u64) -> (u64, Answer) {
    let mut admitted = 0;
    loop {
        let answer = predict_answer(gateway, key).await;
        match answer.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => return (admitted, answer),
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("{other}"),
        }
        assert!(admitted <= at_most, "more than {at_most} admitted");
    }
}

/// `--config <file>` of `config`, and the file's directory (kept while the test runs).
fn config_args(config: &str) -> (Vec<String>, tempfile::TempDir) {
    let (dir, path) = config_file(config);
    (vec!["--config".into(), path.display().to_string()], dir)
}

/// The flags of a gateway that finds the primary through `group`'s sentinels, then `extra`.
fn via_sentinels(group: &SentinelGroup, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec!["--redis-sentinel-master".into(), group.master_name().into()];
    for url in group.sentinel_urls() {
        args.extend(["--redis-sentinel".into(), url]);
    }
    args.extend(extra.iter().cloned());
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_off_silently_then_healed_closed_admits_nothing_open_forwards_and_both_recover() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (_network, node, redis) = redis_on_a_node();
    let model = start_model(0);
    let (config, _dir) = config_args(COUNTED);
    let closed = start_gateway_args(&redis.url(), &model.url(""), &config);
    let open = start_gateway_args(&redis.url(), &model.url(""), &[config, vec!["--fail-open".into()]].concat());
    let callers = [(&closed, "closed-caller"), (&open, "open-caller")];
    let [mut closed_tally, mut open_tally]: [Tally; 2] =
        traffic(Duration::from_millis(300), &callers).await.try_into().unwrap();
    assert!(
        closed_tally.metered > 0 && open_tally.metered > 0 && closed_tally.unavailable + open_tally.unavailable == 0
    );

    // Three seconds without Redis: packets dropped, connections left open and silent.
    node.isolate();
    let [closed_cut, mut open_cut]: [Tally; 2] = traffic(Duration::from_secs(3), &callers).await.try_into().unwrap();
    assert_eq!(closed_cut.metered + closed_cut.unmetered, 0, "closed: nothing admitted without Redis: {closed_cut:?}");
    assert!(closed_cut.unavailable > 0);
    assert_eq!(open_cut.unavailable, 0, "open: everything forwarded: {open_cut:?}");
    assert!(open_cut.unmetered > 0, "{open_cut:?}");
    assert!(closed_cut.slowest < ANSWER_BOUND, "closed answered within the timeouts: {closed_cut:?}");
    assert!(open_cut.slowest < ANSWER_BOUND, "open answered within the timeouts: {open_cut:?}");

    // Healed: each serves metered again soon (the goal: under a second once Redis answers).
    node.heal();
    let closed_back = time_to_serve(&closed, "closed-caller", &mut closed_tally).await;
    let open_back = time_to_serve(&open, "open-caller", &mut open_tally).await;
    println!(
        "silent partition of Redis, 3 s: closed answered {} 503 (slowest {:?}), open forwarded {} unmetered \
         (slowest {:?}); after the heal, metered again in {closed_back:?} (closed) and {open_back:?} (open)",
        closed_cut.unavailable, closed_cut.slowest, open_cut.unmetered, open_cut.slowest
    );
    assert!(closed_back < Duration::from_secs(3), "{closed_back:?}\n{}", closed.logs());
    assert!(open_back < Duration::from_secs(3), "{open_back:?}\n{}", open.logs());

    // Then unplugged: Redis's link down for 2 s (unreachable: nothing answers, not even ARP).
    node.link_down();
    let [closed_down, open_down]: [Tally; 2] = traffic(Duration::from_secs(2), &callers).await.try_into().unwrap();
    assert_eq!(closed_down.metered + closed_down.unmetered, 0, "{closed_down:?}");
    assert_eq!(open_down.unavailable, 0, "{open_down:?}");
    assert!(closed_down.slowest < ANSWER_BOUND && open_down.slowest < ANSWER_BOUND, "{closed_down:?} {open_down:?}");
    node.link_up();
    let closed_up = time_to_serve(&closed, "closed-caller", &mut closed_tally).await;
    let open_up = time_to_serve(&open, "open-caller", &mut open_tally).await;
    println!("Redis's link down for 2 s: slowest answers {:?} / {:?}; metered again {closed_up:?} / {open_up:?} after the link came up", closed_down.slowest, open_down.slowest);
    assert!(closed_up < Duration::from_secs(3) && open_up < Duration::from_secs(3), "{closed_up:?} {open_up:?}");
    open_cut.unmetered += open_down.unmetered;

    // What Redis holds is what it acknowledged: every metered admission, plus at most the one
    // command that may have reached Redis as the cut fell (its reply lost, its request 503 or
    // unmetered). Nothing forwarded unmetered was charged afterwards.
    let mut con = redis.client();
    let metrics = scrape(&open).await;
    let fail_open = value(&metrics, "gateway_requests_total", &[("policy", "p"), ("outcome", "fail_open")]);
    assert_eq!(fail_open, Some((open_cut.unmetered + open_tally.unmetered) as f64), "counted in the metric");
    for (key, tally, during) in [("closed-caller", &closed_tally, &closed_cut), ("open-caller", &open_tally, &open_cut)]
    {
        let charged = spent(&mut con, key);
        let admitted = tally.metered;
        println!("{key}: {charged} charged, {admitted} metered admissions");
        // One command at most may be lost in flight at each of the two faults.
        assert!(
            (admitted..=admitted + 2).contains(&charged),
            "{key}: {charged} charged, {admitted} metered admissions ({during:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_cut_off_from_redis_fails_closed_while_the_other_serves_and_the_shared_bucket_stays_exact() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let network = Network::new();
    let redis_node = network.node("redis");
    let gateway_node = network.node("gateway-a");
    let redis = testkit::RedisServer::builder().on_node(&redis_node).start();
    let model = start_model_with(network.host_addr(), &["--latency-ms".into(), "0".into()]);
    let (config, _dir) = config_args(COUNTED);
    let cut_off = start_gateway_on(&gateway_node, &redis.url(), &model.url(""), &config);
    let other = start_gateway_args(&redis.url(), &model.url(""), &config);
    let callers = [(&cut_off, "shared"), (&other, "shared")];
    let [mut a, b]: [Tally; 2] = traffic(Duration::from_millis(300), &callers).await.try_into().unwrap();
    gateway_node.cut_off_from(&[redis_node.addr]);
    let [a_cut, b_cut]: [Tally; 2] = traffic(Duration::from_secs(3), &callers).await.try_into().unwrap();
    assert_eq!(a_cut.metered + a_cut.unmetered, 0, "the cut-off gateway admits nothing: {a_cut:?}");
    assert!(a_cut.slowest < ANSWER_BOUND, "{a_cut:?}");
    assert_eq!((b_cut.unavailable, b_cut.unmetered), (0, 0), "the other serves on, metered: {b_cut:?}");
    gateway_node.heal();
    let back = time_to_serve(&cut_off, "shared", &mut a).await;
    println!(
        "one gateway cut off from Redis for 3 s: {} 503 (slowest {:?}), the other served {}; back in {back:?}",
        a_cut.unavailable, a_cut.slowest, b_cut.metered
    );
    assert!(back < Duration::from_secs(3), "{back:?}\n{}", cut_off.logs());
    let admitted = a.metered + b.metered + b_cut.metered;
    let charged = spent(&mut redis.client(), "shared");
    assert!(charged == admitted || charged == admitted + 1, "{charged} charged, {admitted} admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_gateway_cut_off_mid_request_comes_back_within_the_lease_time() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let network = Network::new();
    let redis_node = network.node("redis");
    let gateway_node = network.node("gateway-a");
    let redis = testkit::RedisServer::builder().on_node(&redis_node).start();
    // Each prediction takes 6 s at the model: longer than the partition and the lease.
    let model = start_model_with(network.host_addr(), &["--latency-ms".into(), "6000".into()]);
    let config = "[[policy]]\nname = \"p\"\npaths = [\"/v1/predict\"]\nlimit = 1000\nwindow = 60\nmax_concurrent = 1\nlease_ms = 2000\n";
    let (args, _dir) = config_args(config);
    let cut_off = start_gateway_on(&gateway_node, &redis.url(), &model.url(""), &args);
    let other = start_gateway_args(&redis.url(), &model.url(""), &args);
    // The caller's one slot, taken through the gateway about to be cut off.
    let holding = {
        let url = cut_off.url("/v1/predict");
        tokio::spawn(async move {
            let headers = [("x-api-key", "holder"), ("content-type", "application/json")];
            send(hyper::Method::POST, &url, &headers, r#"{"text":"good"}"#).await
        })
    };
    let mut con = redis.client();
    let leased = wait_until(Instant::now() + Duration::from_secs(5), || leases(&mut con) == 1);
    assert!(leased, "the request holds its lease\n{}", cut_off.logs());
    gateway_node.cut_off_from(&[redis_node.addr]);
    let cut = Instant::now();
    // Through the other gateway, the same caller is refused while the lease lives (renewals
    // cannot reach Redis any more), then served once it ended: within the lease time of the
    // last renewal, so within 2 s of the cut plus a renewal period and some slack.
    let served_after = loop {
        let headers = [("x-api-key", "holder"), ("content-type", "application/json")];
        let url = other.url("/v1/predict");
        let answer = tokio::time::timeout(
            Duration::from_millis(300),
            send(hyper::Method::POST, &url, &headers, r#"{"text":"good"}"#),
        )
        .await;
        match answer {
            Ok(Ok(answer)) if answer.status == StatusCode::TOO_MANY_REQUESTS => {}
            // Admitted: it holds the slot now and waits on the slow model; the time is what counts.
            Err(_) => break cut.elapsed(),
            Ok(other_answer) => panic!("{other_answer:?}"),
        }
        assert!(cut.elapsed() < Duration::from_secs(6), "the lease never came back\n{}", cut_off.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("a lease held by a gateway cut off from Redis came back {served_after:?} after the cut (lease 2 s)");
    assert!(served_after >= Duration::from_millis(500), "not before the lease could end: {served_after:?}");
    gateway_node.heal();
    let _ = holding.await;
    // After everything ended, no lease is left.
    let released = wait_until(Instant::now() + Duration::from_secs(10), || leases(&mut con) == 0);
    assert!(released, "leases left: {}", leases(&mut con));
}

/// Live leases in every concurrency set.
fn leases(con: &mut redis::Connection) -> u64 {
    let sets: Vec<String> = redis::cmd("KEYS").arg("*:concurrent").query(con).unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(con).unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    sets.iter()
        .map(|set| redis::cmd("ZCOUNT").arg(set).arg(format!("({now_ms}")).arg("+inf").query::<u64>(con).unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_in_the_middle_of_a_streamed_llm_answer_keeps_its_reservation_exactly() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let network = Network::new();
    let redis_node = network.node("redis");
    let gateway_node = network.node("gateway-a");
    let redis = testkit::RedisServer::builder().on_node(&redis_node).start();
    // 300 ms a token: the demo model's short answer streams for about 2 s.
    let model = start_model_with(
        network.host_addr(),
        &["--latency-ms".into(), "0".into(), "--token-latency-ms".into(), "300".into()],
    );
    let config = "[[policy]]\nname = \"chat\"\npaths = [\"/v1/chat\"]\nkind = \"openai\"\nlimit = 100\nwindow = 60\n\
        [[policy.limits]]\nname = \"tokens\"\nunit = \"tokens\"\nlimit = 1\nwindow = 86400\nburst = 1000\n";
    let (config, _dir) = config_args(config);
    let gateway = start_gateway_on(&gateway_node, &redis.url(), &model.url(""), &config);
    let body = serde_json::json!({
        "model": "m", "stream": true, "max_tokens": 50, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "tell me a story"}],
    })
    .to_string();
    let streaming = {
        let url = gateway.url("/v1/chat/completions");
        tokio::spawn(async move {
            send(hyper::Method::POST, &url, &[("x-api-key", "k"), ("content-type", "application/json")], body).await
        })
    };
    let mut con = redis.client();
    let tokens_left = |con: &mut redis::Connection| {
        let keys: Vec<String> = redis::cmd("KEYS").arg("*:tokens").query(con).unwrap();
        keys.first().map(|key| testkit::tokens(con, key, 1, 86400, 1000))
    };
    let reserved_at = wait_until(Instant::now() + Duration::from_secs(5), || tokens_left(&mut con).is_some());
    assert!(reserved_at, "{}", gateway.logs());
    let after_reservation = tokens_left(&mut con).unwrap();
    // Cut mid-stream, healed only after the stream ended: its settlement cannot reach Redis.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway_node.cut_off_from(&[redis_node.addr]);
    let answer = streaming.await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&answer.body).ends_with("data: [DONE]\n\n"), "the whole stream reached the client");
    let failed = wait_until(Instant::now() + Duration::from_secs(5), || gateway.logs().contains("settlement failed"));
    assert!(failed, "{}", gateway.logs());
    gateway_node.heal();
    // The refund the gateway sent into the partition was sent once and never again. TCP
    // retransmits it when the link heals, so Redis may still run it: the bucket then holds
    // exactly the usage; or, lost, exactly the reservation. Never anything else: no refund
    // twice, no second charge.
    let usage = stream_usage(&answer.body);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let left = tokens_left(&mut con).unwrap();
    let reserved = 1000 - after_reservation;
    println!(
        "a stream cut off from Redis mid-answer: reserved {reserved}, used {usage}, the bucket holds {} after the heal",
        1000 - left
    );
    assert!(
        left == after_reservation || left == 1000 - usage,
        "left {left}: neither the reservation ({reserved}) nor the usage ({usage})\n{}",
        gateway.logs()
    );
    // And the gateway settles the next answer normally.
    let next = serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let served =
        send(hyper::Method::POST, &gateway.url("/v1/chat/completions"), &[("x-api-key", "k")], next.to_string())
            .await
            .unwrap();
    assert_eq!(served.status, StatusCode::OK, "{served:?}\n{}", gateway.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_stalls_and_closed_connections_to_redis_are_answered_in_time_and_charged_exactly() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let redis = testkit::RedisServer::start();
    let proxy = Proxy::start_anywhere(redis.port());
    let model = start_model(0);
    let (config, _dir) = config_args(COUNTED);
    let gateway = start_gateway_args(&proxy.url(), &model.url(""), &config);
    let mut tally = Tally::default();
    let mut report = Vec::new();
    for (name, chaos) in [
        ("50 ms latency", testkit::proxy::Chaos { latency: Duration::from_millis(50), ..Default::default() }),
        ("500 ms latency", testkit::proxy::Chaos { latency: Duration::from_millis(500), ..Default::default() }),
        ("stalls on 10%", testkit::proxy::Chaos { stall_one_in: 10, ..Default::default() }),
        ("stalls on 50%", testkit::proxy::Chaos { stall_one_in: 2, ..Default::default() }),
        ("closes on 10%", testkit::proxy::Chaos { close_one_in: 10, ..Default::default() }),
        ("closes on 50%", testkit::proxy::Chaos { close_one_in: 2, ..Default::default() }),
    ] {
        proxy.set_chaos(chaos);
        let [during]: [Tally; 1] = traffic(Duration::from_secs(2), &[(&gateway, "caller")]).await.try_into().unwrap();
        proxy.set_chaos(testkit::proxy::Chaos::default());
        let back = time_to_serve(&gateway, "caller", &mut tally).await;
        assert_eq!(during.unmetered, 0, "{name}: closed, nothing unmetered");
        assert!(during.slowest < ANSWER_BOUND, "{name}: {during:?}");
        if name == "50 ms latency" {
            assert_eq!(during.unavailable, 0, "{name}: well within redis.timeout_ms, all served: {during:?}");
        }
        if name == "500 ms latency" {
            assert_eq!(during.metered, 0, "{name}: beyond redis.timeout_ms, nothing admitted: {during:?}");
        }
        report.push(format!(
            "{name}: {} served, {} 503, slowest {:?}, normal again in {back:?}",
            during.metered, during.unavailable, during.slowest
        ));
        tally.metered += during.metered;
    }
    println!("{}", report.join("\n"));
    // Commands that reached Redis but whose reply came too late were given back when the reply
    // came (the gateway listens for it); commands lost with a stalled or closed connection
    // may have run: what Redis holds is at least every admission, and at most one more per
    // connection the chaos broke.
    let (stalls, closes) = proxy.chaos_counts();
    let mut con = redis.client();
    let settled = wait_until(Instant::now() + Duration::from_secs(12), || {
        let charged = spent(&mut con, "caller");
        charged >= tally.metered && charged <= tally.metered + (stalls + closes) as u64
    });
    assert!(
        settled,
        "{} charged, {} admitted, {stalls} stalls, {closes} closes\n{}",
        spent(&mut con, "caller"),
        tally.metered,
        gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_its_replica_and_the_sentinels_is_replaced_and_loses_only_what_it_took_alone() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let network = Network::new();
    let (primary_node, replica_node) = (network.node("primary"), network.node("replica"));
    let gateway_node = network.node("gateway");
    let group = SentinelGroup::start_on_nodes(&network, &primary_node, &replica_node);
    // The primary refuses writes once no replica acknowledged it for a second
    // (`min-replicas-max-lag`, checked on the replica's pings, one a second): what it can
    // take alone is bounded, and refused writes are 503s (the gateway fails closed).
    for (name, value) in [("min-replicas-to-write", "1"), ("min-replicas-max-lag", "1")] {
        let _: () = redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query(&mut group.server(0).client()).unwrap();
    }
    let model = start_model_with(network.host_addr(), &["--latency-ms".into(), "0".into()]);
    let (config, _dir) = config_args(COUNTED);
    let args = via_sentinels(&group, &config);
    let gateway = start_serve_on(&gateway_node, &model.url(""), &args);
    let mut before = Tally::default();
    for _ in 0..5 {
        before.add(predict_as(&gateway, "caller").await);
    }
    assert_eq!(before.metered, 5, "{}", gateway.logs());
    testkit::wait_for_replicas(&mut group.server(0).client(), 1);

    // The primary loses its replica and the sentinels (and the test); the gateway still
    // reaches it, and the sentinels.
    primary_node.cut_off_from(&[replica_node.addr, network.host_addr()]);
    let cut = Instant::now();
    let (mut alone, mut after_switch) = (Tally::default(), Tally::default());
    let mut promoted_at = None;
    while cut.elapsed() < Duration::from_secs(25) {
        let answer = predict_as(&gateway, "caller").await;
        // Until a second after the sentinels named the new primary, the gateway may still be
        // on the old one (it moves on the sentinels' announcement): counted as taken alone.
        match promoted_at {
            Some(at) if cut.elapsed() > at + Duration::from_secs(1) => after_switch.add(answer),
            _ => alone.add(answer),
        }
        if promoted_at.is_none() && group.promoted_from(0) == Some(1) {
            promoted_at = Some(cut.elapsed());
        }
        if promoted_at.is_some_and(|at| cut.elapsed() > at + Duration::from_secs(3)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted_at = promoted_at.unwrap_or_else(|| panic!("no promotion\n{}", group.logs()));
    assert!(alone.slowest < ANSWER_BOUND && after_switch.slowest < ANSWER_BOUND, "{alone:?} {after_switch:?}");
    assert!(after_switch.metered > 0, "served through the new primary: {after_switch:?}\n{}", gateway.logs());
    primary_node.heal();

    // The new primary holds what was replicated before the cut and everything after the
    // switch; of what the old primary took alone, at most its first second or two (before it
    // missed its replica) is lost: those were admitted and are no longer charged.
    let mut con = group.server(1).client();
    let charged = spent(&mut con, "caller");
    let admitted = before.metered + alone.metered + after_switch.metered;
    let lost = admitted.saturating_sub(charged);
    println!(
        "primary cut off from its replica and the sentinels: promoted after {promoted_at:?}; the old primary admitted \
         {} alone ({} refused), {} after the switch; {charged} of {admitted} admissions charged, {lost} lost",
        alone.metered, alone.unavailable, after_switch.metered
    );
    assert!(charged <= admitted + 1, "never more than acknowledged: {charged} > {admitted}");
    assert!(lost <= alone.metered, "only what the old primary took alone is lost: {lost} > {}", alone.metered);
    assert!(charged >= before.metered + after_switch.metered, "nothing replicated or taken after the switch is lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_continuous_traffic_a_healed_partition_is_served_again_within_a_second() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (_network, node, redis) = redis_on_a_node();
    let model = start_model(0);
    let (config, _dir) = config_args(COUNTED);
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &config);
    let url = gateway.url("/v1/predict");
    let mut worst = Duration::ZERO;
    for round in 0..4 {
        node.isolate();
        // Requests every 20 ms, each on its own, through the cut and the heal (and 3 s beyond).
        let started = Instant::now();
        let senders: Vec<_> = (0..250)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20 * i)).await;
                    let headers = [("x-api-key", "k"), ("content-type", "application/json")];
                    let answer = send(hyper::Method::POST, &url, &headers, r#"{"text":"good"}"#).await.unwrap();
                    (answer.status == StatusCode::OK && answer.headers.contains_key("ratelimit"), Instant::now())
                })
            })
            .collect();
        // Healed at a moment that moves from round to round against the gateway's attempts.
        tokio::time::sleep(Duration::from_millis(1500 + 230 * round)).await;
        node.heal();
        let healed = Instant::now();
        let mut first = None;
        for sender in senders {
            let (metered, at) = sender.await.unwrap();
            if metered && at > healed {
                first = Some(first.map_or(at - healed, |f: Duration| f.min(at - healed)));
            }
            assert!(!metered || at > healed || at < started, "nothing admitted while cut off");
        }
        let first = first.unwrap_or_else(|| panic!("never served again\n{}", gateway.logs()));
        println!("round {round}: metered again {first:?} after the heal");
        worst = worst.max(first);
    }
    println!("under continuous traffic, the worst time to serve after a heal: {worst:?}");
    // An attempt to connect that began just before the heal sent a SYN into the void and waits
    // out `redis.connect_timeout_ms` (1 s) before the next one (25 ms later) gets through:
    // about a second at worst, plus scheduling slack on a busy 2-core machine.
    assert!(worst < Duration::from_millis(2000), "{worst:?}");
}

/// The `Retry-After` of a refused prediction, in seconds.
fn retry_after(answer: &Answer) -> u64 {
    answer.header("retry-after").parse().unwrap()
}

async fn predict_answer(gateway: &Proc, key: &str) -> Answer {
    let headers = [("x-api-key", key), ("content-type", "application/json")];
    send(hyper::Method::POST, &gateway.url("/v1/predict"), &headers, r#"{"text":"good"}"#).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_its_aof_after_being_down_longer_than_a_window_grants_exactly_the_burst_again() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // Two policies: one that refills within the downtime (5 per 2 s), one that cannot (a day).
    let config = "[[policy]]\nname = \"fast\"\npaths = [\"/v1/predict\"]\nlimit = 5\nwindow = 2\n\
                  [[policy]]\nname = \"slow\"\npaths = [\"/v1/echo\"]\nlimit = 1\nwindow = 86400\nburst = 3\n";
    let mut redis = testkit::RedisServer::builder().arg("appendonly", "yes").arg("appendfsync", "always").start();
    let model = start_model(0);
    let (config, _dir) = config_args(config);
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &config);
    let slow = |gateway: &Proc| {
        let url = gateway.url("/v1/echo");
        async move {
            send(
                hyper::Method::POST,
                &url,
                &[("x-api-key", "k"), ("content-type", "application/json")],
                r#"{"text":"good"}"#,
            )
            .await
            .unwrap()
        }
    };
    for _ in 0..5 {
        assert_eq!(predict_answer(&gateway, "k").await.status, StatusCode::OK);
    }
    assert_eq!(predict_answer(&gateway, "k").await.status, StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..2 {
        assert_eq!(slow(&gateway).await.status, StatusCode::OK);
    }
    // Down for 3 s (longer than the fast window: the scaled-down "minutes"), then back from
    // its AOF: the TATs are absolute times, so the fast bucket is full again (its key may
    // even have expired meanwhile) and the slow one has exactly what it had.
    redis.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.respawn();
    let (admitted, refused) = admit_until_refused(&gateway, "k", 5).await;
    assert_eq!(admitted, 5, "exactly the burst again");
    // The retry hint is never early: at its end (whole seconds, rounded up) one more fits.
    let wait = retry_after(&refused);
    assert!((1..=1).contains(&wait), "2 s / 5 = 400 ms a request, rounded up: {wait}");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(predict_answer(&gateway, "k").await.status, StatusCode::OK, "admitted at the hinted time");
    // The slow bucket: 1 left of 3, as before the restart.
    assert_eq!(slow(&gateway).await.status, StatusCode::OK);
    let refused_slow = slow(&gateway).await;
    assert_eq!(refused_slow.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&refused_slow) > 86_000, "the day-long refill stands: {}", retry_after(&refused_slow));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_promoted_grants_again_exactly_the_charges_it_never_received_and_no_more() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let network = Network::new();
    let (primary_node, replica_node) = (network.node("primary"), network.node("replica"));
    let mut group = SentinelGroup::start_on_nodes(&network, &primary_node, &replica_node);
    let model = start_model(0);
    let (config, _dir) =
        config_args("[[policy]]\nname = \"p\"\npaths = [\"/v1/predict\"]\nlimit = 1\nwindow = 86400\nburst = 10\n");
    let gateway = start_serve("gateway", &model.url(""), &via_sentinels(&group, &config));
    for _ in 0..4 {
        assert_eq!(predict_answer(&gateway, "k").await.status, StatusCode::OK);
    }
    testkit::wait_for_replicas(&mut group.server(0).client(), 1);
    // The replica falls behind: cut off from the primary (the sentinels see both), three
    // more charges land on the primary only.
    replica_node.cut_off_from(&[primary_node.addr]);
    for _ in 0..3 {
        assert_eq!(predict_answer(&gateway, "k").await.status, StatusCode::OK);
    }
    let on = |server: &testkit::RedisServer| spent(&mut server.client(), "k");
    assert_eq!((on(group.server(0)), on(group.server(1))), (7, 4), "the replica lags by three charges");
    // The primary's process dies; the lagging replica is promoted (its link has been down for
    // less than Sentinel's validity limit). The cut stays until then: the dead primary's kernel
    // still retransmits what it had sent, and a healed link would deliver it.
    group.kill(0);
    group.wait_for_promotion(0);
    replica_node.heal();
    let (after, refused) = admit_until_refused(&gateway, "k", 10).await;
    println!("a lagging replica promoted: 7 admitted before (3 of them never replicated), {after} after; burst 10");
    // The new primary knew 4 charges: it grants 6 more. Over the window the caller got 13 of
    // a burst of 10: exactly the 3 charges the replica never received, and no more.
    assert_eq!(after, 6, "{}", gateway.logs());
    assert!(retry_after(&refused) > 86_000, "and the hint follows what the new primary holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_service_cut_off_from_redis_answers_unavailable_in_time_and_serves_after_the_heal() {
    let _serial = ONE_AT_A_TIME.lock().await;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    let network = Network::new();
    let (redis_node, service_node) = (network.node("redis"), network.node("service"));
    let redis = testkit::RedisServer::builder().on_node(&redis_node).start();
    let limits = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/envoy/ratelimit.yaml");
    let grpc = free_port();
    let args = [
        "--envoy-listen".to_string(),
        format!("{}:{grpc}", service_node.addr),
        "--envoy-config".into(),
        limits.display().to_string(),
    ];
    let service = start_gateway_on(&service_node, &redis.url(), "http://127.0.0.1:9", &args);
    let mut client = RateLimitServiceClient::connect(format!("http://{}:{grpc}", service_node.addr)).await.unwrap();
    let request = || RateLimitRequest {
        domain: "ml_api".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry { key: "api_key".into(), value: "k".into() }],
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 1,
    };
    assert_eq!(client.should_rate_limit(request()).await.unwrap().into_inner().overall_code, 1);
    service_node.cut_off_from(&[redis_node.addr]);
    let cut = Instant::now();
    let mut unavailable = 0;
    while cut.elapsed() < Duration::from_secs(2) {
        let asked = Instant::now();
        let status = client.should_rate_limit(request()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "Envoy's failure_mode_deny decides: {status:?}");
        assert!(asked.elapsed() < ANSWER_BOUND, "{:?}", asked.elapsed());
        unavailable += 1;
    }
    service_node.heal();
    let healed = Instant::now();
    let back = loop {
        if client.should_rate_limit(request()).await.is_ok() {
            break healed.elapsed();
        }
        assert!(healed.elapsed() < Duration::from_secs(5), "never back\n{}", service.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "the gRPC service cut off from Redis: {unavailable} UNAVAILABLE in 2 s, serving again {back:?} after the heal"
    );
    assert!(back < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_link_to_redis_times_out_cleanly_and_late_replies_are_given_back() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (_network, node, redis) = redis_on_a_node();
    let model = start_model(0);
    let (config, _dir) = config_args(COUNTED);
    let gateway = start_gateway_args(&redis.url(), &model.url(""), &config);
    let mut tally = Tally::default();
    for _ in 0..3 {
        tally.add(predict_as(&gateway, "caller").await);
    }
    // Redis's replies squeezed through 1 kbit/s behind a queue of up to 5 s: each takes far
    // longer than redis.timeout_ms (250 ms) to come back.
    node.shape(Some(("1kbit", "5000ms")));
    let [during]: [Tally; 1] = traffic(Duration::from_secs(2), &[(&gateway, "caller")]).await.try_into().unwrap();
    node.shape(None);
    let back = time_to_serve(&gateway, "caller", &mut tally).await;
    println!(
        "Redis behind 1 kbit/s: {} served, {} 503 (slowest {:?}); normal again in {back:?}",
        during.metered, during.unavailable, during.slowest
    );
    assert!(during.slowest < ANSWER_BOUND, "{during:?}");
    assert!(during.unavailable > 0, "the throttled replies came too late: {during:?}");
    tally.metered += during.metered;
    // Every check Redis ran whose reply came too late was given back when it came (the
    // gateway listens for late replies for 10 s, and waits as long for the give-back's own
    // reply): Redis holds exactly the admissions, unless the gateway itself counted a late
    // reply it never got or a give-back that got no answer.
    let mut con = redis.client();
    let exact = wait_until(Instant::now() + Duration::from_secs(25), || spent(&mut con, "caller") == tally.metered);
    let metrics = scrape(&gateway).await;
    let late =
        |outcome| value(&metrics, "gateway_redis_late_replies_total", &[("command", "check"), ("outcome", outcome)]);
    let (given_back, failed, unknown) = (late("given_back"), late("give_back_failed"), late("unknown"));
    println!("late replies: given back {given_back:?}, give-back failed {failed:?}, unknown {unknown:?}");
    assert_eq!((failed, unknown), (Some(0.0), Some(0.0)), "{}", gateway.logs());
    assert!(exact, "{} charged, {} admitted\n{}", spent(&mut con, "caller"), tally.metered, gateway.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_cut_off_fails_only_its_callers_and_the_others_are_served_throughout() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let network = Network::new();
    let hosts: Vec<testkit::Node> = (0..3).map(|i| network.node(&format!("node{i}"))).collect();
    // Without full coverage required, the nodes that still own their slots keep serving them
    // while one node is away (the default stops the whole cluster once the lost node is
    // marked failing, after cluster-node-timeout).
    let cluster = testkit::Cluster::builder().on_nodes(&hosts).arg("cluster-require-full-coverage", "no").start();
    let model = start_model(0);
    let (mut args, _dir) = config_args(COUNTED);
    for url in cluster.urls() {
        args.extend(["--redis-cluster-node".into(), url]);
    }
    let gateway = start_serve("gateway", &model.url(""), &args);
    // A caller whose bucket lives on node 0 and one whose bucket lives on node 1.
    let owner = |key: &str| cluster.slot_owner(cluster.keyslot(&format!("{{{}}}", digest(key))));
    let on_0 = (0..).map(|i| format!("caller-{i}")).find(|k| owner(k) == 0).unwrap();
    let on_1 = (0..).map(|i| format!("caller-{i}")).find(|k| owner(k) == 1).unwrap();
    let callers = [(&gateway, on_0.as_str()), (&gateway, on_1.as_str())];
    let [mut a, b]: [Tally; 2] = traffic(Duration::from_millis(300), &callers).await.try_into().unwrap();
    assert!(a.metered > 0 && b.metered > 0 && a.unavailable + b.unavailable == 0, "{}", gateway.logs());
    hosts[0].isolate();
    let [a_cut, b_cut]: [Tally; 2] = traffic(Duration::from_secs(4), &callers).await.try_into().unwrap();
    hosts[0].heal();
    let back = time_to_serve(&gateway, &on_0, &mut a).await;
    println!(
        "a cluster node cut off for 4 s: its caller got {} 503 (slowest {:?}); the other caller {} served, {} 503 \
         (slowest {:?}); back {back:?} after the heal",
        a_cut.unavailable, a_cut.slowest, b_cut.metered, b_cut.unavailable, b_cut.slowest
    );
    assert_eq!(a_cut.metered + a_cut.unmetered, 0, "nothing admitted without its node: {a_cut:?}");
    assert!(a_cut.slowest < ANSWER_BOUND, "{a_cut:?}");
    assert_eq!(b_cut.unavailable, 0, "the other node's callers are served throughout: {b_cut:?}\n{}", gateway.logs());
    assert!(b_cut.slowest < ANSWER_BOUND, "{b_cut:?}");
    assert!(back < Duration::from_secs(5), "{back:?}\n{}", gateway.logs());
    // Each bucket holds its caller's admissions (node 0's, perhaps one more lost in flight).
    let spent_on = |index: usize, key: &str| spent(&mut cluster.node(index).client(), key);
    let (a_charged, b_charged) = (spent_on(0, &on_0), spent_on(1, &on_1));
    assert!((a.metered..=a.metered + 1).contains(&a_charged), "{a_charged} charged, {} admitted", a.metered);
    assert_eq!(b_charged, b.metered + b_cut.metered);
}
