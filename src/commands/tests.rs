//! The command bodies without a server: each runs against an in-memory store with the clock
//! as a constant, and the tests check the reply, what the store holds afterwards, and the
//! effects it would have replicated. The math itself is tested in `gcra`; the same commands
//! against real servers in `tests/`.

use super::{acquire, check, checkall, peek, refund, release, renew, reset, throttle};
use crate::error::Error;
use crate::gcra::Tat;
use crate::reply::{AcquireReply, CheckReply, Reply, ThrottleReply};
use crate::store::memory::Value;
use crate::store::memory::{Effect, Line, Memory};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
/// 2025-11-29T18:40:00Z.
const T0: u64 = 1_764_441_600 * SEC;

type Body = fn(&mut Memory, &Line, u64) -> Result<Reply, Error>;

/// Runs one command line against `db` with the clock at `now`.
fn call(db: &mut Memory, body: Body, words: &str, now: u64) -> Result<Reply, Error> {
    body(db, &Line::new(words), now)
}

/// Like [`call`], for a line that must succeed.
fn ok(db: &mut Memory, body: Body, words: &str, now: u64) -> Reply {
    call(db, body, words, now).unwrap_or_else(|e| panic!("{words}: {e}"))
}

fn row(allowed: bool, remaining: i64, retry_after_ms: i64, reset_after_ms: i64, burst: i64) -> CheckReply {
    CheckReply { allowed, remaining, retry_after_ms, reset_after_ms, burst }
}

/// The effect of storing a whole-nanosecond TAT: `SET key <nanos> PXAT <first ms at or after>`.
fn set(key: &str, tat_nanos: u64) -> Effect {
    Effect::Set { key: key.into(), value: tat_nanos.to_string(), pxat_ms: tat_nanos.div_ceil(MS) }
}

fn del(key: &str) -> Effect {
    Effect::Del { key: key.into() }
}

/// A store holding application values: a string at `hello`, an `INCR` counter at `counter`
/// and a list at `list`.
fn with_foreign_values() -> Memory {
    let mut db = Memory::new();
    db.set_string("hello", b"hello");
    db.set_string("counter", b"42");
    db.set_other("list");
    db
}

/// Every way a key can hold something that is not limiter state, and the error for it; the
/// value must be left as it was.
fn assert_foreign_values_refused(body: Body, line_for: impl Fn(&str) -> String) {
    for (key, want) in
        [("hello", Error::NotLimiterState), ("counter", Error::NotLimiterState), ("list", Error::WrongType)]
    {
        let mut db = with_foreign_values();
        let before = db.value(key);
        let line = line_for(key);
        assert_eq!(call(&mut db, body, &line, T0), Err(want), "{line}");
        assert_eq!(db.value(key), before, "{line}: the value is left unchanged");
        assert_eq!(db.take_effects(), [], "{line}: nothing is replicated");
    }
}

// ---------------------------------------------------------------------------------------
// RL.CHECK, RL.PEEK, RL.RESET, CL.THROTTLE
// ---------------------------------------------------------------------------------------

#[test]
fn an_admitted_check_stores_the_new_tat_with_its_expiry_and_replicates_it() {
    let mut db = Memory::new();
    // 5 per 10 s: one token every 2 s.
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10", T0), Reply::Check(row(true, 4, 0, 2000, 5)));
    assert_eq!(db.take_effects(), [set("k", T0 + 2 * SEC)]);
    assert_eq!(db.tat("k"), Some(Tat::from_nanos(T0 + 2 * SEC)));
}

#[test]
fn a_refused_check_and_a_cost_zero_check_write_nothing() {
    let mut db = Memory::new();
    ok(&mut db, check::run, "RL.CHECK k 5 10 COST 5", T0);
    assert_eq!(db.take_effects(), [set("k", T0 + 10 * SEC)]);
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10", T0), Reply::Check(row(false, 0, 2000, 10_000, 5)));
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10 COST 6", T0), Reply::Check(row(false, 0, -1, 10_000, 5)));
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10 COST 0", T0), Reply::Check(row(true, 0, 0, 10_000, 5)));
    assert_eq!(db.take_effects(), []);
    assert_eq!(db.tat("k"), Some(Tat::from_nanos(T0 + 10 * SEC)));
}

