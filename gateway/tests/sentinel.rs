//! Redis Sentinel behind gateways: real `--sentinel` processes, a primary and a replica with
//! the module. When the primary dies, every request is answered by the limiter or fails as
//! `failure_mode` says; once Sentinel has promoted the replica, the gateway follows within
//! seconds, and what was spent before the failover (and replicated) stays spent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use testkit::{redis, tokens, wait_for_replicas, SentinelGroup};

/// One limit of 5 per hour: a token comes back every 12 minutes, so the count cannot move
/// by itself while the test runs, however long the failover takes.
const LIMIT: u64 = 5;
const WINDOW: u64 = 3600;

/// How long after the sentinels name the new primary the gateway may take to serve again.
const FOLLOW_BOUND: Duration = Duration::from_secs(3);

fn flags(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["--limit", &LIMIT.to_string(), "--window", &WINDOW.to_string(), "--redis-timeout-ms", "300"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// What one request during the failover got.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The limiter answered (200 with the rate-limit headers).
    Metered,
    /// Forwarded without a limit (open mode, Redis failing).
    Unmetered,
    /// 503 rate_limiter_unavailable (closed mode, Redis failing).
    Unavailable,
}

/// A request under a key of its own (so it is always within its limit when the limiter
/// answers), checked to be one of the answers `failure_mode` allows.
async fn probe(gateway: &Proc, key: &str, fail_open: bool) -> Outcome {
    let answer = predict(gateway, &[("x-api-key", key)]).await;
    let outcome = match answer.status {
        StatusCode::OK if answer.headers.get("ratelimit").is_some() => {
            assert_eq!(answer.header("x-ratelimit-remaining"), (LIMIT - 1).to_string(), "{answer:?}");
            Outcome::Metered
        }
        StatusCode::OK => Outcome::Unmetered,
        StatusCode::SERVICE_UNAVAILABLE => {
            assert_eq!(answer.json()["error"]["type"], "rate_limiter_unavailable", "{answer:?}");
            Outcome::Unavailable
        }
        other => panic!("{other} during the failover: {answer:?}\n{}", gateway.logs()),
    };
    let allowed = if fail_open { Outcome::Unavailable } else { Outcome::Unmetered };
    assert_ne!(outcome, allowed, "fail_open = {fail_open}: {answer:?}\n{}", gateway.logs());
    outcome
}

/// Whether `server` holds one request charged to `caller`.
fn charged(server: &RedisServer, caller: &str) -> bool {
    let key = format!("rl:{{{}}}:default:requests", digest(caller));
    tokens(&mut server.client(), &key, LIMIT, WINDOW, LIMIT) == LIMIT - 1
}

/// How the primary goes away.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// SIGKILL: its connections break at once.
    Crash,
    /// SIGSTOP: it accepts connections and answers nothing, so only timeouts tell.
    Hang,
    /// `SENTINEL FAILOVER`: it is demoted to a replica while running.
    Demotion,
}

