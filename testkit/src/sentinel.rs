//! Redis Sentinel on loopback: a primary with the module, one replica and three sentinels
//! ([`SentinelGroup`]), each sentinel a real `<server> --sentinel` process (the server binary
//! under test, so `valkey-server` under Valkey), with a short failure detection so that a
//! failover takes a few seconds.
//!
//! [`SentinelGroup::start`] waits until every sentinel monitors the primary, knows the
//! replica and the two other sentinels (without which no quorum, hence no failover, is
//! possible). [`SentinelGroup::kill`] crashes a server, [`SentinelGroup::freeze`] hangs it,
//! [`SentinelGroup::failover`] asks for a failover; [`SentinelGroup::wait_for_promotion`]
//! waits until every sentinel names another server as the primary and that server calls
//! itself one. Dropping the group kills every process (sentinels and servers), also when a
//! test panics.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_port, info_field, redis, server_binary, wait_until, ChildGuard, Proxy, RedisServer, ServerBuilder};

const LOCALHOST: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

/// The name the sentinels monitor the primary under.
pub const MASTER_NAME: &str = "rl-primary";

/// Sentinels that must agree the primary is down before one of them fails it over.
pub const QUORUM: usize = 2;

/// How long a sentinel waits for an answer before it holds the primary down.
pub const DOWN_AFTER_MS: u64 = 500;

/// A failover that did not finish is tried again after twice this (Sentinel's rule).
pub const FAILOVER_TIMEOUT_MS: u64 = 2000;

/// How long the sentinels may take to discover each other and the replica.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a failover may take before the harness gives up (a lost election is retried
/// after 2 × [`FAILOVER_TIMEOUT_MS`]).
const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// A primary, a replica and three sentinels (quorum [`QUORUM`]) monitoring the primary as
/// [`MASTER_NAME`]. Server 0 starts as the primary, server 1 as its replica.
pub struct SentinelGroup {
    servers: Vec<RedisServer>,
    /// Killed or frozen by the test: never the promoted one.
    down: Vec<bool>,
    sentinels: Vec<Sentinel>,
}

/// One `--sentinel` process on 127.0.0.1 (or a [`crate::Network`]'s host address) in its own
/// directory (it rewrites its config file).
struct Sentinel {
    host: std::net::Ipv4Addr,
    port: u16,
    dir: tempfile::TempDir,
    _process: ChildGuard,
}

impl SentinelGroup {
    /// Starts the servers (the module loaded on both) and the sentinels, and waits until the
    /// sentinels are ready to fail over.
    pub fn start() -> SentinelGroup {
        Self::start_with(RedisServer::builder())
    }

    /// Like [`SentinelGroup::start`], both servers started from `server`.
    pub fn start_with(server: ServerBuilder) -> SentinelGroup {
        let primary = server.clone().start();
        let replica = server.start_replica_of(&primary);
        let sentinels = (0..3).map(|_| Sentinel::start(LOCALHOST, (LOCALHOST, primary.port()))).collect();
        let group = SentinelGroup { servers: vec![primary, replica], down: vec![false, false], sentinels };
        group.wait_for_discovery();
        group
    }

    /// Like [`SentinelGroup::start`], with the primary on `primary_node` and the replica on
    /// `replica_node` of `network`, and the sentinels in the test's own namespace on the
    /// network's host address: cutting a node off from the others (e.g. the primary from its
    /// replica and the sentinels) partitions them as hosts would be.
    pub fn start_on_nodes(
        network: &crate::Network,
        primary_node: &crate::Node,
        replica_node: &crate::Node,
    ) -> SentinelGroup {
        let primary = RedisServer::builder().on_node(primary_node).start();
        let replica = RedisServer::builder().on_node(replica_node).start_replica_of(&primary);
        let sentinels =
            (0..3).map(|_| Sentinel::start(network.host_addr(), (primary.host(), primary.port()))).collect();
        let group = SentinelGroup { servers: vec![primary, replica], down: vec![false, false], sentinels };
        group.wait_for_discovery();
        group
    }

