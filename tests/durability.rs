//! Replicas, promotion and persistence: the limiter's state survives everything an operator
//! does to a server, exactly (same stored value, same absolute expiry), so neither a restart
//! nor a failover hands a client a fresh burst or charges it twice.
//!
//! All quotas here use long windows (every stored TAT expires minutes after it was written),
//! so no key can expire while a test compares state before and after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testkit::redis::{self, Value};
use testkit::{
    check, info_field, snapshot, tokens, wait_for_replicas, wait_until, CheckAllReply, CheckReply, RedisServer,
    RefundReply, Stored, ThrottleReply,
};

/// The window of every quota in the workload: long enough that nothing expires mid-test.
const WINDOW: u64 = 600;

/// What a workload did, to prove it exercised every path.
#[derive(Debug, Default)]
struct Tally {
    admitted: u64,
    limited: u64,
    refunds: u64,
    resets: u64,
    throttled: u64,
    checkalls: u64,
}

/// A small deterministic pseudo-random sequence (no extra dependency needed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `calls` commands over 40 limiter keys, 10 CL.THROTTLE keys and 10 RL.CHECKALL pairs:
/// admitted and limited checks, COST, RL.REFUND, RL.RESET, CL.THROTTLE and RL.CHECKALL.
/// Several limits have emission intervals that are not whole nanoseconds (`600 s / 7`), so
/// fractional state is stored and replicated too.
fn mixed_workload(con: &mut redis::Connection, seed: u64, calls: usize) -> Tally {
    let mut rng = Lcg(seed);
    let mut tally = Tally::default();
    let mut done = 0;
    while done < calls {
        let batch = (calls - done).min(500);
        let mut pipe = redis::pipe();
        let mut kinds = Vec::with_capacity(batch);
        for _ in 0..batch {
            let i = rng.below(40);
            let key = format!("rl:{i}");
            let limit = 3 + i % 9;
            let burst = limit + i % 3;
            let roll = rng.below(100);
            let kind = match roll {
                0..=64 => {
                    let cost = if roll < 50 { 1 } else { 1 + rng.below(4) };
                    pipe.cmd("RL.CHECK").arg(&key).arg(limit).arg(WINDOW).arg("COST").arg(cost).arg("BURST").arg(burst);
                    "check"
                }
                65..=74 => {
                    pipe.cmd("RL.REFUND")
                        .arg(&key)
                        .arg(limit)
                        .arg(WINDOW)
                        .arg(1 + rng.below(3))
                        .arg("BURST")
                        .arg(burst);
                    "refund"
                }
                75..=77 => {
                    pipe.cmd("RL.RESET").arg(&key);
                    "reset"
                }
                78..=89 => {
                    let key = format!("cl:{}", rng.below(10));
                    pipe.cmd("CL.THROTTLE").arg(key).arg(4).arg(7).arg(WINDOW).arg(1 + rng.below(2));
                    "throttle"
                }
                _ => {
                    let pair = rng.below(10);
                    pipe.cmd("RL.CHECKALL")
                        .arg(2)
                        .arg(format!("rpm:{pair}"))
                        .arg(format!("tpm:{pair}"))
                        .arg(&[10, WINDOW, 1, 10])
                        .arg(&[1000, WINDOW, 1 + rng.below(300), 1000]);
                    "checkall"
                }
            };
            kinds.push(kind);
        }
        let replies: Vec<Value> = pipe.query(con).unwrap();
        for (kind, reply) in kinds.iter().zip(replies) {
            fn decode<T: redis::FromRedisValue>(kind: &str, reply: Value) -> T {
                redis::from_redis_value(reply).unwrap_or_else(|e| panic!("{kind}: unexpected reply: {e}"))
            }
            let admitted = match *kind {
                "check" => Some(decode::<CheckReply>(kind, reply).allowed),
                "checkall" => {
                    tally.checkalls += 1;
                    Some(decode::<CheckAllReply>(kind, reply).allowed)
                }
                "throttle" => {
                    tally.throttled += 1;
                    Some(!decode::<ThrottleReply>(kind, reply).limited)
                }
                "refund" => {
                    decode::<RefundReply>(kind, reply);
                    tally.refunds += 1;
                    None
                }
                "reset" => {
                    tally.resets += decode::<u64>(kind, reply);
                    None
                }
                _ => unreachable!(),
            };
            match admitted {
                Some(true) => tally.admitted += 1,
                Some(false) => tally.limited += 1,
                None => {}
            }
        }
        done += batch;
    }
    assert!(
        tally.admitted > 100 && tally.limited > 100 && tally.refunds > 0 && tally.resets > 0 && tally.checkalls > 0,
        "the workload must exercise every path: {tally:?}"
    );
    tally
}

