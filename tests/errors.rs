//! Every bad input gets a clear error reply, changes nothing, and leaves the server running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use testkit::redis::{self, Connection, Value};
use testkit::{rl_check, rl_refund, RedisServer, Stored};

/// Sends a raw command line and returns the error text (panics if it succeeded).
fn error_of(con: &mut Connection, line: &[&[u8]]) -> String {
    let (name, rest) = line.split_first().unwrap();
    let result: redis::RedisResult<Value> = redis::cmd(std::str::from_utf8(name).unwrap()).arg(rest).query(con);
    match result {
        Err(e) => {
            let text = format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or(""));
            text.trim().to_string()
        }
        Ok(v) => panic!("{:?} should fail, got {v:?}", String::from_utf8_lossy(&line.concat())),
    }
}

fn words(line: &str) -> Vec<&[u8]> {
    line.split(' ').map(str::as_bytes).collect()
}

#[test]
fn bad_arguments_are_refused_and_change_nothing() {
    let server = RedisServer::start();
    let mut con = server.client();
    rl_check(&mut con, &["k", "5", "1000", "COST", "2"]);
    let before = Stored::of(&mut con, "k");
    let cases: &[(&str, &str)] = &[
        ("RL.CHECK k", "wrong number of arguments"),
        ("RL.CHECK k 5", "wrong number of arguments"),
        ("RL.CHECK k 0 1000", "limit must be a positive integer"),
        ("RL.CHECK k -5 1000", "limit must be a positive integer"),
        ("RL.CHECK k five 1000", "limit must be a positive integer"),
        ("RL.CHECK k 5.0 1000", "limit must be a positive integer"),
        ("RL.CHECK k 99999999999999999999999 1000", "limit is out of range: at most 9223372036854775807"),
        ("RL.CHECK k 5 1000 COST 9223372036854775808", "cost is out of range: at most 9223372036854775807"),
        ("RL.CHECK k 05 1000", "limit must be a positive integer"),
        ("RL.CHECK k +5 1000", "limit must be a positive integer"),
        ("RL.CHECK k 5 1000 COST -0", "cost must be a non-negative integer"),
        ("RL.CHECK k 5 0", "window must be a positive integer"),
        ("RL.CHECK k 5 -1", "window must be a positive integer"),
        ("RL.CHECK k 5 1000 BURST 0", "burst must be a positive integer"),
        ("RL.CHECK k 5 1000 BURST -2", "burst must be a positive integer"),
        ("RL.CHECK k 5 1000 COST -1", "cost must be a non-negative integer"),
        ("RL.CHECK k 5 1000 COST x", "cost must be a non-negative integer"),
        ("RL.CHECK k 5 1000 COST", "option COST needs a value"),
        ("RL.CHECK k 5 1000 BURST", "option BURST needs a value"),
        ("RL.CHECK k 5 1000 COST 1 COST 1", "option COST given more than once"),
        ("RL.CHECK k 5 1000 BURST 5 burst 5", "option BURST given more than once"),
        ("RL.CHECK k 5 1000 PRIORITY 1", "unknown option 'PRIORITY'"),
        ("RL.CHECK k 5 1000 FORCE FORCE", "option FORCE given more than once"),
        ("RL.CHECK k 5 1000 FORCE 3", "unknown option '3'"),
        ("RL.CHECK k 5 1000 COST -1 FORCE", "cost must be a non-negative integer"),
        ("RL.CHECK k 1 9223372036854775807", "must not exceed 100 years"),
        ("RL.CHECK k 1 1 BURST 9223372036854775807", "must not exceed 100 years"),
        ("RL.PEEK k 5", "wrong number of arguments"),
        ("RL.PEEK k 5 1000 COST 1", "unknown option 'COST'"),
        ("RL.REFUND k 5 1000", "wrong number of arguments"),
        ("RL.REFUND k 5 1000 -1", "amount must be a non-negative integer"),
        ("RL.RESET", "wrong number of arguments"),
        ("RL.RESET k extra", "wrong number of arguments"),
        ("RL.CHECKALL 1 k", "wrong number of arguments"),
        ("RL.CHECKALL 0 k 5 1000 1 5", "numkeys must be between 1 and 64"),
        ("RL.CHECKALL 2 k 5 1000 1 5", "numkeys must be between 1 and 64"),
        ("RL.CHECKALL 1 k 5 1000 1 5 0 extra", "numkeys must be between 1 and 64"),
        ("RL.CHECKALL 1 k 5 1000 1 5 x", "keep must be a non-negative integer"),
        ("RL.CHECK k 5 1000 KEEP 1 FORCE", "KEEP and FORCE cannot be combined"),
        ("RL.CHECK k 5 1000 KEEP -2", "keep must be a non-negative integer"),
        ("RL.CHECKALL 1 k 5 1000 -1 5", "cost must be a non-negative integer"),
        ("RL.CHECKALL 2 k k 5 1000 1 5 5 1000 1 5", "keys must be distinct"),
        ("CL.THROTTLE k 4 1", "wrong number of arguments"),
        ("CL.THROTTLE k -1 1 1", "max_burst must be a non-negative integer"),
        ("CL.THROTTLE k 4 0 1", "count_per_period must be a positive integer"),
        ("CL.THROTTLE k 4 1 0", "period must be a positive integer"),
        ("CL.THROTTLE k 4 1 1 -1", "quantity must be a non-negative integer"),
    ];
    for (line, expected) in cases {
        let error = error_of(&mut con, &words(line));
        assert!(error.starts_with("ERR "), "{line}: standard prefix: {error}");
        assert!(error.contains(expected), "{line}: {error:?} should mention {expected:?}");
        assert_eq!(Stored::of(&mut con, "k"), before, "{line} changed the key");
    }
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let info: String = redis::cmd("INFO").arg("ratelimit").query(&mut con).unwrap();
    assert!(info.contains(&format!("ratelimit_errors:{}", cases.len())), "{info}");
}