/// Two gateways (failing closed and open) through the sentinels; 3 of 5 spent on the primary
/// and replicated; the primary lost as `loss` says, with requests all along; then both
/// gateways must serve through the new primary within [`FOLLOW_BOUND`] of the sentinels
/// naming it, and the spent 3 stay spent.
async fn failover_keeps_spent_limits_and_the_gateways_follow(loss: Loss) {
    let mut group = SentinelGroup::start();
    let model = start_model(0);
    let closed = start_gateway_via_sentinels(&group, &model.url(""), &flags(&[]));
    let open = start_gateway_via_sentinels(&group, &model.url(""), &flags(&["--fail-open"]));
    for gateway in [&closed, &open] {
        assert_eq!(get(&gateway.url("/readyz")).await.unwrap().status, StatusCode::OK, "{}", gateway.logs());
    }

    // Spend 3 of 5 through the primary, and let the replica have them: a write on this
    // connection after the gateway's, acknowledged by the replica (WAIT), comes after them
    // in the replication stream.
    let spender = [("x-api-key", "spent-before-the-failover")];
    for remaining in [4, 3, 2] {
        let answer = predict(&closed, &spender).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", closed.logs());
        assert_eq!(answer.header("x-ratelimit-remaining"), remaining.to_string());
    }
    let key = format!("rl:{{{}}}:default:requests", digest("spent-before-the-failover"));
    let mut primary = group.server(0).client();
    assert_eq!(tokens(&mut primary, &key, LIMIT, WINDOW, LIMIT), 2, "the gateway wrote to server 0");
    let _: () = redis::cmd("SET").arg("replicated-marker").arg(1).query(&mut primary).unwrap();
    wait_for_replicas(&mut primary, 1);
    assert_eq!(tokens(&mut group.server(1).client(), &key, LIMIT, WINDOW, LIMIT), 2, "the replica has them");
    drop(primary);

    let lost_at = Instant::now();
    match loss {
        Loss::Crash => group.kill(0),
        Loss::Hang => group.freeze(0),
        Loss::Demotion => group.failover(),
    }
    let mut probes = 0;
    let count = |outcome: Outcome, seen: &mut [u32; 3]| seen[outcome as usize] += 1;
    let (mut closed_seen, mut open_seen) = ([0u32; 3], [0u32; 3]);
    let promoted_at = loop {
        probes += 1;
        count(probe(&closed, &format!("closed-probe-{probes}"), false).await, &mut closed_seen);
        count(probe(&open, &format!("open-probe-{probes}"), true).await, &mut open_seen);
        if group.promoted_from(0).is_some() {
            break Instant::now();
        }
        assert!(lost_at.elapsed() < Duration::from_secs(30), "no promotion in 30 s\n{}", group.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(group.primary_index(), 1);
    if !matches!(loss, Loss::Demotion) {
        // Seconds without a primary: the gateways must have met it (a demotion may be quick
        // enough that no request fails).
        assert!(closed_seen[Outcome::Unavailable as usize] > 0, "the closed gateway never failed: {closed_seen:?}");
        assert!(open_seen[Outcome::Unmetered as usize] > 0, "the open gateway never went unmetered: {open_seen:?}");
    }

    // Both gateways serve through the new primary within the bound: a request is answered
    // and charged there. (Answered alone is not enough: a demoted primary serves until
    // Sentinel reconfigures it, and what it took then is lost when it resyncs.)
    let mut followed = Vec::new();
    for (name, gateway, fail_open) in [("closed", &closed, false), ("open", &open, true)] {
        let after = loop {
            probes += 1;
            let caller = format!("{name}-after-{probes}");
            if probe(gateway, &caller, fail_open).await == Outcome::Metered && charged(group.server(1), &caller) {
                break promoted_at.elapsed();
            }
            assert!(promoted_at.elapsed() < FOLLOW_BOUND, "{name} gateway still elsewhere\n{}", gateway.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        followed.push(after);
    }
    println!(
        "{loss:?}: sentinels named the new primary after {} ms; the closed gateway served again {} ms later, \
         the open one {} ms later ({probes} probes; closed {closed_seen:?}, open {open_seen:?} as [metered, \
         unmetered, unavailable])",
        (promoted_at - lost_at).as_millis(),
        followed[0].as_millis(),
        followed[1].as_millis(),
    );

    // What was spent before the failover stays spent: 2 more, then 429, on either gateway.
    let first = predict(&closed, &spender).await;
    assert_eq!(first.status, StatusCode::OK, "{}", closed.logs());
    assert_eq!(first.header("x-ratelimit-remaining"), "1");
    let second = predict(&open, &spender).await;
    assert_eq!(second.status, StatusCode::OK, "{}", open.logs());
    assert_eq!(second.header("x-ratelimit-remaining"), "0");
    assert_eq!(predict(&closed, &spender).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(predict(&open, &spender).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(tokens(&mut group.server(1).client(), &key, LIMIT, WINDOW, LIMIT), 0, "spent on the new primary");
    assert_eq!(get(&closed.url("/readyz")).await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn a_crashed_primary_is_replaced_and_the_gateways_follow_with_spent_limits_kept() {
    failover_keeps_spent_limits_and_the_gateways_follow(Loss::Crash).await;
}

/// Nothing breaks when a primary hangs: the answer timeout is what makes the gateway ask
/// Sentinel again.
#[tokio::test]
async fn a_hung_primary_is_replaced_and_the_gateways_follow_with_spent_limits_kept() {
    failover_keeps_spent_limits_and_the_gateways_follow(Loss::Hang).await;
}

/// The old primary keeps running: it serves until Sentinel turns it into a replica (then a
/// write to it gets READONLY, or Sentinel disconnects its clients), and the gateway asks
/// Sentinel again.
#[tokio::test]
async fn a_demoted_primary_is_left_and_the_gateways_follow_with_spent_limits_kept() {
    failover_keeps_spent_limits_and_the_gateways_follow(Loss::Demotion).await;
}
