//! The Functions library on a server without the module: replicas and the AOF hold exactly
//! what the primary holds (the library's writes are replicated as their effects: `SET ...
//! PXAT`, `DEL`, `ZADD`, `ZREM`, `ZREMRANGEBYSCORE`, `PEXPIREAT`), nothing is propagated when
//! nothing is written, a replica answers `FCALL_RO rl_peek` and refuses writes, and the same
//! holds for the library run as a script (`EVALSHA`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use testkit::functions::{self, Dialect};
use testkit::redis::{self, Value};
use testkit::{repl_offset, wait_for_replicas, RedisServer};

/// Every key with its type, absolute expiry and value (a string's bytes, a sorted set's
/// members and scores), read in one call.
fn dump(con: &mut redis::Connection) -> BTreeMap<String, (String, i64, Value)> {
    let script = "local out = {} \
        for _, k in ipairs(redis.call('KEYS', '*')) do \
          local t = redis.call('TYPE', k).ok \
          local v = false \
          if t == 'string' then v = redis.call('GET', k) \
          elseif t == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES') end \
          out[#out + 1] = {k, t, redis.call('PEXPIRETIME', k), v} \
        end \
        return out";
    let rows: Vec<(String, String, i64, Value)> = redis::cmd("EVAL").arg(script).arg(0).query(con).unwrap();
    rows.into_iter().map(|(k, t, e, v)| (k, (t, e, v))).collect()
}

