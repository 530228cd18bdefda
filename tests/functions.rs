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

/// What the server appends to its AOF while `run` runs.
fn aof_added(server: &RedisServer, run: impl FnOnce()) -> String {
    let before = server.aof_files(".incr.aof");
    run();
    let after = server.aof_files(".incr.aof");
    after.strip_prefix(before.as_str()).unwrap_or_else(|| panic!("the AOF grows at its end: {after}")).to_string()
}

#[test]
fn a_renewal_to_the_deadline_already_held_writes_the_same_effects_on_module_and_library() {
    let server = RedisServer::builder()
        .module_args("debug-commands")
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .start();
    let mut con = server.client();
    functions::load(&mut con, &functions::source_with_test_clock());
    functions::freeze_clock(&mut con, 1_800_000_000_000_000_000);
    let mut effects = Vec::new();
    let acquired = Value::Array(vec![Value::Int(1), Value::Int(1), Value::Int(2), Value::Int(0)]);
    for (dialect, key) in [(Dialect::Module, "m"), (Dialect::Functions, "f")] {
        let mut run =
            |words: &[&str]| -> Value { functions::command(&line(words), dialect, "").query(&mut con).unwrap() };
        assert_eq!(run(&["RL.ACQUIRE", key, "2", "60000", "ID", "a"]), acquired);
        // The clock stands still: each of these asks for the deadline the lease already has.
        let added = aof_added(&server, || {
            assert_eq!(run(&["RL.RENEW", key, "a", "60000"]), Value::Int(1));
            assert_eq!(run(&["RL.ACQUIRE", key, "2", "60000", "ID", "a"]), acquired);
        });
        effects.push(added.replace(&format!("$1\r\n{key}\r\n"), "$1\r\nKEY\r\n"));
    }
    assert!(!effects[0].contains("ZADD"), "no ZADD that changes nothing: {:?}", effects[0]);
    assert_eq!(effects[0], effects[1], "the module and the library append the same effects");
}

#[test]
fn past_maxmemory_the_library_refuses_and_runs_the_same_calls_as_the_module() {
    let server = RedisServer::builder().module_args("debug-commands").arg("maxmemory-policy", "noeviction").start();
    let mut con = server.client();
    functions::load(&mut con, &functions::source_with_test_clock());
    let script = functions::script_source(&functions::source_with_test_clock());
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(script).query(&mut con).unwrap();
    functions::freeze_clock(&mut con, 1_800_000_000_000_000_000);
    let dialects = [(Dialect::Module, "m"), (Dialect::Functions, "f"), (Dialect::Script, "s")];
    // Each backend's keys: a spent bucket, a bucket with tokens left, a lease set.
    for (dialect, tag) in dialects {
        for words in [
            vec!["RL.CHECK", &format!("{tag}:spent") as &str, "1", "100"],
            vec!["RL.CHECK", &format!("{tag}:half"), "10", "100", "COST", "5"],
            vec!["RL.ACQUIRE", &format!("{tag}:leases"), "2", "60000", "ID", "a"],
        ] {
            functions::command(&line(&words), dialect, &sha).query::<Value>(&mut con).unwrap();
        }
    }
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1").query(&mut con).unwrap();
    let oom = "OOM command not allowed when used memory > 'maxmemory'.".to_string();
    // (line, what the module answers: None for the OOM refusal)
    let calls: Vec<(Vec<&str>, bool)> = vec![
        (vec!["RL.CHECK", "{}:new", "5", "10"], false),
        (vec!["RL.CHECK", "{}:spent", "1", "100"], false),
        (vec!["RL.CHECK", "{}:half", "10", "100", "COST", "0"], false),
        (vec!["RL.REFUND", "{}:half", "10", "100", "5"], false),
        (vec!["RL.CHECKALL", "1", "{}:half", "10", "100", "1", "10"], false),
        (vec!["CL.THROTTLE", "{}:spent", "0", "1", "100"], false),
        (vec!["RL.ACQUIRE", "{}:leases", "2", "60000", "ID", "b"], false),
        (vec!["RL.PEEK", "{}:half", "10", "100"], true),
        (vec!["RL.RENEW", "{}:leases", "a", "90000"], true),
        (vec!["RL.RELEASE", "{}:leases", "a"], true),
        (vec!["RL.RESET", "{}:spent"], true),
    ];
    for (words, runs) in &calls {
        let mut replies = Vec::new();
        for (dialect, tag) in dialects {
            let words: Vec<String> = words.iter().map(|w| w.replace("{}", tag)).collect();
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let cmd = functions::command(&line(&words), dialect, &sha);
            replies.push(functions::reply(&mut con, &cmd));
        }
        let refused = Value::SimpleString(format!("ERROR: {oom}"));
        if *runs {
            assert!(!matches!(&replies[0], Value::SimpleString(s) if s.starts_with("ERROR")), "{words:?}: {replies:?}");
        } else {
            assert_eq!(replies[0], refused, "{words:?}: the module refuses it");
        }
        assert_eq!(replies[1], replies[0], "{words:?}: FCALL answers as the module");
        // A script has no flags: Redis refuses its first write, so a call that writes nothing
        // (a refusal, COST 0, a renewal's ZADD aside) is answered; a write gets the module's text.
        if let Value::SimpleString(s) = &replies[2] {
            assert!(!s.starts_with("ERROR") || replies[2] == refused, "{words:?}: {replies:?}");
        }
    }
    let mut dump = dump(&mut con);
    dump.retain(|k, _| !k.starts_with("rl-test-clock"));
    let of = |tag: &str| -> Vec<_> {
        dump.iter().filter(|(k, _)| k.starts_with(tag)).map(|(k, v)| (k[1..].to_string(), v.clone())).collect()
    };
    assert_eq!(of("f:"), of("m:"), "the library's keys are the module's");
    assert!(!of("m:").is_empty());
}