    /// Like [`SentinelGroup::start`], with the sentinels monitoring the primary through a
    /// [`Proxy`] in front of it: clients that ask the sentinels for the primary reach it through
    /// the proxy, whose faults they then see (the replica replicates directly).
    pub fn start_behind_proxy() -> (SentinelGroup, Proxy) {
        let primary = RedisServer::builder().start();
        let proxy = Proxy::start_anywhere(primary.port());
        let replica = RedisServer::builder().start_replica_of(&primary);
        let sentinels = (0..3).map(|_| Sentinel::start(LOCALHOST, (LOCALHOST, proxy.port()))).collect();
        let group = SentinelGroup { servers: vec![primary, replica], down: vec![false, false], sentinels };
        group.wait_for_discovery();
        (group, proxy)
    }

    /// `redis://<host>:<port>` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| format!("redis://{}:{}", s.host, s.port)).collect()
    }

    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// Server `index` (0 started as the primary, 1 as its replica).
    pub fn server(&self, index: usize) -> &RedisServer {
        &self.servers[index]
    }

    /// The index of the server every sentinel names as the primary right now; panics when
    /// they disagree or name another.
    pub fn primary_index(&self) -> usize {
        let ports: Vec<Option<u16>> = self.sentinels.iter().map(Sentinel::master_port).collect();
        let first = ports[0];
        assert!(ports.iter().all(|p| *p == first), "the sentinels disagree on the primary: {ports:?}");
        self.index_of(first).unwrap_or_else(|| panic!("the sentinels name port {first:?}, not one of the servers"))
    }

    /// Crashes server `index` (SIGKILL): nothing is saved, and it stays down.
    pub fn kill(&mut self, index: usize) {
        self.servers[index].kill();
        self.down[index] = true;
    }

    /// Stops server `index` (SIGSTOP) as a hung or cut-off server: its port still accepts
    /// connections, but nothing is answered and nothing is closed. It stays so until the group
    /// drops (SIGKILL ends a stopped process too).
    pub fn freeze(&mut self, index: usize) {
        let pid = info_field(&mut self.servers[index].client(), "server", "process_id")
            .unwrap_or_else(|| panic!("no process_id in INFO server"));
        let status = Command::new("kill").args(["-STOP", &pid]).status().unwrap_or_else(|e| panic!("run kill: {e}"));
        assert!(status.success(), "kill -STOP {pid} failed");
        self.down[index] = true;
    }

    /// `SENTINEL FAILOVER`: a sentinel promotes the replica and turns the primary into its
    /// replica, both running all along (wait with [`SentinelGroup::wait_for_promotion`]).
    pub fn failover(&self) {
        let mut con = self.sentinels[0].connection().unwrap_or_else(|| panic!("sentinel down\n{}", self.logs()));
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query(&mut con)
            .unwrap_or_else(|e| panic!("SENTINEL FAILOVER: {e}\n{}", self.logs()));
    }

    /// Waits until [`SentinelGroup::promoted_from`] names a server; returns its index and when
    /// that was first seen.
    pub fn wait_for_promotion(&self, old: usize) -> (usize, Instant) {
        let mut promoted = None;
        let done = wait_until(Instant::now() + FAILOVER_WAIT, || {
            promoted = self.promoted_from(old).map(|index| (index, Instant::now()));
            promoted.is_some()
        });
        assert!(done, "no failover from server {old} in {FAILOVER_WAIT:?}\n{}", self.logs());
        promoted.unwrap_or_else(|| unreachable!("wait_until returned true"))
    }

    /// The server that replaced `old` as the primary, once every sentinel names it and its
    /// `ROLE` is `master`; `None` until then (asks without waiting).
    pub fn promoted_from(&self, old: usize) -> Option<usize> {
        let ports: Vec<Option<u16>> = self.sentinels.iter().map(Sentinel::master_port).collect();
        let index = self.index_of(ports[0])?;
        let agreed = index != old && !self.down[index] && ports.iter().all(|p| *p == ports[0]);
        (agreed && role(&self.servers[index]).as_deref() == Some("master")).then_some(index)
    }

    /// The sentinels' logs and the live servers' log tails, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for sentinel in &self.sentinels {
            out.push_str(&sentinel.log_tail());
        }
        for (server, down) in self.servers.iter().zip(&self.down) {
            if !down {
                out.push_str(&server.log_tail());
                out.push('\n');
            }
        }
        out
    }

    fn index_of(&self, port: Option<u16>) -> Option<usize> {
        let port = port?;
        self.servers.iter().position(|s| s.port() == port)
    }

    /// Each sentinel must monitor the primary, see it up, know the replica and the two other
    /// sentinels (they find each other through hello messages on the primary, every 2 s).
    fn wait_for_discovery(&self) {
        let ready = wait_until(Instant::now() + DISCOVERY_TIMEOUT, || {
            self.sentinels.iter().all(|s| {
                let Some(master) = s.master_info() else { return false };
                let field = |name: &str| master.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
                field("flags") == Some("master")
                    && field("num-slaves") == Some("1")
                    && field("num-other-sentinels") == Some("2")
            })
        });
        assert!(ready, "the sentinels never discovered each other and the replica\n{}", self.logs());
    }
}

