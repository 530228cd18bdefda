//! Concurrency leases (RL.ACQUIRE, RL.RELEASE, RL.RENEW) against real servers: slots up to
//! `max`, refusals that say when a slot frees, renewal, release, retries counted once, slots
//! that come back by themselves when a holder vanishes, and state that replicas and the AOF
//! hold byte for byte (members, scores and expiry), on a single server and on a cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::thread::sleep;
use std::time::{Duration, Instant};

use testkit::redis::{self, Connection, Value};
use testkit::{
    repl_offset, rl_acquire, rl_release, rl_renew, wait_for_replicas, wait_until, AcquireReply, Cluster, RedisServer,
    StoredLeases, LEASE_MARKER,
};

/// Long enough that no lease ends during a test unless the test waits for it.
const LONG: u64 = 600_000;

fn error_of(con: &mut Connection, args: &[&str]) -> String {
    let (name, rest) = args.split_first().unwrap();
    match redis::cmd(name).arg(rest).query::<Value>(con) {
        Err(e) => format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or("")).trim().to_string(),
        Ok(v) => panic!("{args:?} should fail, got {v:?}"),
    }
}

#[test]
fn acquire_takes_up_to_max_then_refuses_with_the_wait_for_the_earliest_lease() {
    let server = RedisServer::start();
    let mut con = server.client();
    for (id, in_flight) in [("a", 1), ("b", 2), ("c", 3)] {
        let reply = rl_acquire(&mut con, "jobs", 3, LONG, id);
        assert_eq!(reply, AcquireReply { acquired: true, in_flight, max: 3, retry_after_ms: 0 }, "{id}");
    }
    let refused = rl_acquire(&mut con, "jobs", 3, LONG, "d");
    assert!(!refused.acquired && refused.in_flight == 3 && refused.max == 3, "{refused:?}");
    assert!((LONG - 1000..=LONG).contains(&refused.retry_after_ms), "a's lease ends first: {refused:?}");
    // The state is a plain sorted set, marked as lease state, expiring with its last lease.
    let stored = StoredLeases::of(&mut con, "jobs");
    assert!(stored.is_marked(), "{stored:?}");
    assert_eq!(stored.ids(), ["a", "b", "c"]);
    let last: i64 = stored.members[3].1.parse().unwrap();
    assert_eq!(stored.pexpiretime, last, "the key expires at the latest deadline");
}

#[test]
fn with_max_lowered_below_the_leases_in_flight_a_refusal_waits_until_enough_have_ended() {
    let server = RedisServer::start();
    let mut con = server.client();
    for (id, lease_ms) in [("a", 100_000), ("b", 200_000), ("c", 300_000)] {
        assert!(rl_acquire(&mut con, "k", 3, lease_ms, id).acquired, "{id}");
    }
    // max 3: a slot frees when a ends; max 2: when b ends too; max 1: when all three have.
    for (max, lease_ms) in [(3, 100_000), (2, 200_000), (1, 300_000)] {
        let refused = rl_acquire(&mut con, "k", max, LONG, "d");
        assert!(!refused.acquired && refused.in_flight == 3, "max {max}: {refused:?}");
        assert!((lease_ms - 1000..=lease_ms).contains(&refused.retry_after_ms), "max {max}: {refused:?}");
    }
}

#[test]
fn a_retried_acquire_renews_and_counts_once() {
    let server = RedisServer::start();
    let mut con = server.client();
    rl_acquire(&mut con, "k", 2, LONG, "req-1");
    let before = StoredLeases::of(&mut con, "k");
    sleep(Duration::from_millis(5));
    let again = rl_acquire(&mut con, "k", 2, LONG, "req-1");
    assert_eq!((again.acquired, again.in_flight), (true, 1), "{again:?}");
    let after = StoredLeases::of(&mut con, "k");
    assert_eq!(after.ids(), ["req-1"]);
    assert!(after.pexpiretime > before.pexpiretime, "renewed: {before:?} then {after:?}");
}