#[test]
fn check_refuses_foreign_values_and_bad_lines_without_writing() {
    assert_foreign_values_refused(check::run, |key| format!("RL.CHECK {key} 5 10"));
    let mut db = Memory::new();
    assert_eq!(call(&mut db, check::run, "RL.CHECK k 0 10", T0), Err(Error::NotPositive { name: "limit" }));
    assert_eq!((db.value("k"), db.take_effects()), (None, vec![]));
}

#[test]
fn a_forced_check_charges_into_debt_and_replicates_the_new_tat() {
    let mut db = Memory::new();
    // 5 per 10 s: a token every 2 s, tolerance 10 s. 4 paid, 3 owed: TAT 14 s ahead.
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10 COST 7 FORCE", T0), Reply::Check(row(true, 0, 0, 14_000, 5)));
    assert_eq!(db.take_effects(), [set("k", T0 + 14 * SEC)]);
    // The next request waits until the debt is repaid and its own token refilled.
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10", T0), Reply::Check(row(false, 0, 6000, 14_000, 5)));
    // More than a burst beyond: the debt is capped at one burst (TAT at most 20 s ahead).
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10 force COST 100", T0), Reply::Check(row(true, 0, 0, 20_000, 5)));
    assert_eq!(db.take_effects(), [set("k", T0 + 20 * SEC)]);
    // Already at the cap: admitted, nothing to write.
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10 FORCE", T0), Reply::Check(row(true, 0, 0, 20_000, 5)));
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10 COST 0 FORCE", T0), Reply::Check(row(true, 0, 0, 20_000, 5)));
    assert_eq!(db.take_effects(), []);
    assert_eq!(db.tat("k"), Some(Tat::from_nanos(T0 + 20 * SEC)));
}

#[test]
fn a_forced_check_refuses_foreign_values_and_bad_lines_without_writing() {
    assert_foreign_values_refused(check::run, |key| format!("RL.CHECK {key} 5 10 COST 3 FORCE"));
    let mut db = Memory::new();
    assert_eq!(
        call(&mut db, check::run, "RL.CHECK k 5 10 FORCE FORCE", T0),
        Err(Error::RepeatedOption { option: "FORCE" })
    );
    assert_eq!((db.value("k"), db.take_effects()), (None, vec![]));
}

#[test]
fn peek_answers_what_the_next_cost_one_check_gets_and_writes_nothing() {
    let mut db = Memory::new();
    let peeked = ok(&mut db, peek::run, "RL.PEEK k 5 10", T0);
    assert_eq!(peeked, Reply::Check(row(true, 4, 0, 2000, 5)));
    assert_eq!((db.value("k"), db.take_effects()), (None, vec![]));
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10", T0), peeked);
    ok(&mut db, check::run, "RL.CHECK k 5 10 COST 4", T0);
    db.take_effects();
    let peeked = ok(&mut db, peek::run, "RL.PEEK k 5 10", T0 + SEC);
    assert_eq!(peeked, Reply::Check(row(false, 0, 1000, 9000, 5)));
    assert_eq!(db.take_effects(), []);
    assert_eq!(ok(&mut db, check::run, "RL.CHECK k 5 10", T0 + SEC), peeked);
    assert_foreign_values_refused(peek::run, |key| format!("RL.PEEK {key} 5 10"));
}

#[test]
fn reset_deletes_limiter_state_only() {
    let mut db = Memory::new();
    assert_eq!(ok(&mut db, reset::run, "RL.RESET k", T0), Reply::Int(0));
    assert_eq!(db.take_effects(), []);
    ok(&mut db, check::run, "RL.CHECK k 5 10", T0);
    db.take_effects();
    assert_eq!(ok(&mut db, reset::run, "RL.RESET k", T0), Reply::Int(1));
    assert_eq!((db.value("k"), db.take_effects()), (None, vec![del("k")]));
    assert_foreign_values_refused(reset::run, |key| format!("RL.RESET {key}"));
}

