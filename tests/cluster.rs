//! The module on a real Redis Cluster (three primaries on loopback), driven through the
//! `redis` crate's cluster-aware client as an application would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use testkit::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use testkit::redis::{self, cluster::cluster_pipe, Value};
use testkit::{check, info_field, snapshot, stored, tokens, CheckAllReply, CheckReply, Cluster, RedisServer, Stored};

#[test]
fn checks_on_thousands_of_keys_spread_over_all_primaries_and_live_on_their_slot_owner() {
    let cluster = Cluster::start(3, 0);
    let mut con = cluster.cluster_connection();
    let keys: Vec<String> = (0..3000).map(|i| format!("client:{i}")).collect();

    // Two rounds through the cluster client: the second sees the state the first left, so
    // each key was read and written on one node.
    for expected_remaining in [9u64, 8] {
        for batch in keys.chunks(500) {
            let mut pipe = cluster_pipe();
            for key in batch {
                pipe.cmd("RL.CHECK").arg(key).arg(10).arg(60);
            }
            let replies: Vec<CheckReply> = pipe.query(&mut con).unwrap();
            for (key, reply) in batch.iter().zip(replies) {
                // Each token takes 6 s to come back; a little time passed since the first round.
                let reset_ms = 6000 * (10 - expected_remaining);
                assert_eq!(
                    (reply.allowed, reply.remaining, reply.retry_after_ms, reply.burst),
                    (true, expected_remaining, Some(0), 10),
                    "{key}"
                );
                assert!(reply.reset_after_ms <= reset_ms && reply.reset_after_ms > reset_ms - 6000, "{key}: {reply:?}");
            }
        }
    }

    // Where each key must live, from the servers' own slot computation and slot map.
    let slots = cluster.keyslots(&keys);
    let primaries = cluster.primary_indices();
    assert_eq!(primaries, vec![0, 1, 2]);
    let slot_map = cluster.slot_map();
    let mut by_owner: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (key, &slot) in keys.iter().zip(&slots) {
        let (_, _, owner) = slot_map.iter().find(|(first, last, _)| (*first..=*last).contains(&slot)).unwrap();
        by_owner.entry(*owner).or_default().push(key.clone());
    }
    assert_eq!(by_owner.keys().copied().collect::<Vec<_>>(), primaries, "every primary owns some of the keys");
    for (&owner, owned) in &by_owner {
        assert!(owned.len() > 3000 / 3 / 2, "node {owner} owns only {} of 3000 keys", owned.len());
        let mut direct = cluster.node(owner).client();
        let dbsize: usize = redis::cmd("DBSIZE").query(&mut direct).unwrap();
        assert_eq!(dbsize, owned.len(), "node {owner} holds exactly the keys of its slots");
        for (key, state) in stored(&mut direct, owned) {
            let value = state.value.unwrap_or_else(|| panic!("{key} missing on its owner {owner}"));
            assert!(value.bytes().all(|b| b.is_ascii_digit()), "{key} = {value:?} is not a TAT");
            assert!(state.pexpiretime > 0, "{key} has no expiry: {}", state.pexpiretime);
        }
        // Another primary does not have the key and redirects to the owner.
        let other = primaries.iter().copied().find(|&p| p != owner).unwrap();
        let err = redis::cmd("RL.PEEK")
            .arg(&owned[0])
            .arg(10)
            .arg(60)
            .query::<Value>(&mut cluster.node(other).client())
            .unwrap_err();
        assert_eq!(err.code(), Some("MOVED"), "{err}");
        assert!(err.to_string().contains(&cluster.node(owner).port().to_string()), "{err}");
    }
}