#[test]
fn release_and_renew_act_on_live_leases_only() {
    let server = RedisServer::start();
    let mut con = server.client();
    rl_acquire(&mut con, "k", 1, LONG, "a");
    assert!(!rl_acquire(&mut con, "k", 1, LONG, "b").acquired);
    assert!(rl_renew(&mut con, "k", "a", 2 * LONG));
    let renewed = StoredLeases::of(&mut con, "k");
    assert!(!rl_renew(&mut con, "k", "b", LONG), "b holds nothing");
    assert!(!rl_release(&mut con, "k", "b"));
    assert_eq!(StoredLeases::of(&mut con, "k"), renewed, "refused calls change nothing");
    assert!(rl_release(&mut con, "k", "a"));
    assert!(!rl_release(&mut con, "k", "a"), "released once");
    assert_eq!(
        StoredLeases::of(&mut con, "k"),
        StoredLeases { members: vec![], pexpiretime: -2 },
        "the empty set is gone"
    );
    assert!(rl_acquire(&mut con, "k", 1, LONG, "b").acquired, "the slot is free again");
}

#[test]
fn an_expired_lease_frees_its_slot_by_itself() {
    let server = RedisServer::start();
    let mut con = server.client();
    // A long lease keeps the key alive, so only the purge can remove the short one.
    assert!(rl_acquire(&mut con, "k", 2, LONG, "long").acquired);
    assert!(rl_acquire(&mut con, "k", 2, 200, "crashed").acquired);
    let refused = rl_acquire(&mut con, "k", 2, LONG, "next");
    assert!(!refused.acquired && (1..=200).contains(&refused.retry_after_ms), "{refused:?}");
    sleep(Duration::from_millis(refused.retry_after_ms));
    let taken = rl_acquire(&mut con, "k", 2, LONG, "next");
    assert_eq!((taken.acquired, taken.in_flight), (true, 2), "waiting retry_after_ms is enough: {taken:?}");
    assert_eq!(StoredLeases::of(&mut con, "k").ids(), ["long", "next"], "the expired lease was purged");
    // With no call at all, the key expires with its last lease.
    rl_acquire(&mut con, "gone", 5, 100, "x");
    let gone = wait_until(Instant::now() + Duration::from_secs(5), || {
        redis::cmd("EXISTS").arg("gone").query::<i64>(&mut con).unwrap() == 0
    });
    assert!(gone, "the lease set expires with its last lease");
}