#[test]
#[rustfmt::skip]
fn throttle_answers_in_redis_cell_seconds() {
    let throttle = |limited, remaining, retry_after_s, reset_after_s| {
        Reply::Throttle(ThrottleReply { limited, limit: 5, remaining, retry_after_s, reset_after_s })
    };
    let mut db = Memory::new();
    // max_burst 4 (a bucket of 5), one token per second.
    assert_eq!(ok(&mut db, throttle::run, "CL.THROTTLE k 4 1 1", T0), throttle(false, 4, -1, 1));
    assert_eq!(ok(&mut db, throttle::run, "CL.THROTTLE k 4 1 1 4", T0), throttle(false, 0, -1, 5));
    assert_eq!(db.take_effects(), [set("k", T0 + SEC), set("k", T0 + 5 * SEC)]);
    assert_eq!(ok(&mut db, throttle::run, "CL.THROTTLE k 4 1 1", T0), throttle(true, 0, 1, 5));
    // 0.5 s to wait and 4.5 s to full, both rounded up.
    assert_eq!(ok(&mut db, throttle::run, "CL.THROTTLE k 4 1 1", T0 + 500 * MS), throttle(true, 0, 1, 5));
    assert_eq!(ok(&mut db, throttle::run, "CL.THROTTLE k 4 1 1 6", T0), throttle(true, 0, -1, 5));
    assert_eq!(db.take_effects(), []);
    assert_foreign_values_refused(throttle::run, |key| format!("CL.THROTTLE {key} 4 1 1"));
}

// ---------------------------------------------------------------------------------------
// RL.CHECKALL: all or nothing
// ---------------------------------------------------------------------------------------

const RPM_TPM: &str = "RL.CHECKALL 2 rpm tpm 60 60 1 60 90000 60 1200 90000";

#[test]
fn checkall_charges_every_limit_when_all_admit() {
    let mut db = Memory::new();
    let reply = ok(&mut db, checkall::run, RPM_TPM, T0);
    let rows = vec![row(true, 59, 0, 1000, 60), row(true, 88_800, 0, 800, 90_000)];
    assert_eq!(reply, Reply::CheckAll { allowed: true, retry_after_ms: 0, rows });
    assert_eq!(db.take_effects(), [set("rpm", T0 + SEC), set("tpm", T0 + 800 * MS)]);
}

#[test]
fn a_refusal_by_one_limit_writes_nothing_on_any_and_rows_describe_the_untouched_state() {
    let mut db = Memory::new();
    ok(&mut db, check::run, "RL.CHECK tpm 90000 60 COST 89000", T0);
    db.take_effects();
    let tpm_before = db.tat("tpm");
    let reply = ok(&mut db, checkall::run, RPM_TPM, T0);
    // rpm alone would admit, but nothing was taken: its row is the full bucket it still is.
    // tpm has 1000 tokens of the 1200 asked: 200 more take 133.3 ms.
    let rows = vec![row(true, 60, 0, 0, 60), row(false, 1000, 134, 59_334, 90_000)];
    assert_eq!(reply, Reply::CheckAll { allowed: false, retry_after_ms: 134, rows });
    assert_eq!(db.take_effects(), []);
    assert_eq!((db.value("rpm"), db.tat("tpm")), (None, tpm_before));
}

#[test]
fn a_refused_checkall_waits_for_the_slowest_limit_and_never_means_minus_one() {
    let mut db = Memory::new();
    ok(&mut db, check::run, "RL.CHECK slow 1 10", T0);
    ok(&mut db, check::run, "RL.CHECK fast 1 1", T0);
    db.take_effects();
    let reply = ok(&mut db, checkall::run, "RL.CHECKALL 2 slow fast 1 10 1 1 1 1 1 1", T0);
    let rows = vec![row(false, 0, 10_000, 10_000, 1), row(false, 0, 1000, 1000, 1)];
    assert_eq!(reply, Reply::CheckAll { allowed: false, retry_after_ms: 10_000, rows });
    // One limit asked for more than its burst: that request can never be admitted.
    let reply = ok(&mut db, checkall::run, "RL.CHECKALL 2 fresh fast 5 10 1 5 1 1 2 1", T0);
    let rows = vec![row(true, 5, 0, 0, 5), row(false, 0, -1, 1000, 1)];
    assert_eq!(reply, Reply::CheckAll { allowed: false, retry_after_ms: -1, rows });
    assert_eq!(db.take_effects(), []);
}

