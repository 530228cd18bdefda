//! RL.CHECKALL, RL.PEEK, RL.REFUND, RL.RESET, CL.THROTTLE, INFO and ACL on a real server.

use testkit::redis::{self, Connection, Value};
use testkit::RedisServer;

fn ints(con: &mut Connection, name: &str, args: &[&str]) -> Vec<i64> {
    redis::cmd(name).arg(args).query(con).unwrap_or_else(|e| panic!("{name} {args:?}: {e}"))
}

fn state(con: &mut Connection, key: &str) -> (Option<String>, i64) {
    let value: Option<String> = redis::cmd("GET").arg(key).query(con).unwrap();
    let expiry: i64 = redis::cmd("PEXPIRETIME").arg(key).query(con).unwrap();
    (value, expiry)
}

type CheckAllReply = (i64, i64, Vec<Vec<i64>>);

fn checkall(con: &mut Connection, args: &[&str]) -> CheckAllReply {
    redis::cmd("RL.CHECKALL").arg(args).query(con).unwrap_or_else(|e| panic!("RL.CHECKALL {args:?}: {e}"))
}

#[test]
fn checkall_charges_every_limit_when_all_admit() {
    let server = RedisServer::start();
    let mut con = server.client();
    // 10 requests and 1000 tokens per 60 s; this request costs 1 request and 300 tokens.
    let (allowed, retry, rows) =
        checkall(&mut con, &["2", "rl:{org}:rpm", "rl:{org}:tpm", "10", "60", "1", "10", "1000", "60", "300", "1000"]);
    assert_eq!((allowed, retry), (1, 0));
    assert_eq!(rows[0][..3], [1, 9, 0]);
    assert_eq!(rows[0][4], 10);
    assert_eq!(rows[1][..3], [1, 700, 0]);
    assert_eq!(rows[1][4], 1000);
    assert!(state(&mut con, "rl:{org}:rpm").0.is_some() && state(&mut con, "rl:{org}:tpm").0.is_some());
}

#[test]
fn checkall_refused_by_one_limit_charges_none() {
    let server = RedisServer::start();
    let mut con = server.client();
    // Use up most of the token budget first.
    ints(&mut con, "RL.CHECK", &["{o}:tpm", "1000", "60", "COST", "900"]);
    let rpm_before = state(&mut con, "{o}:rpm");
    let tpm_before = state(&mut con, "{o}:tpm");
    let (allowed, retry, rows) =
        checkall(&mut con, &["2", "{o}:rpm", "{o}:tpm", "10", "60", "1", "10", "1000", "60", "300", "1000"]);
    assert_eq!(allowed, 0);
    // 200 tokens short at 60 ms per token: about 12 s.
    assert!((11_900..=12_000).contains(&retry), "{retry}");
    assert_eq!(rows[0], vec![1, 10, 0, 0, 10], "the request limit would admit; untouched state reported");
    assert_eq!(rows[1][..2], [0, 100], "the token limit refuses with 100 left");
    assert_eq!(rows[1][2], retry);
    assert_eq!(state(&mut con, "{o}:rpm"), rpm_before, "first limit untouched");
    assert_eq!(state(&mut con, "{o}:tpm"), tpm_before, "second limit untouched");
    // A cost that can never fit makes the whole call never-admissible.
    let (allowed, retry, _) =
        checkall(&mut con, &["2", "{o}:rpm", "{o}:tpm", "10", "60", "1", "10", "1000", "60", "5000", "1000"]);
    assert_eq!((allowed, retry), (0, -1));
}

#[test]
fn checkall_declares_its_keys() {
    let server = RedisServer::start();
    let mut con = server.client();
    let keys: Vec<String> = redis::cmd("COMMAND")
        .arg(&[
            "GETKEYS",
            "RL.CHECKALL",
            "3",
            "a",
            "b",
            "c",
            "1",
            "1",
            "1",
            "1",
            "1",
            "1",
            "1",
            "1",
            "1",
            "1",
            "1",
            "1",
        ])
        .query(&mut con)
        .unwrap();
    assert_eq!(keys, vec!["a", "b", "c"]);
}