fn line(words: &[&str]) -> Vec<Vec<u8>> {
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

/// A mixed workload through `dialect`: admissions with fractions, refusals, forced debt,
/// refunds (one to full, which deletes), a reset, CHECKALL all-or-nothing, CL.THROTTLE, and
/// leases acquired, renewed, released and left to expire.
fn workload(con: &mut redis::Connection, dialect: Dialect, sha: &str, tag: &str) {
    let k = |name: &str| format!("{tag}:{name}");
    let (a, b, c, t, l) = (k("a"), k("b"), k("c"), k("t"), k("leases"));
    let (ca, cb) = (format!("{{{tag}}}:rpm"), format!("{{{tag}}}:tpm"));
    let lines: Vec<Vec<&str>> = vec![
        vec!["RL.CHECK", &a, "3", "100", "BURST", "5", "COST", "2"],
        vec!["RL.CHECK", &a, "3", "100", "BURST", "5", "COST", "9"],
        vec!["RL.CHECK", &b, "7", "60"],
        vec!["RL.CHECK", &b, "7", "60", "COST", "20", "FORCE"],
        vec!["RL.REFUND", &b, "7", "60", "3"],
        vec!["RL.CHECK", &c, "10", "60", "COST", "4"],
        vec!["RL.REFUND", &c, "10", "60", "4"],
        vec!["RL.CHECK", &c, "10", "60", "KEEP", "5", "COST", "2"],
        vec!["RL.RESET", &c],
        vec!["RL.CHECKALL", "2", &ca, &cb, "10", "60", "1", "10", "1000", "60", "400", "1000"],
        vec!["RL.CHECKALL", "2", &ca, &cb, "10", "60", "1", "10", "1000", "60", "700", "1000"],
        vec!["CL.THROTTLE", &t, "4", "1", "60", "2"],
        vec!["RL.ACQUIRE", &l, "2", "60000", "ID", "x"],
        vec!["RL.ACQUIRE", &l, "2", "1", "ID", "y"],
        vec!["RL.ACQUIRE", &l, "2", "60000", "ID", "z"],
        vec!["RL.RENEW", &l, "x", "120000"],
        vec!["RL.ACQUIRE", &l, "2", "60000", "ID", "z"],
        vec!["RL.RELEASE", &l, "x"],
    ];
    for (i, words) in lines.iter().enumerate() {
        let cmd = functions::command(&line(words), dialect, sha);
        let reply: redis::RedisResult<Value> = cmd.query(con);
        assert!(reply.is_ok(), "{i}: {words:?}: {reply:?}");
        if words[0] == "RL.ACQUIRE" && words[5] == "y" {
            // Its 1 ms lease ends: the next call on the set purges it.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

#[test]
fn replicas_and_the_aof_of_a_library_only_server_hold_what_the_primary_holds() {
    let mut primary =
        RedisServer::builder().without_module().arg("appendonly", "yes").arg("appendfsync", "always").start();
    let replica = RedisServer::builder().without_module().start_replica_of(&primary);
    let mut p = primary.client();
    functions::load(&mut p, &functions::source());
    let script = functions::script_source(&functions::source());
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(script).query(&mut p).unwrap();
    workload(&mut p, Dialect::Functions, "", "fn");
    workload(&mut p, Dialect::Script, &sha, "script");
    wait_for_replicas(&mut p, 1);
    let on_primary = dump(&mut p);
    assert!(on_primary.len() >= 10, "{on_primary:?}");
    assert!(
        on_primary.values().any(|(t, _, v)| t == "string" && matches!(v, Value::BulkString(b) if b.contains(&b'/'))),
        "a fraction is stored: {on_primary:?}"
    );
    assert!(on_primary.values().any(|(t, _, _)| t == "zset"), "a lease set is stored");
    assert_eq!(dump(&mut replica.client()), on_primary, "the replica holds the same, byte for byte");

    let aof = primary.aof_files(".aof");
    assert!(aof.contains("PXAT") && aof.contains("ZADD"), "the AOF records effects");
    // (The library's source, which names them, is in the AOF's FUNCTION LOAD.)
    for call in ["$5\r\nFCALL\r\n", "$7\r\nEVALSHA\r\n", "$5\r\nfcall\r\n", "$7\r\nevalsha\r\n"] {
        assert!(!aof.contains(call), "never the calls themselves: {call:?}");
    }
    drop(p);
    primary.restart();
    assert_eq!(dump(&mut primary.client()), on_primary, "reloaded from the AOF, the same");
}

#[test]
fn refusals_peeks_and_errors_propagate_nothing_and_a_replica_peeks_but_never_takes() {
    let primary = RedisServer::builder().without_module().arg("repl-ping-replica-period", "3600").start();
    let replica = RedisServer::builder().without_module().start_replica_of(&primary);
    let mut p = primary.client();
    functions::load(&mut p, &functions::source());
    let call = |con: &mut redis::Connection, words: &[&str]| -> redis::RedisResult<Value> {
        functions::command(&line(words), Dialect::Functions, "").query(con)
    };
    call(&mut p, &["RL.CHECK", "k", "1", "100"]).unwrap();
    wait_for_replicas(&mut p, 1);
    let before = repl_offset(&mut p);
    call(&mut p, &["RL.CHECK", "k", "1", "100"]).unwrap();
    call(&mut p, &["RL.CHECK", "k", "1", "100", "COST", "0"]).unwrap();
    call(&mut p, &["RL.PEEK", "k", "1", "100"]).unwrap();
    call(&mut p, &["RL.REFUND", "missing", "1", "100", "1"]).unwrap();
    call(&mut p, &["RL.RESET", "missing"]).unwrap();
    call(&mut p, &["RL.RELEASE", "no-leases", "id"]).unwrap();
    assert!(call(&mut p, &["RL.CHECK", "k", "0", "100"]).is_err());
    assert_eq!(repl_offset(&mut p), before, "refusals, peeks and errors propagate nothing");
    call(&mut p, &["RL.CHECK", "fresh", "1", "100"]).unwrap();
    assert!(repl_offset(&mut p) > before, "an admission propagates its effect");
    wait_for_replicas(&mut p, 1);

    let mut r = replica.client();
    let peek: Vec<i64> =
        functions::command(&line(&["RL.PEEK", "k", "1", "100"]), Dialect::Functions, "").query(&mut r).unwrap();
    assert_eq!(peek[0..2], [0, 0], "FCALL_RO on the replica sees the spent bucket: {peek:?}");
    let take = call(&mut r, &["RL.CHECK", "other", "1", "100"]);
    assert!(take.is_err_and(|e| e.code() == Some("READONLY")), "a replica never takes");
}