#[test]
fn an_error_on_any_key_writes_nothing_on_the_others() {
    for (keys, want) in [
        ("fresh hello", Error::NotLimiterState),
        ("fresh counter", Error::NotLimiterState),
        ("list fresh", Error::WrongType),
        ("fresh list", Error::WrongType),
    ] {
        let mut db = with_foreign_values();
        let line = format!("RL.CHECKALL 2 {keys} 5 10 1 5 5 10 1 5");
        assert_eq!(call(&mut db, checkall::run, &line, T0), Err(want), "{line}");
        assert_eq!((db.value("fresh"), db.take_effects()), (None, vec![]), "{line}");
    }
    let mut db = Memory::new();
    let line = "RL.CHECKALL 2 a a 5 10 1 5 5 10 1 5";
    assert_eq!(call(&mut db, checkall::run, line, T0), Err(Error::DuplicateKey));
    assert_eq!(db.take_effects(), []);
}

#[test]
fn checkall_names_its_keys_only_on_a_well_formed_line() {
    assert_eq!(checkall::key_positions(&Line::new(RPM_TPM)), 2..4);
    assert_eq!(checkall::key_positions(&Line::new("RL.CHECKALL 1 k 5 10 1 5")), 2..3);
    for malformed in ["RL.CHECKALL 2 a b 5 10 1 5", "RL.CHECKALL 0", "RL.CHECKALL x a 1 1 1 1", "RL.CHECKALL"] {
        assert!(checkall::key_positions(&Line::new(malformed)).is_empty(), "{malformed}");
    }
}

// ---------------------------------------------------------------------------------------
// RL.REFUND
// ---------------------------------------------------------------------------------------

/// A store whose `k` holds a 5-per-5-s bucket (one token a second) with 2 of 5 tokens left.
fn drained_by_three() -> Memory {
    let mut db = Memory::new();
    ok(&mut db, check::run, "RL.CHECK k 5 5 COST 3", T0);
    assert_eq!(db.take_effects(), [set("k", T0 + 3 * SEC)]);
    db
}

#[test]
fn a_refund_gives_tokens_back_by_moving_the_tat_earlier() {
    let mut db = drained_by_three();
    let reply = ok(&mut db, refund::run, "RL.REFUND k 5 5 1", T0);
    assert_eq!(reply, Reply::Refund { remaining: 3, reset_after_ms: 2000 });
    assert_eq!(db.take_effects(), [set("k", T0 + 2 * SEC)]);
    // Amount 0 only reports.
    let reply = ok(&mut db, refund::run, "RL.REFUND k 5 5 0", T0);
    assert_eq!(reply, Reply::Refund { remaining: 3, reset_after_ms: 2000 });
    assert_eq!(db.take_effects(), []);
}

#[test]
fn a_refund_is_capped_at_the_burst_and_a_bucket_refunded_to_full_is_deleted() {
    for amount in [3, 4, 1000] {
        let mut db = drained_by_three();
        let reply = ok(&mut db, refund::run, &format!("RL.REFUND k 5 5 {amount}"), T0);
        assert_eq!(reply, Reply::Refund { remaining: 5, reset_after_ms: 0 }, "amount {amount}");
        assert_eq!((db.value("k"), db.take_effects()), (None, vec![del("k")]), "amount {amount}");
    }
}

#[test]
fn refunding_a_missing_key_is_a_no_op() {
    let mut db = Memory::new();
    assert_eq!(ok(&mut db, refund::run, "RL.REFUND k 5 5 2", T0), Reply::Refund { remaining: 5, reset_after_ms: 0 });
    assert_eq!((db.value("k"), db.take_effects()), (None, vec![]));
}

#[test]
fn refund_refuses_foreign_values() {
    assert_foreign_values_refused(refund::run, |key| format!("RL.REFUND {key} 5 5 1"));
}

// ---------------------------------------------------------------------------------------
// RL.ACQUIRE, RL.RELEASE, RL.RENEW
// ---------------------------------------------------------------------------------------

/// T0 in milliseconds, the unit of lease deadlines.
const T0_MS: u64 = T0 / MS;

fn acquired(acquired: bool, in_flight: i64, max: i64, retry_after_ms: i64) -> Reply {
    Reply::Acquire(AcquireReply { acquired, in_flight, max, retry_after_ms })
}

fn zadd(key: &str, score: u64, member: &str) -> Effect {
    Effect::Zadd { key: key.into(), score, member: member.into(), with_marker: false }
}

