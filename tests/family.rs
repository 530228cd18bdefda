//! RL.CHECKALL, RL.PEEK, RL.REFUND, RL.RESET, CL.THROTTLE, INFO and ACL on a real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use testkit::redis::{self, Connection, Value};
use testkit::{
    cl_throttle, is_valkey, redis_version, rl_check, rl_checkall, rl_peek, rl_refund, rl_reset, CheckReply,
    RedisServer, RefundReply, Stored, ThrottleReply,
};

#[test]
fn checkall_charges_every_limit_when_all_admit() {
    let server = RedisServer::start();
    let mut con = server.client();
    // 10 requests and 1000 tokens per 60 s; this request costs 1 request and 300 tokens.
    let reply = rl_checkall(
        &mut con,
        &["2", "rl:{org}:rpm", "rl:{org}:tpm", "10", "60", "1", "10", "1000", "60", "300", "1000"],
    );
    assert_eq!((reply.allowed, reply.retry_after_ms), (true, Some(0)));
    let rows = &reply.limits;
    assert_eq!((rows[0].allowed, rows[0].remaining, rows[0].retry_after_ms), (true, 9, Some(0)));
    assert_eq!(rows[0].burst, 10);
    assert_eq!((rows[1].allowed, rows[1].remaining, rows[1].retry_after_ms), (true, 700, Some(0)));
    assert_eq!(rows[1].burst, 1000);
    assert!(
        Stored::of(&mut con, "rl:{org}:rpm").value.is_some() && Stored::of(&mut con, "rl:{org}:tpm").value.is_some()
    );
}

#[test]
fn checkall_refused_by_one_limit_charges_none() {
    let server = RedisServer::start();
    let mut con = server.client();
    // Use up most of the token budget first.
    rl_check(&mut con, &["{o}:tpm", "1000", "60", "COST", "900"]);
    let rpm_before = Stored::of(&mut con, "{o}:rpm");
    let tpm_before = Stored::of(&mut con, "{o}:tpm");
    let reply = rl_checkall(&mut con, &["2", "{o}:rpm", "{o}:tpm", "10", "60", "1", "10", "1000", "60", "300", "1000"]);
    assert!(!reply.allowed);
    // 200 tokens short at 60 ms per token: about 12 s.
    assert!(matches!(reply.retry_after_ms, Some(11_900..=12_000)), "{reply:?}");
    let rows = &reply.limits;
    let untouched = CheckReply { allowed: true, remaining: 10, retry_after_ms: Some(0), reset_after_ms: 0, burst: 10 };
    assert_eq!(rows[0], untouched, "the request limit would admit; untouched state reported");
    assert_eq!((rows[1].allowed, rows[1].remaining), (false, 100), "the token limit refuses with 100 left");
    assert_eq!(rows[1].retry_after_ms, reply.retry_after_ms);
    assert_eq!(Stored::of(&mut con, "{o}:rpm"), rpm_before, "first limit untouched");
    assert_eq!(Stored::of(&mut con, "{o}:tpm"), tpm_before, "second limit untouched");
    // A cost that can never fit makes the whole call never-admissible.
    let never =
        rl_checkall(&mut con, &["2", "{o}:rpm", "{o}:tpm", "10", "60", "1", "10", "1000", "60", "5000", "1000"]);
    assert_eq!((never.allowed, never.retry_after_ms), (false, None));
}