#[test]
fn peek_changes_nothing() {
    let server = RedisServer::start();
    let mut con = server.client();
    // Exactly what RL.CHECK would answer for one token, including its reset time.
    assert_eq!(ints(&mut con, "RL.PEEK", &["p", "5", "1000"]), vec![1, 4, 0, 200_000, 5], "a missing key");
    assert_eq!(state(&mut con, "p").0, None, "peeking a missing key creates nothing");
    ints(&mut con, "RL.CHECK", &["p", "5", "1000", "COST", "5"]);
    let before = state(&mut con, "p");
    let peek = ints(&mut con, "RL.PEEK", &["p", "5", "1000"]);
    assert_eq!(peek[..2], [0, 0]);
    assert!(peek[2] > 199_000 && peek[2] <= 200_000, "{peek:?}");
    assert_eq!(state(&mut con, "p"), before, "value and TTL identical after a peek");
    let burst = ints(&mut con, "RL.PEEK", &["p", "5", "1000", "BURST", "8"]);
    assert_eq!(burst[..2], [1, 2], "a larger burst leaves room: {burst:?}");
    assert_eq!(state(&mut con, "p"), before);
}

#[test]
fn refund_gives_tokens_back_up_to_burst() {
    let server = RedisServer::start();
    let mut con = server.client();
    assert_eq!(ints(&mut con, "RL.REFUND", &["r", "10", "60", "5"]), vec![10, 0], "missing key: a no-op");
    assert_eq!(state(&mut con, "r").0, None);
    ints(&mut con, "RL.CHECK", &["r", "10", "60", "COST", "8"]);
    let reply = ints(&mut con, "RL.REFUND", &["r", "10", "60", "3"]);
    assert_eq!(reply[0], 5);
    assert!((29_900..=30_000).contains(&reply[1]), "5 tokens missing at 6 s each: {reply:?}");
    let before = state(&mut con, "r");
    assert_eq!(ints(&mut con, "RL.REFUND", &["r", "10", "60", "0"])[0], 5, "refunding 0 reports");
    assert_eq!(state(&mut con, "r"), before);
    // Refunding more than was taken fills the bucket and no more: the key goes away.
    assert_eq!(ints(&mut con, "RL.REFUND", &["r", "10", "60", "1000"]), vec![10, 0]);
    assert_eq!(state(&mut con, "r").0, None);
    assert_eq!(ints(&mut con, "RL.CHECK", &["r", "10", "60", "COST", "11"])[..3], [0, 10, -1], "still capped at burst");
}

#[test]
fn reset_forgets_a_limiter() {
    let server = RedisServer::start();
    let mut con = server.client();
    ints(&mut con, "RL.CHECK", &["gone", "1", "100"]);
    assert_eq!(ints(&mut con, "RL.CHECK", &["gone", "1", "100"])[0], 0);
    let removed: i64 = redis::cmd("RL.RESET").arg("gone").query(&mut con).unwrap();
    assert_eq!(removed, 1);
    let again: i64 = redis::cmd("RL.RESET").arg("gone").query(&mut con).unwrap();
    assert_eq!(again, 0);
    assert_eq!(ints(&mut con, "RL.CHECK", &["gone", "1", "100"])[0], 1, "a full bucket again");
}