/// The `ZADD key 0 <marker> score member` that creates a lease set.
fn zadd_new(key: &str, score: u64, member: &str) -> Effect {
    Effect::Zadd { key: key.into(), score, member: member.into(), with_marker: true }
}

fn pexpireat(key: &str, ms: u64) -> Effect {
    Effect::PexpireAt { key: key.into(), ms }
}

fn purge(key: &str, max: u64) -> Effect {
    Effect::ZremRangeByScore { key: key.into(), max }
}

/// The marker as a member name for [`Memory::set_zset`].
const MARKER: &str = "\0rl-leases";

#[test]
fn acquire_takes_up_to_max_slots_and_then_says_when_one_frees() {
    let mut db = Memory::new();
    assert_eq!(ok(&mut db, acquire::run, "RL.ACQUIRE l 2 1000 ID a", T0), acquired(true, 1, 2, 0));
    assert_eq!(db.take_effects(), [zadd_new("l", T0_MS + 1000, "a"), pexpireat("l", T0_MS + 1000)]);
    assert_eq!(ok(&mut db, acquire::run, "RL.ACQUIRE l 2 1000 ID b", T0 + 100 * MS), acquired(true, 2, 2, 0));
    assert_eq!(db.take_effects(), [zadd("l", T0_MS + 1100, "b"), pexpireat("l", T0_MS + 1100)]);
    // Full: the earliest lease (a) ends 800 ms later; nothing is written.
    assert_eq!(ok(&mut db, acquire::run, "RL.ACQUIRE l 2 1000 ID c", T0 + 200 * MS), acquired(false, 2, 2, 800));
    assert_eq!(db.take_effects(), []);
    // With `max` lowered to 1, both must end: b's lease, 900 ms later.
    assert_eq!(ok(&mut db, acquire::run, "RL.ACQUIRE l 1 1000 ID c", T0 + 200 * MS), acquired(false, 2, 1, 900));
    // A retried acquire renews and counts once.
    assert_eq!(ok(&mut db, acquire::run, "RL.ACQUIRE l 2 1000 ID a", T0 + 300 * MS), acquired(true, 2, 2, 0));
    assert_eq!(db.take_effects(), [zadd("l", T0_MS + 1300, "a"), pexpireat("l", T0_MS + 1300)]);
    assert_eq!(db.lease_expiry("l"), Some(T0_MS + 1300));
    let Some(Value::Zset(set)) = db.value("l") else { panic!("a lease set") };
    assert_eq!(set.get(MARKER.as_bytes()), Some(&0.0), "marked as lease state: {set:?}");
}

#[test]
fn an_expired_lease_frees_its_slot_and_is_purged_by_the_next_call() {
    let mut db = Memory::new();
    ok(&mut db, acquire::run, "RL.ACQUIRE l 1 1000 ID a", T0);
    db.take_effects();
    // At its deadline the lease has ended.
    assert_eq!(ok(&mut db, acquire::run, "RL.ACQUIRE l 1 500 ID b", T0 + SEC), acquired(true, 1, 1, 0));
    assert_eq!(
        db.take_effects(),
        [purge("l", T0_MS + 1000), zadd("l", T0_MS + 1500, "b"), pexpireat("l", T0_MS + 1500)]
    );
    // A refused call still purges; the set left with its marker only is deleted.
    assert_eq!(ok(&mut db, release::run, "RL.RELEASE l b", T0 + 2 * SEC), Reply::Int(0));
    assert_eq!(db.take_effects(), [purge("l", T0_MS + 2000), Effect::Del { key: "l".into() }]);
    assert_eq!(db.value("l"), None);
}

#[test]
fn a_purge_that_leaves_the_last_deadline_in_place_sets_no_expiry() {
    let mut db = Memory::new();
    ok(&mut db, acquire::run, "RL.ACQUIRE l 1 100 ID short", T0);
    ok(&mut db, acquire::run, "RL.ACQUIRE l 2 5000 ID long", T0);
    db.take_effects();
    // `short` has ended: the refused call purges it and nothing else, the expiry stays.
    assert_eq!(ok(&mut db, acquire::run, "RL.ACQUIRE l 1 1000 ID c", T0 + SEC), acquired(false, 1, 1, 4000));
    assert_eq!(db.take_effects(), [purge("l", T0_MS + 1000)]);
    assert_eq!(db.lease_expiry("l"), Some(T0_MS + 5000));
}

