//! Effect replication: replicas and the AOF receive `SET key value PXAT ms`, never the
//! clock-dependent command, and nothing at all when nothing was written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use testkit::redis::{self, Value};
use testkit::{
    cl_throttle, repl_offset, rl_check, rl_peek, rl_refund, rl_reset, wait_for_replicas, RedisServer, Stored,
};

#[test]
fn replica_holds_identical_value_and_expiry() {
    let primary = RedisServer::start();
    let replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    let mut r = replica.client();
    let keys = ["a", "b", "c", "third"];
    for _ in 0..3 {
        rl_check(&mut p, &["a", "5", "100"]);
    }
    rl_check(&mut p, &["b", "10", "60", "COST", "7", "BURST", "20"]);
    cl_throttle(&mut p, &["c", "4", "1", "10", "2"]);
    rl_check(&mut p, &["third", "3", "100", "COST", "2"]);
    rl_refund(&mut p, &["b", "10", "60", "3", "BURST", "20"]);
    wait_for_replicas(&mut p, 1);
    for key in keys {
        let on_primary = Stored::of(&mut p, key);
        assert!(
            on_primary.value.is_some() && on_primary.pexpiretime > 0,
            "{key} written with an expiry: {on_primary:?}"
        );
        assert_eq!(Stored::of(&mut r, key), on_primary, "{key} identical on the replica");
    }
    // RESET propagates as a delete.
    rl_reset(&mut p, "a");
    wait_for_replicas(&mut p, 1);
    assert_eq!(Stored::of(&mut r, "a"), Stored { value: None, pexpiretime: -2 });
    // The replica serves read-only peeks from the replicated state.
    let peek = rl_peek(&mut r, &["b", "10", "60", "BURST", "20"]);
    assert!(peek.allowed);
    // 20 - 7 + 3 = 16 tokens; a cost-1 request would leave 15.
    assert_eq!(peek.remaining, 15, "{peek:?}");
}

#[test]
fn nothing_is_propagated_when_nothing_is_written() {
    // No PING to the replica during the test (every 10 s by default): it moves the offset.
    let primary = RedisServer::builder().arg("repl-ping-replica-period", "3600").start();
    let _replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    rl_check(&mut p, &["k", "1", "100"]);
    wait_for_replicas(&mut p, 1);
    let before = repl_offset(&mut p);
    assert!(!rl_check(&mut p, &["k", "1", "100"]).allowed);
    rl_check(&mut p, &["k", "1", "100", "COST", "0"]);
    rl_check(&mut p, &["other", "1", "100", "COST", "0"]);
    rl_peek(&mut p, &["k", "1", "100"]);
    rl_refund(&mut p, &["missing", "1", "100", "1"]);
    rl_reset(&mut p, "missing");
    let _: redis::RedisResult<Value> = redis::cmd("RL.CHECK").arg(&["k", "0", "100"]).query(&mut p);
    assert_eq!(repl_offset(&mut p), before, "refusals, peeks and errors propagate nothing");
    rl_check(&mut p, &["fresh", "1", "100"]);
    assert!(repl_offset(&mut p) > before, "an admission propagates its effect");
}

#[test]
fn aof_holds_effects_and_reloads_to_the_same_state() {
    let mut server = RedisServer::builder().arg("appendonly", "yes").arg("appendfsync", "always").start();
    let mut con = server.client();
    for _ in 0..3 {
        rl_check(&mut con, &["user:1", "3", "1000"]);
    }
    assert!(!rl_check(&mut con, &["user:1", "3", "1000"]).allowed);
    rl_check(&mut con, &["frac", "7", "100", "COST", "3"]);
    let before = (Stored::of(&mut con, "user:1"), Stored::of(&mut con, "frac"));

    let aof = server.aof_files(".aof");
    assert!(aof.contains("PXAT"), "AOF records SET ... PXAT: {aof}");
    assert!(!aof.to_uppercase().contains("RL.CHECK"), "AOF never records the command itself: {aof}");

    drop(con);
    server.restart();
    let mut con = server.client();
    assert_eq!((Stored::of(&mut con, "user:1"), Stored::of(&mut con, "frac")), before, "reloaded byte for byte");
    assert!(!rl_check(&mut con, &["user:1", "3", "1000"]).allowed, "no tokens refunded by the restart");
}