#[test]
fn throttle_matches_redis_cell_documented_sequence() {
    let server = RedisServer::start();
    let mut con = server.client();
    // redis-cell's table: max_burst 4 (limit 5), 1 token per second, at one instant.
    assert_eq!(ints(&mut con, "CL.THROTTLE", &["cell", "4", "1", "1", "6"]), vec![1, 5, 5, -1, 0], "too large");
    for (remaining, reset) in [(4, 1), (3, 2), (2, 3), (1, 4), (0, 5)] {
        assert_eq!(ints(&mut con, "CL.THROTTLE", &["cell", "4", "1", "1"]), vec![0, 5, remaining, -1, reset]);
    }
    assert_eq!(ints(&mut con, "CL.THROTTLE", &["cell", "4", "1", "1"]), vec![1, 5, 0, 1, 5], "sixth is limited");
    // The same key answers RL.CHECK consistently: same state format.
    let check = ints(&mut con, "RL.CHECK", &["cell", "1", "1", "BURST", "5"]);
    assert_eq!(check[..2], [0, 0]);
    // The common redis-cell example: 15 per 60 s with max_burst 15 → 16 in a row.
    for i in 0..16 {
        let reply = ints(&mut con, "CL.THROTTLE", &["user123", "15", "30", "60"]);
        assert_eq!(reply[..3], [0, 16, 15 - i], "request {i}");
    }
    assert_eq!(ints(&mut con, "CL.THROTTLE", &["user123", "15", "30", "60"])[..4], [1, 16, 0, 2]);
}

#[test]
fn info_counters_move() {
    let server = RedisServer::start();
    let mut con = server.client();
    ints(&mut con, "RL.CHECK", &["i", "2", "100"]);
    ints(&mut con, "RL.CHECK", &["i", "2", "100"]);
    ints(&mut con, "RL.CHECK", &["i", "2", "100"]);
    ints(&mut con, "RL.REFUND", &["i", "2", "100", "1"]);
    let _: i64 = redis::cmd("RL.RESET").arg("i").query(&mut con).unwrap();
    let _: redis::RedisResult<Value> = redis::cmd("RL.CHECK").arg(&["i", "x", "100"]).query(&mut con);
    let info: String = redis::cmd("INFO").arg("ratelimit").query(&mut con).unwrap();
    for field in [
        "ratelimit_calls:6",
        "ratelimit_admitted:2",
        "ratelimit_limited:1",
        "ratelimit_errors:1",
        "ratelimit_refunds:1",
        "ratelimit_resets:1",
    ] {
        assert!(info.lines().any(|l| l.trim() == field), "{field} in {info}");
    }
    let everything: String = redis::cmd("INFO").arg("everything").query(&mut con).unwrap();
    assert!(everything.contains("ratelimit_calls:"), "module section in INFO everything");
}

/// Whether this server can add module ACL categories (Redis 7.4+, Valkey 8+), decided from its
/// version so that a module that fails to add the category on such a server fails the test.
fn server_has_module_acl_categories(con: &mut Connection) -> bool {
    let info: String = redis::cmd("INFO").arg("server").query(con).unwrap();
    if info.contains("server_name:valkey") {
        return true;
    }
    let version = info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap().trim();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap()) >= (7, 4)
}