impl Sentinel {
    /// A sentinel listening on `host`, monitoring the primary at `primary`.
    fn start(host: std::net::Ipv4Addr, (primary_host, primary_port): (std::net::Ipv4Addr, u16)) -> Sentinel {
        let dir = tempfile::Builder::new().prefix("rl-test-sentinel-").tempdir().expect("create a sentinel directory");
        let port = free_port();
        let config = format!(
            "port {port}\nbind {host}\ndaemonize no\ndir {dir}\nlogfile {log}\n\
             sentinel monitor {MASTER_NAME} {primary_host} {primary_port} {QUORUM}\n\
             sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.path().display(),
            log = dir.path().join("sentinel.log").display(),
        );
        let config_path = dir.path().join("sentinel.conf");
        fs::write(&config_path, config).unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let binary = server_binary();
        let mut cmd = Command::new(&binary);
        cmd.arg(&config_path).arg("--sentinel");
        let mut process = ChildGuard::try_spawn_logging_to("sentinel", cmd, dir.path()).unwrap_or_else(|e| {
            panic!("cannot start `{binary} --sentinel`: {e}. Install redis-server or set RL_SERVER_BIN")
        });
        let mut exited = None;
        let answered = wait_until(Instant::now() + DISCOVERY_TIMEOUT, || {
            exited = process.exited();
            exited.is_some() || ping(host, port)
        });
        let sentinel = Sentinel { host, port, dir, _process: process };
        assert!(exited.is_none(), "sentinel exited at start ({exited:?})\n{}", sentinel.log_tail());
        assert!(answered, "sentinel did not answer PING in time\n{}", sentinel.log_tail());
        sentinel
    }

    fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://{}:{}/", self.host, self.port)).ok()?;
        client.get_connection_with_timeout(Duration::from_millis(500)).ok()
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME`: the port of the server it names as the primary.
    fn master_port(&self) -> Option<u16> {
        let mut con = self.connection()?;
        let addr: Option<(String, String)> =
            redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(MASTER_NAME).query(&mut con).ok()?;
        addr?.1.parse().ok()
    }

    /// `SENTINEL MASTER`: what it knows of the primary, as field/value pairs.
    fn master_info(&self) -> Option<Vec<(String, String)>> {
        let mut con = self.connection()?;
        let flat: Vec<String> = redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME).query(&mut con).ok()?;
        Some(flat.chunks(2).filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone()))).collect())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(40);
        let printed = read(&self.dir.path().join("sentinel.stderr"));
        format!("--- sentinel {} log ---\n{}\n{printed}\n", self.port, lines[from..].join("\n"))
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn ping(host: std::net::Ipv4Addr, port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://{host}:{port}/")) else { return false };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(500)) else { return false };
    redis::cmd("PING").query::<String>(&mut con).is_ok()
}

/// The first element of `ROLE` (`master`, `slave`), or `None` when the server does not answer.
fn role(server: &RedisServer) -> Option<String> {
    let client = redis::Client::open(server.url()).ok()?;
    let mut con = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).ok()?;
    match role.first()? {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_is_promoted_when_the_primary_dies_and_keeps_what_was_replicated() {
        let mut group = SentinelGroup::start();
        assert_eq!(group.primary_index(), 0);
        let mut primary = group.server(0).client();
        let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut primary).unwrap();
        crate::wait_for_replicas(&mut primary, 1);
        let killed_at = Instant::now();
        group.kill(0);
        let (promoted, at) = group.wait_for_promotion(0);
        assert_eq!(promoted, 1);
        assert_eq!(group.primary_index(), 1);
        let value: String = redis::cmd("GET").arg("k").query(&mut group.server(1).client()).unwrap();
        assert_eq!(value, "v");
        println!("failover took {} ms", (at - killed_at).as_millis());
    }
}