#[test]
fn replicas_and_the_aof_hold_the_same_lease_set() {
    let primary = RedisServer::builder().arg("appendonly", "yes").arg("appendfsync", "always").start();
    let replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    let mut r = replica.client();
    for id in ["a", "b", "c"] {
        rl_acquire(&mut p, "jobs", 3, LONG, id);
    }
    rl_acquire(&mut p, "jobs", 3, 50, "short");
    rl_release(&mut p, "jobs", "b");
    rl_renew(&mut p, "jobs", "a", 2 * LONG);
    // Two sets whose long lease keeps them alive, so only purges remove the short ones.
    for key in ["emptied", "purged"] {
        rl_acquire(&mut p, key, 2, 1, "x");
        rl_acquire(&mut p, key, 2, LONG, "keep");
    }
    sleep(Duration::from_millis(60));
    // Purges the expired "short" and takes its slot.
    assert!(rl_acquire(&mut p, "jobs", 3, LONG, "d").acquired);
    // Purges x and releases keep: no lease is left, so the set is deleted.
    assert!(rl_release(&mut p, "emptied", "keep"));
    // Refused (max 1, keep is live), but x is purged all the same.
    assert!(!rl_acquire(&mut p, "purged", 1, LONG, "y").acquired);
    wait_for_replicas(&mut p, 1);
    let on_primary = StoredLeases::of(&mut p, "jobs");
    assert_eq!(on_primary.ids(), ["c", "d", "a"], "{on_primary:?}");
    assert_eq!(StoredLeases::of(&mut r, "jobs"), on_primary, "identical on the replica");
    assert_eq!(StoredLeases::of(&mut p, "emptied").pexpiretime, -2, "deleted when no lease is left");
    assert_eq!(StoredLeases::of(&mut r, "emptied").pexpiretime, -2, "deleted there too");
    let purged = StoredLeases::of(&mut p, "purged");
    assert_eq!(purged.ids(), ["keep"], "{purged:?}");
    assert_eq!(StoredLeases::of(&mut r, "purged"), purged, "the refused call's purge reached the replica");

    let aof = primary.aof_files(".aof");
    assert!(aof.contains("ZADD") && aof.contains("PEXPIREAT"), "the AOF holds the effects: {aof}");
    assert!(aof.contains(LEASE_MARKER), "and the marker: {aof}");
    assert!(!aof.to_uppercase().contains("RL.ACQUIRE"), "never the command: {aof}");
    drop(p);
    let mut primary = primary;
    primary.restart();
    let mut p = primary.client();
    assert_eq!(StoredLeases::of(&mut p, "jobs"), on_primary, "reloaded byte for byte");
    assert_eq!(StoredLeases::of(&mut p, "purged"), purged, "reloaded byte for byte");
    assert_eq!(StoredLeases::of(&mut p, "emptied").pexpiretime, -2);
    assert!(!rl_acquire(&mut p, "jobs", 3, LONG, "e").acquired, "no slot handed out by the restart");
}

#[test]
fn nothing_is_propagated_when_nothing_changes() {
    // No PING to the replica during the test (every 10 s by default): it moves the offset.
    let primary = RedisServer::builder().arg("repl-ping-replica-period", "3600").start();
    let _replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    rl_acquire(&mut p, "k", 1, LONG, "a");
    wait_for_replicas(&mut p, 1);
    let before = repl_offset(&mut p);
    assert!(!rl_acquire(&mut p, "k", 1, LONG, "b").acquired);
    assert!(!rl_release(&mut p, "k", "b"));
    assert!(!rl_renew(&mut p, "k", "b", 10));
    assert!(!rl_release(&mut p, "missing", "b"));
    error_of(&mut p, &["RL.ACQUIRE", "k", "0", "10", "ID", "a"]);
    assert_eq!(repl_offset(&mut p), before, "refusals and errors propagate nothing");
}

#[test]
fn a_refused_call_propagates_exactly_the_purge_of_expired_leases() {
    // No PING to the replica during the test (every 10 s by default): it moves the offset.
    let primary = RedisServer::builder()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("repl-ping-replica-period", "3600")
        .start();
    let replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    rl_acquire(&mut p, "k", 2, LONG, "long");
    rl_acquire(&mut p, "k", 2, 1, "short");
    sleep(Duration::from_millis(20));
    wait_for_replicas(&mut p, 1);
    let (offset, aof) = (repl_offset(&mut p), primary.aof_files(".incr.aof"));
    let before = StoredLeases::of(&mut p, "k");
    // Refused: long holds the one slot; short has ended and is purged.
    assert!(!rl_acquire(&mut p, "k", 1, LONG, "b").acquired);
    wait_for_replicas(&mut p, 1);
    let after = StoredLeases::of(&mut p, "k");
    assert_eq!(after.ids(), ["long"], "{after:?}");
    assert_eq!(after.pexpiretime, before.pexpiretime, "the expiry is the long lease's still");
    assert_eq!(StoredLeases::of(&mut replica.client(), "k"), after, "the replica applied the purge");
    assert!(repl_offset(&mut p) > offset, "the purge is propagated");
    let added = primary.aof_files(".incr.aof");
    let added = added.strip_prefix(aof.as_str()).unwrap_or_else(|| panic!("the AOF grows at its end: {added}"));
    assert!(added.contains("ZREMRANGEBYSCORE"), "{added:?}");
    for not_there in ["ZADD", "ZREM\r", "PEXPIREAT", "DEL"] {
        assert!(!added.contains(not_there), "only the purge, no {not_there}: {added:?}");
    }
    // Nothing expired any more: the same refusal propagates nothing.
    let offset = repl_offset(&mut p);
    assert!(!rl_acquire(&mut p, "k", 1, LONG, "b").acquired);
    assert_eq!(repl_offset(&mut p), offset, "nothing left to purge, nothing propagated");
}