#[test]
fn a_huge_unknown_option_is_echoed_as_a_short_prefix() {
    let server = RedisServer::start();
    let mut con = server.client();
    let option = vec![b'Z'; 1 << 20];
    let line: Vec<&[u8]> = vec![b"RL.CHECK", b"k", b"5", b"1000", &option, b"1"];
    let error = error_of(&mut con, &line);
    assert!(error.starts_with(&format!("ERR unknown option '{}...'", "Z".repeat(128))), "{}", &error[..200]);
    assert!(error.len() < 400, "a 1 MiB option gave a {}-byte error", error.len());
}

/// One well-formed call of every command that reads `key`, including a report (COST 0).
fn every_command_on(key: &str) -> Vec<String> {
    vec![
        format!("RL.CHECK {key} 5 10"),
        format!("RL.CHECK {key} 5 10 COST 0"),
        format!("RL.PEEK {key} 5 10"),
        format!("RL.REFUND {key} 5 10 1"),
        format!("RL.RESET {key}"),
        format!("CL.THROTTLE {key} 4 1 1"),
        format!("RL.CHECKALL 1 {key} 5 10 1 5"),
    ]
}

#[test]
fn wrong_type_keys_get_wrongtype_and_survive() {
    let server = RedisServer::start();
    let mut con = server.client();
    let _: () = redis::cmd("RPUSH").arg(&["list", "a", "b"]).query(&mut con).unwrap();
    let _: () = redis::cmd("HSET").arg(&["hash", "f", "v"]).query(&mut con).unwrap();
    for key in ["list", "hash"] {
        for line in every_command_on(key) {
            let error = error_of(&mut con, &words(&line));
            assert!(error.starts_with("WRONGTYPE"), "{line}: {error}");
        }
    }
    let len: i64 = redis::cmd("LLEN").arg("list").query(&mut con).unwrap();
    assert_eq!(len, 2);
    let field: String = redis::cmd("HGET").arg(&["hash", "f"]).query(&mut con).unwrap();
    assert_eq!(field, "v");
}

#[test]
fn strings_that_are_not_limiter_state_are_refused_not_overwritten() {
    let server = RedisServer::start();
    let mut con = server.client();
    // Small integers are application counters (`INCR views`), not TATs: never taken over.
    let foreign: &[&[u8]] =
        &[b"hello", b"", b"-5", b"0", b"2", b"12abc", b"1.5", b"99999999999999999999", b"1+4/3", b"\xff\x00"];
    for (i, value) in foreign.iter().enumerate() {
        let key = format!("foreign:{i}");
        let _: () = redis::cmd("SET").arg(&key).arg(*value).query(&mut con).unwrap();
        for line in every_command_on(&key) {
            let error = error_of(&mut con, &words(&line));
            assert!(error.contains("not rate-limiter state"), "{line}: {error}");
        }
        let stored: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
        assert_eq!(stored, *value, "value of {key} untouched");
    }
}

#[test]
fn checkall_error_on_one_key_charges_no_key() {
    let server = RedisServer::start();
    let mut con = server.client();
    let _: () = redis::cmd("SET").arg(&["{o}:bad", "hello"]).query(&mut con).unwrap();
    let error = error_of(&mut con, &words("RL.CHECKALL 2 {o}:good {o}:bad 5 10 1 5 5 10 1 5"));
    assert!(error.contains("not rate-limiter state"), "{error}");
    let exists: i64 = redis::cmd("EXISTS").arg("{o}:good").query(&mut con).unwrap();
    assert_eq!(exists, 0, "the good key was not charged");
}