#[test]
fn release_and_renew_act_only_on_a_live_lease() {
    let mut db = Memory::new();
    ok(&mut db, acquire::run, "RL.ACQUIRE l 3 1000 ID a", T0);
    ok(&mut db, acquire::run, "RL.ACQUIRE l 3 5000 ID b", T0);
    db.take_effects();
    assert_eq!(ok(&mut db, renew::run, "RL.RENEW l a 9000", T0 + 10 * MS), Reply::Int(1));
    assert_eq!(db.take_effects(), [zadd("l", T0_MS + 9010, "a"), pexpireat("l", T0_MS + 9010)]);
    assert_eq!(ok(&mut db, renew::run, "RL.RENEW l nobody 9000", T0), Reply::Int(0));
    assert_eq!(ok(&mut db, release::run, "RL.RELEASE l nobody", T0), Reply::Int(0));
    assert_eq!(db.take_effects(), []);
    // Releasing the latest lease moves the expiry to the one left.
    assert_eq!(ok(&mut db, release::run, "RL.RELEASE l a", T0 + 20 * MS), Reply::Int(1));
    assert_eq!(db.take_effects(), [Effect::Zrem { key: "l".into(), member: "a".into() }, pexpireat("l", T0_MS + 5000)]);
    assert_eq!(ok(&mut db, release::run, "RL.RELEASE l a", T0 + 20 * MS), Reply::Int(0));
    // An ended lease is not renewed.
    assert_eq!(ok(&mut db, renew::run, "RL.RENEW l b 1000", T0 + 5 * SEC), Reply::Int(0));
    assert_eq!(db.value("l"), None, "purged, and the set left with its marker only deleted");
}

#[test]
fn lease_commands_refuse_foreign_values_and_bad_lines_without_writing() {
    let lines = ["RL.ACQUIRE {} 2 1000 ID a", "RL.RELEASE {} a", "RL.RENEW {} a 1000"];
    let bodies: [Body; 3] = [acquire::run, release::run, renew::run];
    let now = T0_MS as f64;
    for (line, body) in lines.iter().zip(bodies) {
        let mut db = Memory::new();
        db.set_string("hello", b"hello");
        db.set_zset("board", &[("alice", 3.0), ("bob", 7.5)]);
        // A sliding-window log of millisecond timestamps, without the marker.
        db.set_zset("events", &[("e1", now - 5000.0), ("e2", now - 3000.0), ("a", now + 10.0)]);
        db.set_zset("fraction", &[(MARKER, 0.0), ("a", now + 0.5)]);
        db.set_zset("moved-marker", &[(MARKER, 7.0), ("a", now + 10.0)]);
        db.set_zset("zero", &[(MARKER, 0.0), ("z", 0.0), ("a", now + 10.0)]);
        db.set_zset("negative", &[(MARKER, 0.0), ("n", -1.0), ("a", now + 10.0)]);
        let foreign = ["board", "events", "fraction", "moved-marker", "zero", "negative"];
        let cases = std::iter::once(("hello", Error::WrongType)).chain(foreign.map(|k| (k, Error::NotLeaseState)));
        for (key, want) in cases {
            let before = db.value(key);
            let words = line.replace("{}", key);
            assert_eq!(call(&mut db, body, &words, T0), Err(want), "{words}");
            assert_eq!(db.value(key), before, "{words}: unchanged");
            assert_eq!(db.lease_expiry(key), None, "{words}: no expiry set");
        }
        assert_eq!(db.take_effects(), [], "{line}: nothing replicated");
    }
    let mut db = Memory::new();
    for bad in ["RL.ACQUIRE l 0 1000 ID a", "RL.ACQUIRE l 1 0 ID a", "RL.ACQUIRE l 1 1000 ID", "RL.RENEW l a 0"] {
        let body: Body = if bad.starts_with("RL.RENEW") { renew::run } else { acquire::run };
        assert!(call(&mut db, body, bad, T0).is_err(), "{bad}");
    }
    let marker_id = format!("RL.ACQUIRE l 1 1000 ID {MARKER}");
    assert_eq!(call(&mut db, acquire::run, &marker_id, T0), Err(Error::BadLeaseId), "the marker is no id");
    assert_eq!((db.value("l"), db.take_effects()), (None, vec![]));
}