#[test]
fn checkall_with_hash_tagged_keys_is_all_or_nothing_and_other_slots_get_crossslot() {
    let cluster = Cluster::start(3, 0);
    let mut con = cluster.cluster_connection();
    let (rpm, tpm) = ("{tenant:42}:rpm", "{tenant:42}:tpm");
    assert_eq!(cluster.keyslot(rpm), cluster.keyslot(tpm), "one hash tag, one slot");

    let checkall = |con: &mut redis::cluster::ClusterConnection, cost: u64| -> redis::RedisResult<CheckAllReply> {
        redis::cmd("RL.CHECKALL").arg(2).arg(rpm).arg(tpm).arg(&[10, 60, 1, 10]).arg(&[1000, 60, cost, 1000]).query(con)
    };
    let admitted = |remaining, reset_after_ms, burst| CheckReply {
        allowed: true,
        remaining,
        retry_after_ms: Some(0),
        reset_after_ms,
        burst,
    };
    assert_eq!(
        checkall(&mut con, 400).unwrap(),
        CheckAllReply {
            allowed: true,
            retry_after_ms: Some(0),
            limits: vec![admitted(9, 6000, 10), admitted(600, 24000, 1000)]
        }
    );
    // 700 tokens do not fit in 600: refused, and the request limit is not charged either.
    let refused = checkall(&mut con, 700).unwrap();
    let rows = &refused.limits;
    assert_eq!(
        (refused.allowed, rows[0].allowed, rows[0].remaining, rows[1].allowed, rows[1].remaining),
        (false, true, 9, false, 600)
    );
    assert_eq!(refused.retry_after_ms, rows[1].retry_after_ms);
    assert!(refused.retry_after_ms.is_some_and(|ms| ms > 0), "{refused:?}");
    let owner = cluster.owner_index(rpm);
    assert_eq!(tokens(&mut cluster.node(owner).client(), rpm, 10, 60, 10), 9);
    assert_eq!(tokens(&mut cluster.node(owner).client(), tpm, 1000, 60, 1000), 600);

    // The client routes a command it does not know by its first argument, here `numkeys`,
    // and then follows the server's MOVED. Routing by the first key saves that round trip.
    let moved = |cluster: &Cluster| -> u64 {
        let count = |node: &RedisServer| {
            let errors = info_field(&mut node.client(), "errorstats", "errorstat_MOVED");
            errors.and_then(|v| v.strip_prefix("count=").and_then(|n| n.parse::<u64>().ok())).unwrap_or(0)
        };
        cluster.nodes().iter().map(count).sum()
    };
    let mut cmd = redis::cmd("RL.CHECKALL");
    cmd.arg(2).arg(rpm).arg(tpm).arg(&[10, 60, 1, 10]).arg(&[1000, 60, 100, 1000]);
    let to_owner = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(rpm, SlotAddr::Master)));
    assert_ne!(cluster.owner_index("2"), owner, "unrouted, this call would be redirected");
    let moved_before = moved(&cluster);
    let reply = redis::from_redis_value::<CheckAllReply>(con.route_command(&cmd, to_owner).unwrap()).unwrap();
    assert_eq!((reply.allowed, reply.limits[0].remaining, reply.limits[1].remaining), (true, 8, 500));
    assert_eq!(moved(&cluster), moved_before, "routed straight to the owner");

    // Keys in different slots cannot be checked atomically: the server refuses with CROSSSLOT
    // and nothing is written.
    let (a, b) = ("user:1", "user:2");
    assert_ne!(cluster.keyslot(a), cluster.keyslot(b));
    let err = redis::cmd("RL.CHECKALL")
        .arg(2)
        .arg(a)
        .arg(b)
        .arg(&[10, 60, 1, 10])
        .arg(&[10, 60, 1, 10])
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
    let a_and_b: (Option<String>, Option<String>) =
        (redis::cmd("GET").arg(a).query(&mut con).unwrap(), redis::cmd("GET").arg(b).query(&mut con).unwrap());
    assert_eq!(a_and_b, (None, None));
}