/// Two probe clients on top of a workload: `spent` used its whole burst (and is refused),
/// `partial` used 3 of its 10 tokens.
fn spend_probes(con: &mut redis::Connection) {
    let decision = |reply: CheckReply| (reply.allowed, reply.remaining);
    for n in 0..5 {
        assert_eq!(decision(check(con, "spent", 5, 3600, 1, 5)), (true, 4 - n));
    }
    assert_eq!(decision(check(con, "spent", 5, 3600, 1, 5)), (false, 0));
    assert_eq!(decision(check(con, "partial", 10, 3600, 3, 10)), (true, 7));
}

/// The probes are exactly where [`spend_probes`] left them: no token came back, none was
/// taken twice.
fn assert_probes_unchanged(con: &mut redis::Connection, when: &str) {
    let spent = check(con, "spent", 5, 3600, 1, 5);
    assert_eq!((spent.allowed, spent.remaining), (false, 0), "{when}: a client that used its burst must stay limited");
    assert!(spent.retry_after_ms.is_some_and(|ms| ms > 0), "{when}: retry_after {:?}", spent.retry_after_ms);
    assert_eq!(tokens(con, "partial", 10, 3600, 10), 7, "{when}: tokens of a partly used limiter");
}

fn assert_all_state(snapshot: &BTreeMap<String, Stored>) {
    assert!(snapshot.len() > 40, "too few keys to prove anything: {}", snapshot.len());
    for (key, stored) in snapshot {
        let value = stored.value.as_deref().unwrap_or_else(|| panic!("{key} vanished"));
        assert!(
            value.bytes().all(|b| b.is_ascii_digit() || b == b'+' || b == b'/'),
            "{key} = {value:?} is not limiter state"
        );
        assert!(stored.pexpiretime > 0, "{key} has no absolute expiry: {}", stored.pexpiretime);
    }
}

#[test]
fn replica_holds_the_same_values_and_expiries_after_a_mixed_workload() {
    let primary = RedisServer::start();
    let replica = RedisServer::builder().start_replica_of(&primary);
    let mut con = primary.client();
    let tally = mixed_workload(&mut con, 1, 3000);
    spend_probes(&mut con);
    wait_for_replicas(&mut con, 1);

    let on_primary = snapshot(&mut con);
    assert_all_state(&on_primary);
    assert!(on_primary.values().any(|s| s.value.as_deref().is_some_and(|v| v.contains('/'))), "no fractional TAT");
    assert_eq!(snapshot(&mut replica.client()), on_primary, "after {tally:?}");
}

#[test]
fn replica_refuses_checks_answers_peeks_and_after_replicaof_no_one_keeps_a_spent_client_limited() {
    let primary = RedisServer::start();
    let replica = RedisServer::builder().start_replica_of(&primary);
    let mut con = primary.client();
    mixed_workload(&mut con, 2, 1000);
    spend_probes(&mut con);
    wait_for_replicas(&mut con, 1);
    let before = snapshot(&mut con);

    // A read-only replica refuses the commands that write, and answers RL.PEEK.
    let mut on_replica = replica.client();
    let err = redis::cmd("RL.CHECK").arg("spent").arg(5).arg(3600).query::<Value>(&mut on_replica).unwrap_err();
    assert_eq!(err.code(), Some("READONLY"), "{err}");
    assert_eq!(tokens(&mut on_replica, "partial", 10, 3600, 10), 7);

    // Promote the replica, as an operator (or Sentinel) would after losing the primary.
    drop(primary);
    let ok: String = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut on_replica).unwrap();
    assert_eq!(ok, "OK");
    assert_eq!(snapshot(&mut on_replica), before);
    assert_probes_unchanged(&mut on_replica, "after REPLICAOF NO ONE");
    // And it limits as the primary did: two more tokens from `partial` leave five.
    let partial = check(&mut on_replica, "partial", 10, 3600, 2, 10);
    assert_eq!((partial.allowed, partial.remaining), (true, 5));
}