#[test]
fn limiter_commands_refuse_a_lease_set_as_the_wrong_type() {
    let mut db = Memory::new();
    ok(&mut db, acquire::run, "RL.ACQUIRE l 1 1000 ID a", T0);
    db.take_effects();
    assert_eq!(call(&mut db, check::run, "RL.CHECK l 5 10", T0), Err(Error::WrongType));
    assert_eq!(call(&mut db, reset::run, "RL.RESET l", T0), Err(Error::WrongType));
    assert!(matches!(db.value("l"), Some(Value::Zset(_))));
    assert_eq!(db.take_effects(), []);
}

/// The leases in the store (every member but the marker), member to deadline.
fn leases(db: &Memory, key: &str) -> Vec<f64> {
    match db.value(key) {
        Some(Value::Zset(set)) => {
            set.iter().filter(|&(member, _)| member.as_slice() != MARKER.as_bytes()).map(|(_, &s)| s).collect()
        }
        _ => vec![],
    }
}

proptest::proptest! {
    /// Random acquire / release / renew calls on one lease set, with `max` changing between
    /// calls: the reply's in-flight count is what the set holds afterwards and never exceeds
    /// the largest `max` used; a refusal's retry_after is exact (an acquire that waits that
    /// long, with nothing else in between, gets a slot; one millisecond less does not); the
    /// set never holds expired leases after a call, always holds its marker, and its expiry
    /// is its last deadline.
    #[test]
    fn lease_calls_keep_in_flight_within_max_and_a_refusal_says_exactly_when_a_slot_frees(
        calls in proptest::collection::vec((0u8..3, 0u8..6, 0u64..400, 1u64..600, 1u64..5), 1..40),
    ) {
        let mut db = Memory::new();
        let mut now_ms = T0_MS;
        for (kind, id, step, lease_ms, max) in calls {
            now_ms += step;
            let now = now_ms * MS;
            match kind {
                0 => {
                    let line = format!("RL.ACQUIRE l {max} {lease_ms} ID id{id}");
                    let Reply::Acquire(reply) = ok(&mut db, acquire::run, &line, now) else { panic!("{line}") };
                    let live = leases(&db, "l").iter().filter(|&&s| s > now_ms as f64).count() as u64;
                    proptest::prop_assert_eq!(reply.in_flight as u64, live, "{}", line);
                    proptest::prop_assert!(reply.in_flight as u64 <= 4, "{line}: {reply:?}");
                    if !reply.acquired {
                        proptest::prop_assert!(reply.retry_after_ms >= 1);
                        // Ask again, on a copy, after exactly the wait.
                        let mut later = db.clone();
                        let at = (now_ms + reply.retry_after_ms as u64) * MS;
                        let early = ok(&mut db.clone(), acquire::run, &line, at - MS);
                        proptest::prop_assert!(matches!(early, Reply::Acquire(r) if !r.acquired), "{line}: a ms early: {early:?}");
                        let retried = ok(&mut later, acquire::run, &line, at);
                        proptest::prop_assert!(matches!(retried, Reply::Acquire(r) if r.acquired), "{line}: waited {reply:?}, got {retried:?}");
                    }
                }
                1 => {
                    ok(&mut db, release::run, &format!("RL.RELEASE l id{id}"), now);
                }
                _ => {
                    ok(&mut db, renew::run, &format!("RL.RENEW l id{id} {lease_ms}"), now);
                }
            }
            match db.value("l") {
                Some(Value::Zset(set)) => {
                    proptest::prop_assert_eq!(set.get(MARKER.as_bytes()), Some(&0.0), "marked: {:?}", set);
                    let leases = leases(&db, "l");
                    proptest::prop_assert!(!leases.is_empty(), "a set without leases is deleted: {set:?}");
                    proptest::prop_assert!(leases.iter().all(|&s| s > now_ms as f64), "expired leases purged: {set:?}");
                    let last = leases.iter().copied().fold(0.0, f64::max) as u64;
                    proptest::prop_assert_eq!(db.lease_expiry("l"), Some(last));
                }
                None => {}
                other => proptest::prop_assert!(false, "{other:?}"),
            }
        }
    }
}