#[test]
fn stored_state_far_in_the_future_is_handled_without_overflow() {
    let server = RedisServer::start();
    let mut con = server.client();
    // A TAT at i64::MAX nanoseconds (year 2262): valid state, a long-empty bucket.
    let _: () = redis::cmd("SET").arg(&["future", "9223372036854775807"]).query(&mut con).unwrap();
    let reply = rl_check(&mut con, &["future", "5", "10"]);
    assert_eq!((reply.allowed, reply.remaining), (false, 0), "{reply:?}");
    assert!(reply.retry_after_ms.is_some_and(|ms| ms > 0) && reply.reset_after_ms > 0, "{reply:?}");
    // A refund that cannot fill the bucket writes a state that still fits.
    let refund = rl_refund(&mut con, &["future", "5", "10", "1"]);
    assert_eq!(refund.remaining, 0);
    // Extreme but valid parameters: a trillion tokens per second.
    let fast = rl_check(&mut con, &["fast", "9223372036854775807", "1", "COST", "9223372036854775807"]);
    assert!(fast.allowed);
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn a_panic_inside_a_handler_becomes_an_error_reply() {
    // The module registers RL.DEBUG only when loaded with the debug-commands argument.
    let server = RedisServer::builder().module_args("debug-commands").start();
    let mut con = server.client();
    let error = error_of(&mut con, &words("RL.DEBUG PANIC"));
    assert!(error.contains("internal error"), "{error}");
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG", "the server survived the panic");
    assert!(rl_check(&mut con, &["after", "5", "10"]).allowed, "and keeps serving");

    let plain = RedisServer::start();
    let mut con = plain.client();
    let error = error_of(&mut con, &words("RL.DEBUG PANIC"));
    assert!(error.contains("unknown command"), "not registered by default: {error}");
}

#[test]
fn an_unknown_module_argument_and_a_second_load_are_refused_and_the_log_says_why() {
    let server = RedisServer::builder().without_module().arg("enable-module-command", "yes").start();
    let mut con = server.client();
    let module = testkit::module_path();
    let load = |con: &mut Connection, args: &[&str]| -> redis::RedisResult<()> {
        redis::cmd("MODULE").arg("LOAD").arg(module.to_str().unwrap()).arg(args).query(con)
    };
    let typo = load(&mut con, &["debug-command"]).unwrap_err();
    assert!(typo.to_string().contains("Error loading the extension"), "a typo is not ignored: {typo}");
    assert!(server.log_tail().contains("unknown module argument 'debug-command'"), "{}", server.log_tail());
    load(&mut con, &["DEBUG-COMMANDS"]).unwrap();
    assert!(error_of(&mut con, &words("RL.DEBUG PANIC")).contains("internal error"), "loaded with its argument");
    let second = load(&mut con, &[]).unwrap_err();
    assert!(second.to_string().contains("Error loading the extension"), "a second load is refused: {second}");
    assert!(server.log_tail().contains("a module named ratelimit is loaded already"), "{}", server.log_tail());
    assert!(rl_check(&mut con, &["k", "5", "10"]).allowed, "the first load still serves");
}

/// One-megabyte arguments in every position of every command: a clear error or an ordinary
/// answer, a short error text, the server alive with its INFO intact, and only the keys the
/// call named (a 1 MB key is a key like any other) in the keyspace.
#[test]
fn megabyte_arguments_in_every_position_are_answered_and_change_nothing_else() {
    let server = RedisServer::start();
    let mut con = server.client();
    let _: () = redis::cmd("SET").arg("other").arg("untouched").query(&mut con).unwrap();
    let big = vec![b'7'; 1 << 20];
    let junk = vec![0xfe_u8; 1 << 20];
    let lines: Vec<Vec<&[u8]>> = vec![
        vec![b"RL.CHECK", b"k", &big, b"60"],
        vec![b"RL.CHECK", b"k", b"10", &big],
        vec![b"RL.CHECK", b"k", b"10", b"60", b"COST", &big],
        vec![b"RL.CHECK", b"k", b"10", b"60", &junk, b"1"],
        vec![b"RL.PEEK", b"k", b"10", b"60", b"BURST", &junk],
        vec![b"RL.REFUND", b"k", b"10", b"60", &big],
        vec![b"CL.THROTTLE", b"k", &big, b"1", b"1"],
        vec![b"RL.CHECKALL", &big, b"k", b"1", b"1", b"1", b"1"],
        vec![b"RL.ACQUIRE", b"k", b"1", b"1000", b"ID", &junk],
        vec![b"RL.RENEW", b"k", &junk, &big],
    ];
    for line in &lines {
        let text = error_of(&mut con, line);
        assert!(text.len() < 600, "a short error, not an echo of the megabyte: {} bytes: {text}", text.len());
        assert!(text.starts_with("ERR"), "{text}");
    }
    // A megabyte key is a key: limited like any other.
    let reply: Value = redis::cmd("RL.CHECK").arg(&big[..]).arg(10).arg(60).query(&mut con).unwrap();
    assert!(matches!(reply, Value::Array(ref rows) if rows.len() == 5), "{reply:?}");
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    let mut names: Vec<usize> = keys.iter().map(Vec::len).collect();
    names.sort_unstable();
    assert_eq!(names, [5, 1 << 20], "only `other` and the megabyte key");
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).unwrap();
    assert!(info.contains("redis_version") || info.contains("valkey_version"), "{info}");
    let other: String = redis::cmd("GET").arg("other").query(&mut con).unwrap();
    assert_eq!(other, "untouched");
}