/// Kills the server as a crash would (SIGKILL, nothing saved on the way out) and starts it
/// again on the same directory and config.
fn crash_and_restart(server: &mut RedisServer) {
    server.kill();
    server.respawn();
}

#[test]
fn appendonly_restart_restores_the_state_exactly() {
    let mut server = RedisServer::builder().arg("appendonly", "yes").arg("appendfsync", "always").start();
    let mut con = server.client();
    mixed_workload(&mut con, 3, 2000);
    spend_probes(&mut con);
    let before = snapshot(&mut con);
    assert_all_state(&before);

    // The log holds the effects (`SET key value PXAT ms`), never the commands: replaying a
    // command would recompute with the clock of the replay.
    let aof = server.aof_files(".incr.aof");
    assert!(aof.contains("PXAT"), "the AOF has no absolute expiries");
    for command in ["RL.CHECK", "RL.CHECKALL", "RL.REFUND", "RL.RESET", "CL.THROTTLE"] {
        assert!(!aof.to_ascii_uppercase().contains(command), "{command} was logged verbatim");
    }

    crash_and_restart(&mut server);
    let mut con = server.client();
    assert_eq!(snapshot(&mut con), before, "after a crash, replayed from the AOF");
    assert!(!server.dir().join("dump.rdb").exists(), "the state must come from the AOF alone");
    assert_probes_unchanged(&mut con, "after replaying the AOF");

    server.restart();
    let mut con = server.client();
    assert_eq!(snapshot(&mut con), before, "after SHUTDOWN and restart");
    assert_probes_unchanged(&mut con, "after a graceful restart");
}

#[test]
fn rdb_save_and_restart_restores_the_state_exactly() {
    let mut server = RedisServer::start();
    let mut con = server.client();
    mixed_workload(&mut con, 4, 2000);
    spend_probes(&mut con);
    let before = snapshot(&mut con);
    let ok: String = redis::cmd("SAVE").query(&mut con).unwrap();
    assert_eq!(ok, "OK");
    assert!(server.dir().join("dump.rdb").exists());

    crash_and_restart(&mut server);
    let mut con = server.client();
    assert_eq!(snapshot(&mut con), before, "after loading the RDB");
    assert_probes_unchanged(&mut con, "after loading the RDB");
}

#[test]
fn bgrewriteaof_then_restart_restores_the_state_exactly() {
    // Without the RDB preamble the rewritten log is plain commands (`SET` and `PEXPIREAT`),
    // the form an older or differently configured server writes.
    let mut server = RedisServer::builder()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("aof-use-rdb-preamble", "no")
        .start();
    let mut con = server.client();
    mixed_workload(&mut con, 5, 1500);
    let rewrites = |con: &mut redis::Connection| -> u64 {
        info_field(con, "persistence", "aof_rewrites").and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let before_rewrite = rewrites(&mut con);
    let _: Value = redis::cmd("BGREWRITEAOF").query(&mut con).unwrap();
    let done = wait_until(Instant::now() + Duration::from_secs(30), || {
        rewrites(&mut con) > before_rewrite
            && info_field(&mut con, "persistence", "aof_rewrite_in_progress").as_deref() == Some("0")
            && info_field(&mut con, "persistence", "aof_rewrite_scheduled").as_deref() == Some("0")
    });
    assert!(done, "BGREWRITEAOF did not finish\n{}", server.log_tail());
    assert_eq!(info_field(&mut con, "persistence", "aof_last_bgrewrite_status").as_deref(), Some("ok"));
    let base = server.aof_files(".base.aof");
    assert!(base.contains("PEXPIREAT"), "the rewritten AOF keeps every expiry");
    assert!(!base.to_ascii_uppercase().contains("RL.CHECK"));

    // More traffic after the rewrite lands in the new incremental file on top of the base.
    mixed_workload(&mut con, 6, 1500);
    spend_probes(&mut con);
    let before = snapshot(&mut con);

    crash_and_restart(&mut server);
    let mut con = server.client();
    assert_eq!(snapshot(&mut con), before, "after loading the rewritten AOF");
    assert_probes_unchanged(&mut con, "after loading the rewritten AOF");
}
