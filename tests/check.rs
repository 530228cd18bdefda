//! RL.CHECK against a real redis-server with the module loaded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::thread::sleep;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use testkit::redis;
use testkit::{rl_check, CheckReply, RedisServer, Stored};

fn unix_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn fresh_key_admits_exactly_burst_then_limits() {
    let server = RedisServer::start();
    let mut con = server.client();
    // 5 per 1000 s: one token per 200 s, so the few ms between calls refill nothing.
    for expected_remaining in (0..5).rev() {
        let reply = rl_check(&mut con, &["user:1", "5", "1000"]);
        assert!(reply.allowed, "admitted: {reply:?}");
        assert_eq!(reply.remaining, expected_remaining, "remaining: {reply:?}");
        assert_eq!(reply.retry_after_ms, Some(0), "no retry when admitted: {reply:?}");
        assert_eq!(reply.burst, 5, "burst: {reply:?}");
    }
    let limited = rl_check(&mut con, &["user:1", "5", "1000"]);
    assert!(!limited.allowed, "sixth request is limited: {limited:?}");
    assert_eq!(limited.remaining, 0);
    // The next token arrives one emission interval (200 s) after the first request.
    assert!(matches!(limited.retry_after_ms, Some(199_000..=200_000)), "retry_after_ms: {limited:?}");
    // The bucket is full again 5 intervals (1000 s) after the first request.
    assert!((999_000..=1_000_000).contains(&limited.reset_after_ms), "reset_after_ms: {limited:?}");
    assert_eq!(limited.burst, 5);
}

#[test]
fn waiting_retry_after_admits_again() {
    let server = RedisServer::start();
    let mut con = server.client();
    // 2 per second with burst 2: after the burst, a token every 500 ms.
    assert!(rl_check(&mut con, &["k", "2", "1"]).allowed);
    assert!(rl_check(&mut con, &["k", "2", "1"]).allowed);
    let limited = rl_check(&mut con, &["k", "2", "1"]);
    assert!(!limited.allowed);
    let Some(retry_after_ms @ 1..=500) = limited.retry_after_ms else { panic!("{limited:?}") };
    sleep(Duration::from_millis(retry_after_ms));
    let again = rl_check(&mut con, &["k", "2", "1"]);
    assert!(again.allowed, "waiting exactly retry_after_ms admits: {again:?}");
}

#[test]
fn exact_arithmetic_admits_the_whole_burst_for_inexact_intervals() {
    let server = RedisServer::start();
    let mut con = server.client();
    // 3 per 100 s: the emission interval is 33 333 333 333.3 ns; rounding it would lose or
    // gain a token. 7 per 1000 s with burst 7 likewise.
    let reply = rl_check(&mut con, &["third", "3", "100", "BURST", "5", "COST", "5"]);
    assert_eq!((reply.allowed, reply.remaining), (true, 0), "{reply:?}");
    let value = Stored::of(&mut con, "third").value.unwrap();
    assert!(value.contains('+') && value.ends_with("/3"), "state keeps the exact fraction: {value}");
    for remaining in (0..7).rev() {
        assert_eq!(rl_check(&mut con, &["sevenths", "7", "1000"]).remaining, remaining);
    }
    assert!(!rl_check(&mut con, &["sevenths", "7", "1000"]).allowed);
}

#[test]
fn cost_and_burst_options() {
    let server = RedisServer::start();
    let mut con = server.client();
    // Burst 10 on a 5-per-1000 s limit: a fresh key takes 10 at once.
    let reply = rl_check(&mut con, &["b", "5", "1000", "BURST", "10", "COST", "7"]);
    assert_eq!((reply.allowed, reply.remaining, reply.retry_after_ms), (true, 3, Some(0)));
    assert_eq!(reply.burst, 10);
    // 4 more do not fit in the 3 left: refused, nothing taken.
    let refused = rl_check(&mut con, &["b", "5", "1000", "cost", "4", "burst", "10"]);
    assert_eq!((refused.allowed, refused.remaining), (false, 3), "{refused:?}");
    assert!(matches!(refused.retry_after_ms, Some(199_000..=200_000)), "one token short: one interval: {refused:?}");
    let rest = rl_check(&mut con, &["b", "5", "1000", "COST", "3", "BURST", "10"]);
    assert_eq!((rest.allowed, rest.remaining), (true, 0));
    // A cost above the burst can never be admitted.
    let never = rl_check(&mut con, &["fresh", "5", "1000", "COST", "6"]);
    assert_eq!((never.allowed, never.remaining, never.retry_after_ms), (false, 5, None), "{never:?}");
    assert_eq!(Stored::of(&mut con, "fresh").value, None, "a refused request writes nothing");
}