#[test]
fn an_application_sorted_set_of_millisecond_timestamps_is_refused_and_left_unchanged() {
    let server = RedisServer::start();
    let mut con = server.client();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // A sliding-window log: members scored by when they happened.
    let _: () = redis::cmd("ZADD")
        .arg("events")
        .arg(&[(now_ms - 5000).to_string(), "e1".into(), (now_ms - 3000).to_string(), "e2".into()])
        .arg(&[(now_ms + 1000).to_string(), "e3".into()])
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("PEXPIREAT").arg("events").arg(now_ms + LONG as i64).query(&mut con).unwrap();
    let before = StoredLeases::of(&mut con, "events");
    for args in [
        &["RL.ACQUIRE", "events", "5", "1000", "ID", "x"][..],
        &["RL.RELEASE", "events", "e3"],
        &["RL.RENEW", "events", "e3", "1000"],
    ] {
        assert!(error_of(&mut con, args).contains("not lease state"), "{args:?}");
    }
    assert_eq!(StoredLeases::of(&mut con, "events"), before, "members, scores and TTL untouched");
    // Nor is a set with the marker scored otherwise, another member at or below 0, or a
    // lease score that is no whole millisecond.
    let lease = (now_ms + LONG as i64).to_string();
    let fakes: [(&str, &[(&str, &str)]); 4] = [
        ("moved-marker", &[("5", LEASE_MARKER), (&lease, "a")]),
        ("zero", &[("0", LEASE_MARKER), ("0", "z"), (&lease, "a")]),
        ("negative", &[("0", LEASE_MARKER), ("-1", "n"), (&lease, "a")]),
        ("fraction", &[("0", LEASE_MARKER), ("1764441600000.5", "a")]),
    ];
    for (key, members) in fakes {
        for &(score, member) in members {
            let _: () = redis::cmd("ZADD").arg(key).arg(score).arg(member).query(&mut con).unwrap();
        }
        let before = StoredLeases::of(&mut con, key);
        let got = error_of(&mut con, &["RL.ACQUIRE", key, "5", "1000", "ID", "x"]);
        assert!(got.contains("not lease state"), "{key}: {got}");
        assert_eq!(StoredLeases::of(&mut con, key), before, "{key}: unchanged");
    }
    // And an id equal to the marker is refused.
    let refused = error_of(&mut con, &["RL.ACQUIRE", "k", "5", "1000", "ID", LEASE_MARKER]);
    assert!(refused.contains("id must be"), "{refused}");
    assert!(rl_acquire(&mut con, "k", 5, 1000, "\0another-id").acquired, "other NUL-led ids are fine");
}

#[test]
fn under_memory_pressure_acquire_is_refused_but_renew_and_release_still_work() {
    let server = RedisServer::start();
    let mut con = server.client();
    rl_acquire(&mut con, "k", 2, LONG, "a");
    rl_acquire(&mut con, "k", 2, LONG, "b");
    // Any use is over one byte: commands flagged deny-oom are refused (noeviction).
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).query(&mut con).unwrap();
    let oom = error_of(&mut con, &["RL.ACQUIRE", "k", "2", "1000", "ID", "c"]);
    assert!(oom.starts_with("OOM"), "{oom}");
    assert!(rl_renew(&mut con, "k", "a", 2 * LONG), "a holder keeps its slot");
    assert!(rl_release(&mut con, "k", "b"), "and can give it back");
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query(&mut con).unwrap();
    assert_eq!(StoredLeases::of(&mut con, "k").ids(), ["a"]);
}