#[test]
fn acl_user_limited_to_the_rate_limit_commands() {
    let server = RedisServer::start();
    let mut admin = server.client();
    let has_category = server_has_module_acl_categories(&mut admin);
    let rules: Vec<&str> = if has_category {
        vec!["gateway", "on", ">secret", "~rl:*", "+@ratelimit"]
    } else {
        vec![
            "gateway",
            "on",
            ">secret",
            "~rl:*",
            "+rl.check",
            "+rl.checkall",
            "+rl.peek",
            "+rl.refund",
            "+rl.reset",
            "+cl.throttle",
        ]
    };
    let _: () = redis::cmd("ACL").arg("SETUSER").arg(&rules).query(&mut admin).unwrap();
    let url = format!("redis://gateway:secret@127.0.0.1:{}/", server.port());
    let mut gateway = redis::Client::open(url).unwrap().get_connection().unwrap();
    assert_eq!(ints(&mut gateway, "RL.CHECK", &["rl:user", "5", "10"])[0], 1);
    let denied: redis::RedisResult<Option<String>> = redis::cmd("GET").arg("rl:user").query(&mut gateway);
    assert!(denied.is_err(), "the gateway user can run nothing else");
    let other_key: redis::RedisResult<Vec<i64>> =
        redis::cmd("RL.CHECK").arg(&["secret:x", "5", "10"]).query(&mut gateway);
    assert!(other_key.is_err(), "nor touch keys outside its pattern");
    let categories: Vec<String> = redis::cmd("ACL").arg("CAT").query(&mut admin).unwrap();
    assert_eq!(
        categories.iter().any(|c| c == "ratelimit"),
        has_category,
        "the category exists exactly where supported"
    );
    if has_category {
        let commands: Vec<String> = redis::cmd("ACL").arg(&["CAT", "ratelimit"]).query(&mut admin).unwrap();
        let mut commands: Vec<String> = commands.into_iter().map(|c| c.to_lowercase()).collect();
        commands.sort();
        assert_eq!(commands, ["cl.throttle", "rl.check", "rl.checkall", "rl.peek", "rl.refund", "rl.reset"]);
    }
}

#[test]
fn writes_emit_the_keyspace_events_of_the_equivalent_core_commands() {
    let server = RedisServer::builder().arg("notify-keyspace-events", "KEA").start();
    let mut subscriber = server.client();
    subscriber.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.psubscribe("__keyevent@0__:*").unwrap();
    let mut con = server.client();
    let next_event = |pubsub: &mut redis::PubSub| {
        let message = pubsub.get_message().expect("a keyspace event");
        let key: String = message.get_payload().unwrap();
        (message.get_channel_name().trim_start_matches("__keyevent@0__:").to_string(), key)
    };
    ints(&mut con, "RL.CHECK", &["ev", "1", "100"]);
    assert_eq!(next_event(&mut pubsub), ("set".to_string(), "ev".to_string()));
    assert_eq!(next_event(&mut pubsub), ("expire".to_string(), "ev".to_string()));
    // A refusal writes nothing and says nothing; the next event is the reset's.
    ints(&mut con, "RL.CHECK", &["ev", "1", "100"]);
    let _: i64 = redis::cmd("RL.RESET").arg("ev").query(&mut con).unwrap();
    assert_eq!(next_event(&mut pubsub), ("del".to_string(), "ev".to_string()));
}

#[test]
fn key_specs_let_a_read_only_user_peek_but_not_take() {
    let server = RedisServer::start();
    let mut admin = server.client();
    ints(&mut admin, "RL.CHECK", &["rl:w", "1", "100"]);
    let _: () =
        redis::cmd("ACL").arg(&["SETUSER", "dashboard", "on", ">pw", "%R~rl:*", "+@all"]).query(&mut admin).unwrap();
    let url = format!("redis://dashboard:pw@127.0.0.1:{}/", server.port());
    let mut dashboard = redis::Client::open(url).unwrap().get_connection().unwrap();
    assert_eq!(ints(&mut dashboard, "RL.PEEK", &["rl:w", "1", "100"])[..2], [0, 0]);
    for (name, args) in [
        ("RL.CHECK", &["rl:w", "1", "100"][..]),
        ("RL.REFUND", &["rl:w", "1", "100", "1"][..]),
        ("RL.RESET", &["rl:w"][..]),
        ("RL.CHECKALL", &["1", "rl:w", "1", "100", "1", "1"][..]),
    ] {
        let refused: redis::RedisResult<Value> = redis::cmd(name).arg(args).query(&mut dashboard);
        let error = refused.expect_err(name);
        assert_eq!(error.code(), Some("NOPERM"), "{name}: {error}");
    }
    let info: Value = redis::cmd("COMMAND").arg(&["INFO", "RL.CHECKALL"]).query(&mut admin).unwrap();
    assert!(format!("{info:?}").contains("keynum"), "RL.CHECKALL declares its keys after numkeys: {info:?}");
}