#[test]
fn checkall_specs_with_a_fifth_integer_keep_tokens_in_reserve() {
    let server = RedisServer::start();
    let mut con = server.client();
    rl_check(&mut con, &["{k}:tpm", "1000", "600", "COST", "600"]);
    let before = Stored::of(&mut con, "{k}:tpm");
    // 400 tokens left; taking 300 while keeping 200 is refused, keeping 100 is admitted.
    let refused = rl_checkall(
        &mut con,
        &["2", "{k}:rpm", "{k}:tpm", "10", "600", "1", "10", "0", "1000", "600", "300", "1000", "200"],
    );
    assert!(!refused.allowed, "{refused:?}");
    // 100 tokens short at 600 ms per token: about 60 s.
    assert!(matches!(refused.retry_after_ms, Some(59_000..=60_000)), "{refused:?}");
    assert_eq!(Stored::of(&mut con, "{k}:tpm"), before, "nothing charged");
    let admitted = rl_checkall(
        &mut con,
        &["2", "{k}:rpm", "{k}:tpm", "10", "600", "1", "10", "0", "1000", "600", "300", "1000", "100"],
    );
    assert!(admitted.allowed, "{admitted:?}");
    assert_eq!(admitted.limits[1].remaining, 100, "{admitted:?}");
    let keys: Vec<String> = redis::cmd("COMMAND")
        .arg(&["GETKEYS", "RL.CHECKALL", "1", "only", "1", "1", "1", "1", "0"])
        .query(&mut con)
        .unwrap();
    assert_eq!(keys, ["only"], "a five-integer spec declares its key too");
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
    let fresh = CheckReply { allowed: true, remaining: 4, retry_after_ms: Some(0), reset_after_ms: 200_000, burst: 5 };
    assert_eq!(rl_peek(&mut con, &["p", "5", "1000"]), fresh, "a missing key");
    assert_eq!(Stored::of(&mut con, "p").value, None, "peeking a missing key creates nothing");
    rl_check(&mut con, &["p", "5", "1000", "COST", "5"]);
    let before = Stored::of(&mut con, "p");
    let peek = rl_peek(&mut con, &["p", "5", "1000"]);
    assert_eq!((peek.allowed, peek.remaining), (false, 0));
    assert!(matches!(peek.retry_after_ms, Some(199_001..=200_000)), "{peek:?}");
    assert_eq!(Stored::of(&mut con, "p"), before, "value and TTL identical after a peek");
    let burst = rl_peek(&mut con, &["p", "5", "1000", "BURST", "8"]);
    assert_eq!((burst.allowed, burst.remaining), (true, 2), "a larger burst leaves room: {burst:?}");
    assert_eq!(Stored::of(&mut con, "p"), before);
}

#[test]
fn refund_gives_tokens_back_up_to_burst() {
    let server = RedisServer::start();
    let mut con = server.client();
    let full = RefundReply { remaining: 10, reset_after_ms: 0 };
    assert_eq!(rl_refund(&mut con, &["r", "10", "60", "5"]), full, "missing key: a no-op");
    assert_eq!(Stored::of(&mut con, "r").value, None);
    rl_check(&mut con, &["r", "10", "60", "COST", "8"]);
    let reply = rl_refund(&mut con, &["r", "10", "60", "3"]);
    assert_eq!(reply.remaining, 5);
    assert!((29_900..=30_000).contains(&reply.reset_after_ms), "5 tokens missing at 6 s each: {reply:?}");
    let before = Stored::of(&mut con, "r");
    assert_eq!(rl_refund(&mut con, &["r", "10", "60", "0"]).remaining, 5, "refunding 0 reports");
    assert_eq!(Stored::of(&mut con, "r"), before);
    // Refunding more than was taken fills the bucket and no more: the key goes away.
    assert_eq!(rl_refund(&mut con, &["r", "10", "60", "1000"]), full);
    assert_eq!(Stored::of(&mut con, "r").value, None);
    let capped = rl_check(&mut con, &["r", "10", "60", "COST", "11"]);
    assert_eq!((capped.allowed, capped.remaining, capped.retry_after_ms), (false, 10, None), "still capped at burst");
}

#[test]
fn reset_forgets_a_limiter() {
    let server = RedisServer::start();
    let mut con = server.client();
    rl_check(&mut con, &["gone", "1", "100"]);
    assert!(!rl_check(&mut con, &["gone", "1", "100"]).allowed);
    assert_eq!(rl_reset(&mut con, "gone"), 1);
    assert_eq!(rl_reset(&mut con, "gone"), 0);
    assert!(rl_check(&mut con, &["gone", "1", "100"]).allowed, "a full bucket again");
}

