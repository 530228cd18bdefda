//! RL.CHECK ... FORCE against real servers: charging after the fact goes into a bounded debt
//! that later requests wait for, replicates its effect (`SET key value PXAT ms`) so a replica
//! holds the very same state, and reloads from the AOF unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use testkit::{repl_offset, rl_check, wait_for_replicas, RedisServer, Stored};

/// 5 per 1000 s: a token every 200 s, tolerance 1000 s; nothing refills during a test.
const QUOTA: [&str; 3] = ["5", "1000", "COST"];

fn forced(key: &str, cost: u64) -> Vec<String> {
    let [limit, window, cost_word] = QUOTA;
    vec![key.into(), limit.into(), window.into(), cost_word.into(), cost.to_string(), "FORCE".into()]
}

#[test]
fn a_forced_charge_admits_into_debt_and_the_next_request_waits_for_it() {
    let server = RedisServer::start();
    let mut con = server.client();
    // 5 paid, 2 owed: the bucket is full again 7 intervals (1400 s) from now.
    let reply = rl_check(&mut con, forced("k", 7));
    assert!(reply.allowed, "{reply:?}");
    assert_eq!((reply.remaining, reply.retry_after_ms, reply.burst), (0, Some(0), 5), "{reply:?}");
    assert!((1_399_000..=1_400_000).contains(&reply.reset_after_ms), "{reply:?}");
    let stored = Stored::of(&mut con, "k");
    assert!(stored.pexpiretime > 0, "the key expires when the debt is repaid and the bucket full: {stored:?}");
    // The next request: 2 owed plus its own token, 3 intervals.
    let next = rl_check(&mut con, &["k", "5", "1000"]);
    assert!(!next.allowed, "{next:?}");
    assert!(matches!(next.retry_after_ms, Some(599_000..=600_000)), "{next:?}");
    assert_eq!(Stored::of(&mut con, "k"), stored, "a refusal writes nothing");
}

#[test]
fn a_forced_charge_owes_at_most_one_burst() {
    let server = RedisServer::start();
    let mut con = server.client();
    let reply = rl_check(&mut con, forced("k", 1_000_000));
    assert!(reply.allowed && reply.remaining == 0, "{reply:?}");
    // At most 2 × tolerance: the bucket is full again exactly 2000 s after the charge.
    assert_eq!(reply.reset_after_ms, 2_000_000, "{reply:?}");
    // The cap is 2 × tolerance after each call's own now: charged again, exactly that.
    let again = rl_check(&mut con, forced("k", 1_000_000));
    assert_eq!(again.reset_after_ms, 2_000_000, "still capped: {again:?}");
    let next = rl_check(&mut con, &["k", "5", "1000"]);
    assert!(matches!(next.retry_after_ms, Some(1_199_000..=1_200_000)), "one burst owed plus one token: {next:?}");
}

#[test]
fn cost_zero_force_reports_and_writes_nothing() {
    // No PING to the replica during the test (every 10 s by default): it moves the offset.
    let primary = RedisServer::builder().arg("repl-ping-replica-period", "3600").start();
    let _replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    rl_check(&mut p, forced("k", 2));
    wait_for_replicas(&mut p, 1);
    let before = (Stored::of(&mut p, "k"), repl_offset(&mut p));
    let report = rl_check(&mut p, forced("k", 0));
    assert_eq!((report.allowed, report.remaining), (true, 3), "{report:?}");
    rl_check(&mut p, forced("missing", 0));
    assert_eq!((Stored::of(&mut p, "k"), repl_offset(&mut p)), before, "nothing written or propagated");
    assert_eq!(Stored::of(&mut p, "missing"), Stored { value: None, pexpiretime: -2 });
}

#[test]
fn a_replica_holds_the_forced_state_byte_for_byte() {
    let primary = RedisServer::start();
    let replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    let mut r = replica.client();
    rl_check(&mut p, forced("debt", 7));
    rl_check(&mut p, forced("capped", 50));
    // 7 per 1000 s: an interval that is not a whole number of nanoseconds.
    rl_check(&mut p, &["frac", "7", "1000", "COST", "9", "FORCE"]);
    wait_for_replicas(&mut p, 1);
    for key in ["debt", "capped", "frac"] {
        let on_primary = Stored::of(&mut p, key);
        assert!(on_primary.value.is_some() && on_primary.pexpiretime > 0, "{key}: {on_primary:?}");
        assert_eq!(Stored::of(&mut r, key), on_primary, "{key} identical on the replica");
    }
}

#[test]
fn a_forced_charge_reloads_from_the_aof_unchanged() {
    let mut server = RedisServer::builder().arg("appendonly", "yes").arg("appendfsync", "always").start();
    let mut con = server.client();
    rl_check(&mut con, forced("debt", 8));
    rl_check(&mut con, &["frac", "7", "1000", "COST", "20", "FORCE"]);
    let before = (Stored::of(&mut con, "debt"), Stored::of(&mut con, "frac"));
    let aof = server.aof_files(".aof");
    assert!(aof.contains("PXAT") && !aof.to_uppercase().contains("FORCE"), "the AOF holds the effect only: {aof}");
    drop(con);
    server.restart();
    let mut con = server.client();
    assert_eq!((Stored::of(&mut con, "debt"), Stored::of(&mut con, "frac")), before, "reloaded byte for byte");
    assert!(!rl_check(&mut con, &["debt", "5", "1000"]).allowed, "the debt survives the restart");
}
