//! Reading what a server holds and reports: stored keys with their expiries, `INFO` fields,
//! the server's version, and waiting for replicas to catch up.

use std::collections::BTreeMap;

use redis::ConnectionLike;

/// What the server holds for one key: the stored value and its absolute expiry in ms
/// (`PEXPIRETIME`: -1 without expiry, -2 when the key is missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub value: Option<String>,
    pub pexpiretime: i64,
}

impl Stored {
    /// `GET` and `PEXPIRETIME` of one key.
    pub fn of(con: &mut impl ConnectionLike, key: &str) -> Stored {
        let (value, pexpiretime): (Option<String>, i64) = redis::pipe()
            .cmd("GET")
            .arg(key)
            .cmd("PEXPIRETIME")
            .arg(key)
            .query(con)
            .unwrap_or_else(|e| panic!("GET/PEXPIRETIME {key}: {e}"));
        Stored { value, pexpiretime }
    }
}

/// The member that marks a sorted set as lease state (scored 0), as the module writes it.
pub const LEASE_MARKER: &str = "\0rl-leases";

/// What the server holds for one lease set: its members with their scores, lowest first, as
/// the server prints them (`ZRANGE key 0 -1 WITHSCORES`; the marker [`LEASE_MARKER`] first),
/// and its absolute expiry in ms (`PEXPIRETIME`: -1 without expiry, -2 when the key is missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLeases {
    pub members: Vec<(String, String)>,
    pub pexpiretime: i64,
}

impl StoredLeases {
    /// `ZRANGE key 0 -1 WITHSCORES` and `PEXPIRETIME key`.
    pub fn of(con: &mut impl ConnectionLike, key: &str) -> StoredLeases {
        let (flat, pexpiretime): (Vec<String>, i64) = redis::pipe()
            .cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("PEXPIRETIME")
            .arg(key)
            .query(con)
            .unwrap_or_else(|e| panic!("ZRANGE/PEXPIRETIME {key}: {e}"));
        let members = flat.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect();
        StoredLeases { members, pexpiretime }
    }

    /// The lease ids, earliest deadline first: every member but the marker.
    pub fn ids(&self) -> Vec<&str> {
        self.members.iter().map(|(id, _)| id.as_str()).filter(|&id| id != LEASE_MARKER).collect()
    }

    /// Whether the set holds the marker scored 0.
    pub fn is_marked(&self) -> bool {
        self.members.first().is_some_and(|(id, score)| id == LEASE_MARKER && score == "0")
    }
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

/// `WAIT replicas 10000` on `con`: blocks until `replicas` replicas acknowledged every write
/// made *through this connection* (WAIT waits for the connection's own last write, so it must
/// be the connection that wrote: on a fresh connection it returns at once). On a cluster, see
/// [`crate::Cluster::wait_for_replicas`].
pub fn wait_for_replicas(con: &mut impl ConnectionLike, replicas: usize) {
    let acked: usize = redis::cmd("WAIT").arg(replicas).arg(10_000).query(con).unwrap_or_else(|e| panic!("WAIT: {e}"));
    assert_eq!(acked, replicas, "WAIT: only {acked} of {replicas} replicas acknowledged the writes");
}

/// The value of one `INFO` field, e.g. `info_field(con, "persistence", "aof_rewrite_in_progress")`.
pub fn info_field(con: &mut impl ConnectionLike, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").arg(section).query(con).unwrap_or_else(|e| panic!("INFO {section}: {e}"));
    info.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

/// How many times the server ran `command` (`calls=` of `INFO commandstats`; 0 when never),
/// e.g. `command_calls(con, "RL.CHECK")`.
/// Where the library stands in for the module ([`crate::functions::library_instead_of_module`]),
/// a module command (`RL.*`, `CL.*`) is counted as all the `FCALL`s (`FCALL_RO`s for
/// `RL.PEEK`): the server does not count functions apart.
pub fn command_calls(con: &mut impl ConnectionLike, command: &str) -> u64 {
    let upper = command.to_ascii_uppercase();
    if crate::functions::library_instead_of_module() && (upper.starts_with("RL.") || upper.starts_with("CL.")) {
        return command_calls(con, if upper == "RL.PEEK" { "fcall_ro" } else { "fcall" });
    }
    let stats = info_field(con, "commandstats", &format!("cmdstat_{command}")).unwrap_or_default();
    let calls = stats.strip_prefix("calls=").and_then(|rest| rest.split(',').next());
    calls.map_or(0, |n| n.parse().unwrap_or_else(|e| panic!("calls of {command} in {stats:?}: {e}")))
}

/// `master_repl_offset`: how many bytes of writes the server has sent to its replication
/// stream so far (it moves exactly when something is propagated).
pub fn repl_offset(con: &mut impl ConnectionLike) -> u64 {
    let offset = info_field(con, "replication", "master_repl_offset");
    offset.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no master_repl_offset in INFO replication"))
}

/// `redis_version` as `(major, minor)`; Valkey reports the Redis version it is compatible
/// with (7.2 for Valkey 8).
pub fn redis_version(con: &mut impl ConnectionLike) -> (u32, u32) {
    let version = info_field(con, "server", "redis_version").unwrap_or_else(|| panic!("no redis_version in INFO"));
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or_else(|e| panic!("redis_version {version}: {e}")));
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => (major, minor),
        _ => panic!("redis_version {version} is not major.minor.patch"),
    }
}

/// Whether the server is Valkey (`server_name:valkey` in `INFO server`; Redis has no such field).
pub fn is_valkey(con: &mut impl ConnectionLike) -> bool {
    info_field(con, "server", "server_name").as_deref() == Some("valkey")
}
