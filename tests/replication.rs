//! Effect replication: replicas and the AOF receive `SET key value PXAT ms`, never the
//! clock-dependent command, and nothing at all when nothing was written.

use std::fs;

use testkit::redis::{self, Connection};
use testkit::RedisServer;

fn state(con: &mut Connection, key: &str) -> (Option<String>, i64) {
    let value: Option<String> = redis::cmd("GET").arg(key).query(con).unwrap();
    let expiry: i64 = redis::cmd("PEXPIRETIME").arg(key).query(con).unwrap();
    (value, expiry)
}

fn repl_offset(con: &mut Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("replication").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("master_repl_offset in INFO replication")
}

fn wait_for_replica(con: &mut Connection) {
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(con).unwrap();
    assert_eq!(acked, 1, "the replica acknowledged the writes");
}

#[test]
fn replica_holds_identical_value_and_expiry() {
    let primary = RedisServer::start();
    let replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    let mut r = replica.client();
    let keys = ["a", "b", "c", "third"];
    for _ in 0..3 {
        let _: Vec<i64> = redis::cmd("RL.CHECK").arg(&["a", "5", "100"]).query(&mut p).unwrap();
    }
    let _: Vec<i64> = redis::cmd("RL.CHECK").arg(&["b", "10", "60", "COST", "7", "BURST", "20"]).query(&mut p).unwrap();
    let _: Vec<i64> = redis::cmd("CL.THROTTLE").arg(&["c", "4", "1", "10", "2"]).query(&mut p).unwrap();
    let _: Vec<i64> = redis::cmd("RL.CHECK").arg(&["third", "3", "100", "COST", "2"]).query(&mut p).unwrap();
    let _: Vec<i64> = redis::cmd("RL.REFUND").arg(&["b", "10", "60", "3", "BURST", "20"]).query(&mut p).unwrap();
    wait_for_replica(&mut p);
    for key in keys {
        let on_primary = state(&mut p, key);
        assert!(on_primary.0.is_some() && on_primary.1 > 0, "{key} written with an expiry: {on_primary:?}");
        assert_eq!(state(&mut r, key), on_primary, "{key} identical on the replica");
    }
    // RESET propagates as a delete.
    let _: i64 = redis::cmd("RL.RESET").arg("a").query(&mut p).unwrap();
    wait_for_replica(&mut p);
    assert_eq!(state(&mut r, "a"), (None, -2));
    // The replica serves read-only peeks from the replicated state.
    let peek: Vec<i64> = redis::cmd("RL.PEEK").arg(&["b", "10", "60", "BURST", "20"]).query(&mut r).unwrap();
    assert_eq!(peek[0], 1);
    // 20 - 7 + 3 = 16 tokens; a cost-1 request would leave 15.
    assert_eq!(peek[1], 15, "{peek:?}");
}

#[test]
fn nothing_is_propagated_when_nothing_is_written() {
    let primary = RedisServer::start();
    let _replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    let _: Vec<i64> = redis::cmd("RL.CHECK").arg(&["k", "1", "100"]).query(&mut p).unwrap();
    wait_for_replica(&mut p);
    let before = repl_offset(&mut p);
    let limited: Vec<i64> = redis::cmd("RL.CHECK").arg(&["k", "1", "100"]).query(&mut p).unwrap();
    assert_eq!(limited[0], 0);
    let _: Vec<i64> = redis::cmd("RL.CHECK").arg(&["k", "1", "100", "COST", "0"]).query(&mut p).unwrap();
    let _: Vec<i64> = redis::cmd("RL.CHECK").arg(&["other", "1", "100", "COST", "0"]).query(&mut p).unwrap();
    let _: Vec<i64> = redis::cmd("RL.PEEK").arg(&["k", "1", "100"]).query(&mut p).unwrap();
    let _: Vec<i64> = redis::cmd("RL.REFUND").arg(&["missing", "1", "100", "1"]).query(&mut p).unwrap();
    let _: i64 = redis::cmd("RL.RESET").arg("missing").query(&mut p).unwrap();
    let _: redis::RedisResult<Vec<i64>> = redis::cmd("RL.CHECK").arg(&["k", "0", "100"]).query(&mut p);
    assert_eq!(repl_offset(&mut p), before, "refusals, peeks and errors propagate nothing");
    let _: Vec<i64> = redis::cmd("RL.CHECK").arg(&["fresh", "1", "100"]).query(&mut p).unwrap();
    assert!(repl_offset(&mut p) > before, "an admission propagates its effect");
}

#[test]
fn aof_holds_effects_and_reloads_to_the_same_state() {
    let mut server = RedisServer::builder().arg("appendonly", "yes").arg("appendfsync", "always").start();
    let mut con = server.client();
    for _ in 0..3 {
        let _: Vec<i64> = redis::cmd("RL.CHECK").arg(&["user:1", "3", "1000"]).query(&mut con).unwrap();
    }
    let limited: Vec<i64> = redis::cmd("RL.CHECK").arg(&["user:1", "3", "1000"]).query(&mut con).unwrap();
    assert_eq!(limited[0], 0);
    let _: Vec<i64> = redis::cmd("RL.CHECK").arg(&["frac", "7", "100", "COST", "3"]).query(&mut con).unwrap();
    let before = (state(&mut con, "user:1"), state(&mut con, "frac"));

    let mut aof = String::new();
    for entry in fs::read_dir(server.dir().join("appendonlydir")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".aof") {
            aof.push_str(&String::from_utf8_lossy(&fs::read(path).unwrap()));
        }
    }
    assert!(aof.contains("PXAT"), "AOF records SET ... PXAT: {aof}");
    assert!(!aof.to_uppercase().contains("RL.CHECK"), "AOF never records the command itself: {aof}");

    drop(con);
    server.restart();
    let mut con = server.client();
    assert_eq!((state(&mut con, "user:1"), state(&mut con, "frac")), before, "reloaded byte for byte");
    let still: Vec<i64> = redis::cmd("RL.CHECK").arg(&["user:1", "3", "1000"]).query(&mut con).unwrap();
    assert_eq!(still[0], 0, "no tokens refunded by the restart");
}