#[test]
fn bad_arguments_and_foreign_keys_are_refused_and_change_nothing() {
    let server = RedisServer::start();
    let mut con = server.client();
    rl_acquire(&mut con, "k", 2, LONG, "a");
    let _: () = redis::cmd("SET").arg("text").arg("hello").query(&mut con).unwrap();
    let _: () = redis::cmd("ZADD").arg("board").arg(3).arg("alice").query(&mut con).unwrap();
    let before = (StoredLeases::of(&mut con, "k"), StoredLeases::of(&mut con, "board"));
    let cases: &[(&[&str], &str)] = &[
        (
            &["RL.ACQUIRE", "k", "2", "1000", "ID"],
            "wrong number of arguments, usage: RL.ACQUIRE key max lease_ms ID id",
        ),
        (&["RL.ACQUIRE", "k", "0", "1000", "ID", "b"], "max must be an integer between 1 and 10000"),
        (&["RL.ACQUIRE", "k", "10001", "1000", "ID", "b"], "max must be an integer between 1 and 10000"),
        (&["RL.ACQUIRE", "k", "2", "0", "ID", "b"], "lease_ms must be an integer between 1 and 86400000"),
        (&["RL.ACQUIRE", "k", "2", "86400001", "ID", "b"], "lease_ms must be an integer between 1 and 86400000"),
        (&["RL.ACQUIRE", "k", "2", "1000", "FOR", "b"], "unknown option 'FOR'"),
        (&["RL.ACQUIRE", "k", "2", "1000", "ID", ""], "id must be a non-empty string of at most 256 bytes"),
        (&["RL.RELEASE", "k"], "wrong number of arguments, usage: RL.RELEASE key id"),
        (&["RL.RENEW", "k", "a", "-5"], "lease_ms must be an integer between 1 and 86400000"),
        (&["RL.ACQUIRE", "text", "2", "1000", "ID", "b"], "WRONGTYPE"),
        (&["RL.RELEASE", "text", "a"], "WRONGTYPE"),
        (&["RL.ACQUIRE", "board", "2", "1000", "ID", "b"], "not lease state"),
        (&["RL.RENEW", "board", "alice", "1000"], "not lease state"),
        (&["RL.CHECK", "k", "5", "10"], "WRONGTYPE"),
        (&["RL.RESET", "k"], "WRONGTYPE"),
    ];
    for (args, want) in cases {
        let got = error_of(&mut con, args);
        assert!(got.contains(want), "{args:?}: {got}");
        assert!(got.starts_with("ERR") || got.starts_with("WRONGTYPE"), "{args:?}: {got}");
    }
    assert_eq!((StoredLeases::of(&mut con, "k"), StoredLeases::of(&mut con, "board")), before, "unchanged");
    let text: String = redis::cmd("GET").arg("text").query(&mut con).unwrap();
    assert_eq!(text, "hello");
    let keys: Vec<String> =
        redis::cmd("COMMAND").arg("GETKEYS").arg(&["RL.ACQUIRE", "k", "1", "1", "ID", "x"]).query(&mut con).unwrap();
    assert_eq!(keys, ["k"]);
}

#[test]
fn a_cluster_routes_lease_commands_to_the_slot_owner() {
    let cluster = Cluster::start(3, 0);
    let mut con = cluster.cluster_connection();
    let keys: Vec<String> = (0..30).map(|i| format!("leases:{i}")).collect();
    for key in &keys {
        let reply: AcquireReply =
            redis::cmd("RL.ACQUIRE").arg(key).arg(1).arg(LONG).arg("ID").arg("a").query(&mut con).unwrap();
        assert!(reply.acquired, "{key}");
        let again: AcquireReply =
            redis::cmd("RL.ACQUIRE").arg(key).arg(1).arg(LONG).arg("ID").arg("b").query(&mut con).unwrap();
        assert!(!again.acquired, "{key}: the one slot is taken");
    }
    let owners: std::collections::BTreeSet<usize> = keys.iter().map(|k| cluster.owner_index(k)).collect();
    assert!(owners.len() > 1, "the keys span several primaries");
    for key in &keys {
        let mut owner = cluster.owner_of(key).client();
        assert_eq!(StoredLeases::of(&mut owner, key).ids(), ["a"], "{key} lives on its slot owner");
        let released: i64 = redis::cmd("RL.RELEASE").arg(key).arg("a").query(&mut con).unwrap();
        assert_eq!(released, 1, "{key}");
    }
}

