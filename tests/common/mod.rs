//! Helpers shared by the cluster, durability and concurrency tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;

use testkit::redis::{self, ConnectionLike};

/// `RL.CHECK key limit window [COST cost] [BURST burst]` ->
/// `[allowed, remaining, retry_after_ms, reset_after_ms, burst]`.
pub fn check(con: &mut impl ConnectionLike, key: &str, limit: u64, window: u64, cost: u64, burst: u64) -> [i64; 5] {
    let reply: Vec<i64> = redis::cmd("RL.CHECK")
        .arg(key)
        .arg(limit)
        .arg(window)
        .arg("COST")
        .arg(cost)
        .arg("BURST")
        .arg(burst)
        .query(con)
        .unwrap_or_else(|e| panic!("RL.CHECK {key}: {e}"));
    reply.try_into().unwrap_or_else(|r| panic!("RL.CHECK {key} replied {r:?}"))
}

/// `RL.PEEK key limit window BURST burst`: what a cost-1 request would get, taking nothing.
pub fn peek(con: &mut impl ConnectionLike, key: &str, limit: u64, window: u64, burst: u64) -> [i64; 5] {
    let reply: Vec<i64> = redis::cmd("RL.PEEK")
        .arg(key)
        .arg(limit)
        .arg(window)
        .arg("BURST")
        .arg(burst)
        .query(con)
        .unwrap_or_else(|e| panic!("RL.PEEK {key}: {e}"));
    reply.try_into().unwrap_or_else(|r| panic!("RL.PEEK {key} replied {r:?}"))
}

/// Whole tokens left in the bucket now, by RL.PEEK (which answers for a cost-1 request:
/// `remaining` counts the tokens after that request, so it is one less when it would pass).
pub fn tokens(con: &mut impl ConnectionLike, key: &str, limit: u64, window: u64, burst: u64) -> i64 {
    let [allowed, remaining, ..] = peek(con, key, limit, window, burst);
    remaining + allowed
}

/// What the server holds for one key: the stored value and its absolute expiry in ms
/// (`PEXPIRETIME`: -1 without expiry, -2 when the key is missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub value: Option<String>,
    pub pexpiretime: i64,
}

/// `GET` and `PEXPIRETIME` of each key, in one round trip.
pub fn stored(con: &mut impl ConnectionLike, keys: &[String]) -> BTreeMap<String, Stored> {
    if keys.is_empty() {
        return BTreeMap::new();
    }
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("GET").arg(key).cmd("PEXPIRETIME").arg(key);
    }
    let replies: Vec<(Option<String>, i64)> = pipe.query(con).unwrap_or_else(|e| panic!("GET/PEXPIRETIME: {e}"));
    keys.iter().cloned().zip(replies.into_iter().map(|(value, pexpiretime)| Stored { value, pexpiretime })).collect()
}

/// Every key in the database (`SCAN`), sorted.
pub fn all_keys(con: &mut redis::Connection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(con)
        .unwrap_or_else(|e| panic!("SCAN: {e}"))
        .map(|k| k.unwrap_or_else(|e| panic!("SCAN item: {e}")))
        .collect();
    keys.sort_unstable();
    keys
}

/// Every key of the database with its value and expiry.
pub fn snapshot(con: &mut redis::Connection) -> BTreeMap<String, Stored> {
    let keys = all_keys(con);
    stored(con, &keys)
}

/// `WAIT replicas timeout` on `con`: blocks until `replicas` replicas acknowledged every write
/// made *through this connection* (WAIT waits for the connection's own last write, so it must
/// be the connection that wrote: on a fresh connection it returns at once).
pub fn wait_for_replicas(con: &mut redis::Connection, replicas: usize) {
    let acked: usize = redis::cmd("WAIT").arg(replicas).arg(10_000).query(con).unwrap_or_else(|e| panic!("WAIT: {e}"));
    assert_eq!(acked, replicas, "WAIT: only {acked} of {replicas} replicas acknowledged the writes");
}

/// The value of one `INFO` field, e.g. `info_field(con, "persistence", "aof_rewrite_in_progress")`.
pub fn info_field(con: &mut redis::Connection, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").arg(section).query(con).unwrap_or_else(|e| panic!("INFO {section}: {e}"));
    info.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_string()))
}
