//! Many client connections hitting one limiter at once. Redis runs each module command
//! atomically, so the GCRA needs no retry loop, and these tests hold it to exact counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use testkit::redis;
use testkit::{check, cl_throttle, redis_version, rl_checkall, tokens, CheckReply, RedisServer};

const CONNECTIONS: usize = 32;

/// Runs `body(connection)` on `CONNECTIONS` threads, each with its own connection, all
/// released at once; returns each thread's result.
fn hammer<T: Send>(server: &RedisServer, body: impl Fn(&mut redis::Connection) -> T + Sync) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(CONNECTIONS));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (barrier, body) = (barrier.clone(), &body);
                let mut con = server.client();
                scope.spawn(move || {
                    barrier.wait();
                    body(&mut con)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn thirty_two_connections_on_one_key_with_a_long_window_admit_exactly_the_burst() {
    let server = RedisServer::start();
    // 32 × 25 = 800 requests for a bucket of 100 that refills one token every 36 s.
    let remaining_seen: Vec<Vec<u64>> = hammer(&server, |con| {
        (0..25)
            .filter_map(|_| {
                let reply = check(con, "hot", 100, 3600, 1, 100);
                assert_eq!(reply.burst, 100);
                assert_eq!(reply.allowed, reply.retry_after_ms == Some(0), "retry_after with allowed: {reply:?}");
                reply.allowed.then_some(reply.remaining)
            })
            .collect()
    });
    let mut remaining: Vec<u64> = remaining_seen.into_iter().flatten().collect();
    assert_eq!(remaining.len(), 100, "admitted exactly the burst");
    // Every admitted request saw its own bucket level: 99, 98, ..., 0, each exactly once.
    remaining.sort_unstable();
    assert_eq!(remaining, (0..100).collect::<Vec<_>>());
    assert_eq!(tokens(&mut server.client(), "hot", 100, 3600, 100), 0);
}

#[test]
fn concurrent_costs_throttles_and_checkalls_admit_exactly_what_fits() {
    let server = RedisServer::start();
    let admitted: Vec<[u64; 3]> = hammer(&server, |con| {
        let mut admitted = [0; 3];
        for _ in 0..20 {
            // COST 3 from a bucket of 100: 33 fit.
            admitted[0] += u64::from(check(con, "costly", 100, 3600, 3, 100).allowed);
            // redis-cell's CL.THROTTLE: max_burst 49 is a bucket of 50.
            admitted[1] += u64::from(!cl_throttle(con, ("cell", 49, 1, 3600)).limited);
            // Requests-and-tokens together: 40 requests, 1000 tokens at 30 a call; tokens run
            // out after 33 calls, and then neither limit may be charged.
            let all = rl_checkall(con, (2, "rpm", "tpm", &[40, 3600, 1, 40], &[1000, 3600, 30, 1000]));
            admitted[2] += u64::from(all.allowed);
        }
        admitted
    });
    let total = |i: usize| admitted.iter().map(|a| a[i]).sum::<u64>();
    assert_eq!(total(0), 33, "COST 3 from 100 tokens");
    assert_eq!(total(1), 50, "CL.THROTTLE with max_burst 49");
    assert_eq!(total(2), 33, "RL.CHECKALL until the tokens ran out");
    let mut con = server.client();
    assert_eq!(tokens(&mut con, "costly", 100, 3600, 100), 1);
    assert_eq!(tokens(&mut con, "rpm", 40, 3600, 40), 40 - 33, "refused RL.CHECKALLs charged nothing");
    assert_eq!(tokens(&mut con, "tpm", 1000, 3600, 1000), 1000 - 33 * 30);
}

#[test]
fn with_a_short_window_admitted_never_exceeds_burst_plus_rate_times_elapsed() {
    let server = RedisServer::start();
    const LIMIT: u64 = 50; // per second: a token every 20 ms
    const BURST: u64 = 10;
    const RUN: Duration = Duration::from_millis(1200);
    let barrier = Arc::new(Barrier::new(CONNECTIONS + 1));
    let (start, admitted): (Instant, u64) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let barrier = barrier.clone();
                let mut con = server.client();
                scope.spawn(move || {
                    barrier.wait();
                    let began = Instant::now();
                    let mut admitted = 0;
                    for _ in 0..5_000 {
                        if began.elapsed() >= RUN {
                            break;
                        }
                        let reply = check(&mut con, "short", LIMIT, 1, 1, BURST);
                        assert!((0..BURST).contains(&reply.remaining), "remaining {}", reply.remaining);
                        admitted += u64::from(reply.allowed);
                    }
                    admitted
                })
            })
            .collect();
        // Taken before any request can be sent, and the end after every reply came back, so
        // the measured span covers every instant the server decided at.
        let start = Instant::now();
        barrier.wait();
        (start, handles.into_iter().map(|h| h.join().unwrap()).sum())
    });
    let elapsed = start.elapsed();
    // The server's clock has millisecond resolution on Redis 7.0 (microseconds on 7.2+ and
    // Valkey): its span between two decisions can exceed the true one by under 1 ms.
    let span_nanos = elapsed.as_nanos() + 1_000_000;
    let bound = u128::from(BURST) + (u128::from(LIMIT) * span_nanos).div_ceil(1_000_000_000);
    assert!(u128::from(admitted) <= bound, "admitted {admitted} > {bound} in {elapsed:?}");
    // Tokens did come back while the run lasted (a stuck bucket would admit only the burst).
    assert!(admitted > BURST, "admitted only {admitted} in {elapsed:?}");
}

#[test]
fn a_transaction_decides_at_one_instant_where_the_server_caches_the_command_time() {
    let server = RedisServer::builder().arg("enable-debug-command", "yes").start();
    let mut con = server.client();
    // A token every millisecond; 50 ms pass between the two checks inside one MULTI.
    let (first, second): (CheckReply, CheckReply) = redis::pipe()
        .atomic()
        .cmd("RL.CHECK")
        .arg(&["tx", "1000", "1"])
        .cmd("DEBUG")
        .arg(&["SLEEP", "0.05"])
        .ignore()
        .cmd("RL.CHECK")
        .arg(&["tx", "1000", "1"])
        .query(&mut con)
        .unwrap();
    // (allowed, remaining, retry_after_ms, reset_after_ms)
    let decision = |r: CheckReply| (r.allowed, r.remaining, r.retry_after_ms, r.reset_after_ms);
    assert_eq!(decision(first), (true, 999, Some(0), 1));
    // Valkey reports the Redis version it is compatible with (7.2 for Valkey 8).
    if redis_version(&mut con) >= (7, 2) {
        // RedisModule_CachedMicroseconds: every command of the transaction sees the instant
        // EXEC started, so the second check finds the first token still missing.
        assert_eq!(decision(second), (true, 998, Some(0), 2), "one instant for the whole MULTI");
    } else {
        // Redis 7.0 has only the live millisecond clock: the first token came back meanwhile.
        assert_eq!(decision(second), (true, 999, Some(0), 1), "the live clock moved on");
    }
}