#[test]
fn lease_writes_emit_the_keyspace_events_of_the_equivalent_core_commands() {
    let server = RedisServer::builder().arg("notify-keyspace-events", "KEA").start();
    let mut subscriber = server.client();
    subscriber.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut pubsub = subscriber.as_pubsub();
    pubsub.psubscribe("__keyevent@0__:*").unwrap();
    let mut con = server.client();
    let mut next_event = || {
        let message = pubsub.get_message().expect("a keyspace event");
        let key: String = message.get_payload().unwrap();
        (message.get_channel_name().trim_start_matches("__keyevent@0__:").to_string(), key)
    };
    let event = |name: &str| (name.to_string(), "ev".to_string());
    rl_acquire(&mut con, "ev", 1, LONG, "a");
    assert_eq!(next_event(), event("zadd"));
    assert_eq!(next_event(), event("expire"));
    // A refusal writes nothing and says nothing; the next events are the release's.
    rl_acquire(&mut con, "ev", 1, LONG, "b");
    rl_release(&mut con, "ev", "a");
    assert_eq!(next_event(), event("zrem"));
    assert_eq!(next_event(), event("del"));
}

#[test]
fn a_random_lease_workload_leaves_the_replica_and_the_reloaded_aof_identical() {
    let mut primary = RedisServer::builder().arg("appendonly", "yes").arg("appendfsync", "always").start();
    let replica = RedisServer::builder().start_replica_of(&primary);
    let mut p = primary.client();
    let keys: Vec<String> = (0..12).map(|i| format!("pool:{i}")).collect();
    // Each set holds one long lease, so no key expires while the servers are compared; the
    // short ones end during the workload and are purged by later calls.
    for key in &keys {
        rl_acquire(&mut p, key, 4, LONG, "anchor");
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..20 {
        let mut pipe = redis::pipe();
        for _ in 0..50 {
            let key = &keys[next(keys.len() as u64) as usize];
            let id = format!("id{}", next(8));
            let lease_ms = 1 + next(40);
            match next(3) {
                0 => pipe.cmd("RL.ACQUIRE").arg(key).arg(4).arg(lease_ms).arg("ID").arg(&id),
                1 => pipe.cmd("RL.RELEASE").arg(key).arg(&id),
                _ => pipe.cmd("RL.RENEW").arg(key).arg(&id).arg(lease_ms),
            };
        }
        let _: Vec<Value> = pipe.query(&mut p).unwrap();
        sleep(Duration::from_millis(5));
    }
    wait_for_replicas(&mut p, 1);
    let on_primary: Vec<StoredLeases> = keys.iter().map(|k| StoredLeases::of(&mut p, k)).collect();
    assert!(on_primary.iter().all(|s| s.is_marked() && s.ids().contains(&"anchor")), "{on_primary:?}");
    let mut r = replica.client();
    let on_replica: Vec<StoredLeases> = keys.iter().map(|k| StoredLeases::of(&mut r, k)).collect();
    assert_eq!(on_replica, on_primary, "the replica holds the same members, scores and expiries");
    drop(p);
    primary.restart();
    let mut p = primary.client();
    let reloaded: Vec<StoredLeases> = keys.iter().map(|k| StoredLeases::of(&mut p, k)).collect();
    assert_eq!(reloaded, on_primary, "the AOF reloads to the same state");
}