#[test]
fn cost_zero_reports_and_writes_nothing() {
    let server = RedisServer::start();
    let mut con = server.client();
    let peek = rl_check(&mut con, &["z", "5", "1000", "COST", "0"]);
    let full = CheckReply { allowed: true, remaining: 5, retry_after_ms: Some(0), reset_after_ms: 0, burst: 5 };
    assert_eq!(peek, full, "a missing key is a full bucket");
    assert_eq!(Stored::of(&mut con, "z").value, None);
    rl_check(&mut con, &["z", "5", "1000", "COST", "2"]);
    let before = Stored::of(&mut con, "z");
    let report = rl_check(&mut con, &["z", "5", "1000", "COST", "0"]);
    assert_eq!((report.allowed, report.remaining, report.retry_after_ms), (true, 3, Some(0)));
    assert!(report.reset_after_ms > 399_000 && report.reset_after_ms <= 400_000, "{report:?}");
    assert_eq!(Stored::of(&mut con, "z"), before, "COST 0 changes nothing");
}

#[test]
fn limited_request_leaves_value_and_ttl_alone() {
    let server = RedisServer::start();
    let mut con = server.client();
    rl_check(&mut con, &["l", "1", "1000"]);
    let before = Stored::of(&mut con, "l");
    sleep(Duration::from_millis(5));
    assert!(!rl_check(&mut con, &["l", "1", "1000"]).allowed);
    assert_eq!(Stored::of(&mut con, "l"), before);
}

#[test]
fn state_is_the_tat_in_nanoseconds_with_expiry_when_the_bucket_is_full() {
    let server = RedisServer::start();
    let mut con = server.client();
    let start = unix_millis();
    let reply = rl_check(&mut con, &["ttl", "10", "60", "COST", "4"]);
    let end = unix_millis();
    assert_eq!((reply.allowed, reply.remaining), (true, 6));
    let state = Stored::of(&mut con, "ttl");
    let tat: i64 = state.value.unwrap().parse().expect("a whole number of nanoseconds");
    // 4 tokens at 6 s each: the bucket is full 24 s after the call.
    let tat_ms = tat / 1_000_000;
    assert!(tat_ms >= start + 24_000 - 1 && tat_ms <= end + 24_000, "tat {tat_ms} vs [{start}, {end}] + 24 s");
    // The key expires at the first millisecond at or after the TAT.
    let expected_expiry = (tat + 999_999) / 1_000_000;
    assert_eq!(state.pexpiretime, expected_expiry);
    let ty: String = redis::cmd("TYPE").arg("ttl").query(&mut con).unwrap();
    assert_eq!(ty, "string", "state is a plain Redis string");
}

#[test]
fn idle_key_disappears_when_its_bucket_is_full() {
    let server = RedisServer::start();
    let mut con = server.client();
    // 10 per second: one token refills in 100 ms, so the key lives 100 ms.
    rl_check(&mut con, &["short", "10", "1"]);
    assert!(Stored::of(&mut con, "short").value.is_some());
    let reset = rl_check(&mut con, &["short", "10", "1", "COST", "0"]);
    sleep(Duration::from_millis(reset.reset_after_ms + 50));
    let exists: i64 = redis::cmd("EXISTS").arg("short").query(&mut con).unwrap();
    assert_eq!(exists, 0, "the key expired at the full-bucket moment");
}

#[test]
fn command_getkeys_and_flags() {
    let server = RedisServer::start();
    let mut con = server.client();
    let keys: Vec<String> = redis::cmd("COMMAND").arg(&["GETKEYS", "RL.CHECK", "k", "1", "1"]).query(&mut con).unwrap();
    assert_eq!(keys, vec!["k"]);
    let info: redis::Value = redis::cmd("COMMAND").arg(&["INFO", "rl.check"]).query(&mut con).unwrap();
    let text = format!("{info:?}");
    for flag in ["write", "denyoom", "fast"] {
        assert!(text.contains(flag), "RL.CHECK has flag {flag}: {text}");
    }
}

#[test]
fn binary_and_unusual_key_names_work() {
    let server = RedisServer::start();
    let mut con = server.client();
    for key in [&b"\x00\xff binary key\r\n"[..], "ключ-🙂".as_bytes(), &[b'x'; 1000][..]] {
        let reply = rl_check(&mut con, (key, 2, 60));
        assert_eq!((reply.allowed, reply.remaining), (true, 1));
        let stored: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(&mut con).unwrap();
        assert!(stored.is_some());
    }
}

#[test]
fn keep_admits_only_while_that_many_tokens_would_remain() {
    let server = RedisServer::start();
    let mut con = server.client();
    // 5 per 1000 s: a token every 200 s.
    let first = rl_check(&mut con, &["k", "5", "1000", "COST", "2", "KEEP", "3"]);
    assert_eq!((first.allowed, first.remaining), (true, 3), "{first:?}");
    let before = Stored::of(&mut con, "k");
    let refused = rl_check(&mut con, &["k", "5", "1000", "KEEP", "3"]);
    assert_eq!((refused.allowed, refused.remaining), (false, 3), "{refused:?}");
    assert!(matches!(refused.retry_after_ms, Some(199_000..=200_000)), "one more token needed: {refused:?}");
    assert_eq!(Stored::of(&mut con, "k"), before, "a refusal writes nothing");
    let never = rl_check(&mut con, &["k", "5", "1000", "COST", "3", "KEEP", "3"]);
    assert_eq!((never.allowed, never.retry_after_ms), (false, None), "3 + 3 is more than the bucket");
    assert!(rl_check(&mut con, &["k", "5", "1000", "KEEP", "2"]).allowed);
}