#[test]
fn throttle_matches_redis_cell_documented_sequence() {
    let server = RedisServer::start();
    let mut con = server.client();
    // redis-cell's table: max_burst 4 (limit 5), 1 token per second, at one instant.
    // limit 5 in every row; a retry time only when limited and the quantity can ever pass.
    let cell = |limited, remaining, retry_after_secs, reset_after_secs| ThrottleReply {
        limited,
        limit: 5,
        remaining,
        retry_after_secs,
        reset_after_secs,
    };
    assert_eq!(cl_throttle(&mut con, &["cell", "4", "1", "1", "6"]), cell(true, 5, None, 0), "too large");
    for (remaining, reset) in [(4, 1), (3, 2), (2, 3), (1, 4), (0, 5)] {
        assert_eq!(cl_throttle(&mut con, &["cell", "4", "1", "1"]), cell(false, remaining, None, reset));
    }
    assert_eq!(cl_throttle(&mut con, &["cell", "4", "1", "1"]), cell(true, 0, Some(1), 5), "sixth is limited");
    // The same key answers RL.CHECK consistently: same state format.
    let check = rl_check(&mut con, &["cell", "1", "1", "BURST", "5"]);
    assert_eq!((check.allowed, check.remaining), (false, 0));
    // The common redis-cell example: 15 per 60 s with max_burst 15 → 16 in a row.
    for i in 0..16 {
        let reply = cl_throttle(&mut con, &["user123", "15", "30", "60"]);
        assert_eq!((reply.limited, reply.limit, reply.remaining), (false, 16, 15 - i), "request {i}");
    }
    let last = cl_throttle(&mut con, &["user123", "15", "30", "60"]);
    assert_eq!((last.limited, last.limit, last.remaining, last.retry_after_secs), (true, 16, 0, Some(2)));
}

#[test]
fn info_counters_move() {
    let server = RedisServer::start();
    let mut con = server.client();
    rl_check(&mut con, &["i", "2", "100"]);
    rl_check(&mut con, &["i", "2", "100"]);
    rl_check(&mut con, &["i", "2", "100"]);
    rl_refund(&mut con, &["i", "2", "100", "1"]);
    rl_reset(&mut con, "i");
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
    is_valkey(con) || redis_version(con) >= (7, 4)
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
    assert!(rl_check(&mut gateway, &["rl:user", "5", "10"]).allowed);
    let denied: redis::RedisResult<Option<String>> = redis::cmd("GET").arg("rl:user").query(&mut gateway);
    let denied = denied.unwrap_err();
    assert_eq!(denied.code(), Some("NOPERM"), "the gateway user can run nothing else: {denied}");
    let other_key: redis::RedisResult<CheckReply> =
        redis::cmd("RL.CHECK").arg(&["secret:x", "5", "10"]).query(&mut gateway);
    let other_key = other_key.unwrap_err();
    assert_eq!(other_key.code(), Some("NOPERM"), "nor touch keys outside its pattern: {other_key}");
    assert!(other_key.to_string().contains("key"), "the denial names the key as the reason: {other_key}");
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
        assert_eq!(
            commands,
            [
                "cl.throttle",
                "rl.acquire",
                "rl.check",
                "rl.checkall",
                "rl.peek",
                "rl.refund",
                "rl.release",
                "rl.renew",
                "rl.reset"
            ]
        );
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
    rl_check(&mut con, &["ev", "1", "100"]);
    assert_eq!(next_event(&mut pubsub), ("set".to_string(), "ev".to_string()));
    assert_eq!(next_event(&mut pubsub), ("expire".to_string(), "ev".to_string()));
    // A refusal writes nothing and says nothing; the next event is the reset's.
    rl_check(&mut con, &["ev", "1", "100"]);
    rl_reset(&mut con, "ev");
    assert_eq!(next_event(&mut pubsub), ("del".to_string(), "ev".to_string()));
}

#[test]
fn key_specs_let_a_read_only_user_peek_but_not_take() {
    let server = RedisServer::start();
    let mut admin = server.client();
    rl_check(&mut admin, &["rl:w", "1", "100"]);
    let _: () =
        redis::cmd("ACL").arg(&["SETUSER", "dashboard", "on", ">pw", "%R~rl:*", "+@all"]).query(&mut admin).unwrap();
    let url = format!("redis://dashboard:pw@127.0.0.1:{}/", server.port());
    let mut dashboard = redis::Client::open(url).unwrap().get_connection().unwrap();
    let peek = rl_peek(&mut dashboard, &["rl:w", "1", "100"]);
    assert_eq!((peek.allowed, peek.remaining), (false, 0));
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