#[test]
fn limits_hold_exactly_when_many_clients_hit_the_same_keys_through_the_cluster() {
    let cluster = Cluster::start(3, 0);
    // One hot key on each primary.
    let mut hot: BTreeMap<usize, String> = BTreeMap::new();
    for i in 0.. {
        let key = format!("hot:{i}");
        hot.entry(cluster.owner_index(&key)).or_insert(key);
        if hot.len() == 3 {
            break;
        }
    }
    let keys: Vec<String> = hot.values().cloned().collect();
    const THREADS: usize = 16;
    const CALLS: usize = 25; // per thread and key: 400 calls per key for 100 tokens
    let client = cluster.cluster_client();
    let barrier = Arc::new(Barrier::new(THREADS));
    let admitted: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (client, barrier, keys) = (client.clone(), barrier.clone(), &keys);
                scope.spawn(move || {
                    let mut con = client.get_connection().unwrap();
                    let mut admitted = vec![0; keys.len()];
                    barrier.wait();
                    for _ in 0..CALLS {
                        for (k, key) in keys.iter().enumerate() {
                            let reply = check(&mut con, key, 100, 3600, 1, 100);
                            assert!((0..100).contains(&reply.remaining), "{key}: remaining {}", reply.remaining);
                            admitted[k] += u64::from(reply.allowed);
                        }
                    }
                    admitted
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (k, key) in keys.iter().enumerate() {
        let total: u64 = admitted.iter().map(|per_thread| per_thread[k]).sum();
        assert_eq!(total, 100, "{key}: admitted {total} of {} calls", THREADS * CALLS);
        assert_eq!(tokens(&mut cluster.owner_of(key).client(), key, 100, 3600, 100), 0);
    }
}

#[test]
fn cluster_failover_keeps_replicas_identical_and_a_client_that_used_its_burst_limited() {
    let cluster = Cluster::start(3, 1);
    let mut con = cluster.cluster_connection();

    // A mixed workload over keys on every primary.
    let keys: Vec<String> = (0..300).map(|i| format!("acct:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        for _ in 0..=(i % 4) {
            check(&mut con, key, 7, 60, 1 + (i as u64 % 2), 7);
        }
    }
    let victim = "victim";
    for n in 0..5 {
        let reply = check(&mut con, victim, 5, 3600, 1, 5);
        assert_eq!((reply.allowed, reply.remaining), (true, 4 - n));
    }
    let refused = check(&mut con, victim, 5, 3600, 1, 5);
    assert_eq!((refused.allowed, refused.remaining), (false, 0));
    let partial = "partial";
    check(&mut con, partial, 10, 3600, 3, 10);

    // Every replica holds exactly its primary's keys, values and expiries.
    for primary in cluster.primary_indices() {
        cluster.wait_for_replicas(&mut con, primary, 1);
        let on_primary = snapshot(&mut cluster.node(primary).client());
        assert!(!on_primary.is_empty());
        for replica in cluster.replica_indices(primary) {
            let mut replica_con = cluster.node(replica).client();
            let _: () = redis::cmd("READONLY").query(&mut replica_con).unwrap();
            assert_eq!(snapshot(&mut replica_con), on_primary, "replica {replica} of {primary}");
        }
    }

    let owner = cluster.owner_index(victim);
    let replica = cluster.replica_indices(owner)[0];
    let state = |cluster: &Cluster| -> Vec<Stored> {
        [victim, partial].map(|k| Stored::of(&mut cluster.owner_of(k).client(), k)).to_vec()
    };
    let before = state(&cluster);
    cluster.failover(replica);
    assert_eq!(cluster.owner_index(victim), replica, "the replica took over the victim's slot");
    assert_eq!(cluster.replica_indices(replica), vec![owner], "the old primary follows the new one");
    assert_eq!(state(&cluster), before, "the new primary holds the same values and expiries");

    // Through the same cluster client: still limited, and no token appeared or vanished.
    let after = check(&mut con, victim, 5, 3600, 1, 5);
    assert_eq!((after.allowed, after.remaining), (false, 0), "a failover must not hand out a fresh burst");
    let (Some(retry), Some(was)) = (after.retry_after_ms, refused.retry_after_ms) else {
        panic!("a spent client can be admitted later: {after:?} (was {refused:?})")
    };
    assert!(retry > 0 && retry <= was, "retry after {retry} (was {was})");
    assert_eq!(tokens(&mut con, partial, 10, 3600, 10), 7);
    assert_eq!(state(&cluster), before, "a refused check writes nothing");
}
