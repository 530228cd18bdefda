//! A real Redis Cluster on loopback, formed with plain cluster commands.
//!
//! [`Cluster::start`] starts `primaries × (1 + replicas)` [`RedisServer`]s with
//! `cluster-enabled yes` (and the module loaded), then forms the cluster the way
//! `redis-cli --cluster create` does, but without `redis-cli`, so it works identically with
//! `valkey-server`:
//!
//! 1. each primary gets a distinct config epoch (`CLUSTER SET-CONFIG-EPOCH`) and an even
//!    share of the 16384 slots (`CLUSTER ADDSLOTSRANGE`);
//! 2. the first node `CLUSTER MEET`s every other one, and gossip does the rest;
//! 3. once every node knows every other, each replica `CLUSTER REPLICATE`s its primary;
//! 4. the harness waits until every node reports `cluster_state:ok`, sees every node as
//!    connected and healthy, agrees with every other node on the roles and the slot map,
//!    and every replica's link to its primary is up.
//!
//! Dropping the cluster kills every node (each [`RedisServer`] kills its process on drop).

use std::time::{Duration, Instant};

use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use crate::commands::describe;
use crate::{info_field, redis, wait_until, RedisServer, ServerBuilder};

mod nodes;

use nodes::{parse_node_line, roles_and_slots, View};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How long forming the cluster or a failover may take before the harness gives up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start a cluster. Build with [`Cluster::builder`].
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    primaries: usize,
    replicas: usize,
    node: ServerBuilder,
    /// Where each node runs, in node order (see [`ClusterBuilder::on_nodes`]); else 127.0.0.1.
    hosts: Vec<crate::Node>,
}

impl ClusterBuilder {
    /// Number of primaries: one (a cluster of one node, which owns every slot), or three or
    /// more (the smallest cluster that can elect a new primary, see [`Cluster::failover`]).
    pub fn primaries(mut self, primaries: usize) -> Self {
        self.primaries = primaries;
        self
    }

    /// Number of replicas of each primary.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Nodes without the module (for the Functions library).
    pub fn without_module(mut self) -> Self {
        self.node = self.node.without_module();
        self
    }

    /// Runs node `i` on `hosts[i]` of a [`crate::Network`] (one per node: primaries first,
    /// then replicas), so that a node can be cut off from the others and from clients.
    pub fn on_nodes(mut self, hosts: &[crate::Node]) -> Self {
        self.hosts = hosts.to_vec();
        self
    }

    /// Adds a config directive to every node, e.g. `.arg("appendonly", "yes")`.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.node = self.node.arg(name, value);
        self
    }

    pub fn start(self) -> Cluster {
        assert!(
            self.primaries == 1 || self.primaries >= 3,
            "a cluster has 1 primary or at least 3 (to elect a new one), got {}",
            self.primaries
        );
        let total = self.primaries * (1 + self.replicas);
        let node = self
            .node
            .arg("cluster-enabled", "yes")
            .arg("cluster-config-file", "nodes.conf")
            .arg("cluster-node-timeout", "2000");
        // Starting a server is mostly waiting for it to answer: start them side by side.
        assert!(self.hosts.is_empty() || self.hosts.len() == total, "one host per node: {total}");
        let hosts = &self.hosts;
        let nodes: Vec<RedisServer> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..total)
                .map(|i| {
                    let node = match hosts.get(i) {
                        Some(host) => node.clone().on_node(host),
                        None => node.clone(),
                    };
                    scope.spawn(move || node.start())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        });
        let ids = nodes.iter().map(|n| query::<String>(n, redis::cmd("CLUSTER").arg("MYID"))).collect();
        let cluster = Cluster { nodes, ids, primaries: self.primaries, replicas: self.replicas };
        cluster.form();
        cluster
    }
}

/// A running cluster: nodes `0..primaries` start as primaries, and node
/// `primaries + p * replicas + r` starts as replica `r` of primary `p`. Roles change with
/// [`Cluster::failover`]; [`Cluster::primary_indices`] and friends report the current ones.
pub struct Cluster {
    nodes: Vec<RedisServer>,
    ids: Vec<String>,
    primaries: usize,
    replicas: usize,
}

impl Cluster {
    /// `primaries` primaries with `replicas` replicas each, formed and healthy.
    pub fn start(primaries: usize, replicas: usize) -> Cluster {
        Self::builder().primaries(primaries).replicas(replicas).start()
    }

    /// Three primaries, no replicas, the module loaded on every node.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder { primaries: 3, replicas: 0, node: RedisServer::builder(), hosts: Vec::new() }
    }

    /// Every node, in the order described on [`Cluster`].
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub fn node_id(&self, index: usize) -> &str {
        &self.ids[index]
    }

    /// `host:port` seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// A cluster-aware client seeded with every node.
    pub fn cluster_client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::builder(self.urls())
            .retries(10)
            .build()
            .unwrap_or_else(|e| panic!("build a cluster client: {e}"))
    }

    /// A new cluster-aware connection (it follows `MOVED`/`ASK` and re-reads the slot map).
    pub fn cluster_connection(&self) -> redis::cluster::ClusterConnection {
        self.cluster_client().get_connection().unwrap_or_else(|e| panic!("connect to the cluster: {e}"))
    }

    /// The hash slot of `key`, as the server computes it (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        query(&self.nodes[0], redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
    }

    /// The hash slots of many keys, in one round trip.
    pub fn keyslots(&self, keys: &[String]) -> Vec<u16> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("CLUSTER").arg("KEYSLOT").arg(key);
        }
        pipe.query(&mut self.nodes[0].client()).unwrap_or_else(|e| panic!("CLUSTER KEYSLOT: {e}"))
    }

    /// The slot map as node 0 sees it now: `(first, last, index of the owning primary)`,
    /// sorted by slot.
    pub fn slot_map(&self) -> Vec<(u16, u16, usize)> {
        let view = self.view(0);
        let mut map: Vec<(u16, u16, usize)> = view
            .iter()
            .filter(|(_, line)| line.is_primary())
            .flat_map(|(id, line)| {
                let index = self.index_of_id(id);
                line.slots.iter().map(move |&(first, last)| (first, last, index))
            })
            .collect();
        map.sort_unstable();
        map
    }

    /// Index of the primary that owns `slot` now.
    pub fn slot_owner(&self, slot: u16) -> usize {
        self.slot_map()
            .into_iter()
            .find(|&(first, last, _)| (first..=last).contains(&slot))
            .map(|(_, _, index)| index)
            .unwrap_or_else(|| panic!("slot {slot} is not assigned"))
    }

    /// Index of the primary that owns the slot of `key` now.
    pub fn owner_index(&self, key: &str) -> usize {
        self.slot_owner(self.keyslot(key))
    }

    /// The primary that owns the slot of `key` now.
    pub fn owner_of(&self, key: &str) -> &RedisServer {
        &self.nodes[self.owner_index(key)]
    }

    /// Indices of the current primaries (that own slots), in node order.
    pub fn primary_indices(&self) -> Vec<usize> {
        let view = self.view(0);
        let mut out: Vec<usize> = view
            .iter()
            .filter(|(_, line)| line.is_primary() && !line.slots.is_empty())
            .map(|(id, _)| self.index_of_id(id))
            .collect();
        out.sort_unstable();
        out
    }

    /// Indices of the current replicas of the primary at `primary`.
    pub fn replica_indices(&self, primary: usize) -> Vec<usize> {
        let view = self.view(0);
        let id = &self.ids[primary];
        let mut out: Vec<usize> = view
            .iter()
            .filter(|(_, line)| line.primary.as_deref() == Some(id.as_str()))
            .map(|(replica, _)| self.index_of_id(replica))
            .collect();
        out.sort_unstable();
        out
    }

    /// Promotes the replica at `replica` with `CLUSTER FAILOVER` (the coordinated manual
    /// failover: its primary stops writes, the replica catches up, then takes over), and
    /// waits until it owns its former primary's slots in every node's view, the old primary
    /// follows it, and the cluster is healthy again.
    pub fn failover(&self, replica: usize) {
        assert!(self.primaries >= 3, "a failover needs at least 3 primaries to elect the replica");
        let view = self.view(replica);
        let line = &view[&self.ids[replica]];
        let old_primary_id =
            line.primary.clone().unwrap_or_else(|| panic!("node {replica} is not a replica: {:?}", line.flags));
        let old_primary = self.index_of_id(&old_primary_id);
        let slots = view[&old_primary_id].slots.clone();
        let reply: String = query(&self.nodes[replica], redis::cmd("CLUSTER").arg("FAILOVER"));
        assert_eq!(reply, "OK", "CLUSTER FAILOVER on node {replica}");
        self.converge(&format!("node {replica} to take over from node {old_primary}"), |views| {
            let new_id = &self.ids[replica];
            views.iter().all(|view| {
                view.get(new_id).is_some_and(|l| l.is_primary() && l.slots == slots)
                    && view.get(&old_primary_id).is_some_and(|l| l.primary.as_deref() == Some(new_id.as_str()))
            }) && link_up(&self.nodes[old_primary])
        });
    }

    /// `WAIT replicas 10000` sent to the primary at `primary` over `con`'s own link to it: that
    /// link made the writes, and WAIT waits for the last write of the connection it arrives on.
    /// Panics unless `replicas` replicas acknowledged.
    pub fn wait_for_replicas(&self, con: &mut redis::cluster::ClusterConnection, primary: usize, replicas: usize) {
        let port = self.nodes[primary].port();
        let host = self.nodes[primary].host().to_string();
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        let acked = con
            .route_command(redis::cmd("WAIT").arg(replicas).arg(10_000), routing)
            .unwrap_or_else(|e| panic!("WAIT on {port}: {e}"));
        assert_eq!(acked, redis::Value::Int(replicas as i64), "WAIT on {port}: replicas that acknowledged the writes");
    }

    /// Forms the cluster (see the module documentation).
    fn form(&self) {
        let per = usize::from(SLOTS).div_ceil(self.primaries);
        for p in 0..self.primaries {
            let first = p * per;
            let last = ((p + 1) * per).min(usize::from(SLOTS)) - 1;
            let ok: String = query(&self.nodes[p], redis::cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(p + 1));
            assert_eq!(ok, "OK");
            let ok: String = query(&self.nodes[p], redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(first).arg(last));
            assert_eq!(ok, "OK");
        }
        for node in &self.nodes[1..] {
            let ok: String =
                query(&self.nodes[0], redis::cmd("CLUSTER").arg("MEET").arg(node.host().to_string()).arg(node.port()));
            assert_eq!(ok, "OK");
        }
        // A replica can only follow a primary it knows.
        self.converge("every node to know every other", |_| true);
        for p in 0..self.primaries {
            for r in 0..self.replicas {
                let replica = self.primaries + p * self.replicas + r;
                let ok: String = query(&self.nodes[replica], redis::cmd("CLUSTER").arg("REPLICATE").arg(&self.ids[p]));
                assert_eq!(ok, "OK");
            }
        }
        self.converge("replicas to follow their primaries", |views| {
            views.iter().all(|view| {
                (0..self.primaries).all(|p| {
                    (0..self.replicas).all(|r| {
                        let replica = &self.ids[self.primaries + p * self.replicas + r];
                        view.get(replica).is_some_and(|l| l.primary.as_deref() == Some(self.ids[p].as_str()))
                    })
                })
            }) && self.nodes[self.primaries..].iter().all(link_up)
        });
    }

    /// Polls every node until the cluster is healthy and `extra` holds for the views, or
    /// panics with every node's view after [`CONVERGE_TIMEOUT`].
    ///
    /// Healthy: every node reports `cluster_state:ok`, knows every node, sees each as
    /// connected and not failing, and all views agree on roles and slots.
    fn converge(&self, what: &str, extra: impl Fn(&[View]) -> bool) {
        let converged = wait_until(Instant::now() + CONVERGE_TIMEOUT, || {
            let views: Vec<View> = (0..self.nodes.len()).map(|i| self.view(i)).collect();
            let healthy = self.nodes.iter().all(|n| {
                let info: String = query(n, redis::cmd("CLUSTER").arg("INFO"));
                info.contains("cluster_state:ok")
            }) && views.iter().enumerate().all(|(i, view)| {
                view.len() == self.nodes.len()
                    && view.iter().all(|(id, line)| line.is_healthy() && (line.connected || *id == self.ids[i]))
            }) && views.windows(2).all(|pair| roles_and_slots(&pair[0]) == roles_and_slots(&pair[1]));
            healthy && extra(&views)
        });
        if !converged {
            let mut report = format!("the cluster did not converge ({what}) within {CONVERGE_TIMEOUT:?}\n");
            for node in &self.nodes {
                let nodes: String = query(node, redis::cmd("CLUSTER").arg("NODES"));
                report.push_str(&format!("--- CLUSTER NODES on {} ---\n{nodes}{}\n", node.port(), node.log_tail()));
            }
            panic!("{report}");
        }
    }

    /// `CLUSTER NODES` on node `index`, parsed.
    fn view(&self, index: usize) -> View {
        let text: String = query(&self.nodes[index], redis::cmd("CLUSTER").arg("NODES"));
        text.lines().filter(|l| !l.trim().is_empty()).map(parse_node_line).collect()
    }

    fn index_of_id(&self, id: &str) -> usize {
        self.ids.iter().position(|known| known == id).unwrap_or_else(|| panic!("unknown node id {id}"))
    }
}

fn query<T: redis::FromRedisValue>(node: &RedisServer, cmd: &mut redis::Cmd) -> T {
    let mut con = node.client();
    cmd.query(&mut con)
        .unwrap_or_else(|e| panic!("{} on port {}: {e}\n{}", describe(cmd), node.port(), node.log_tail()))
}

/// Whether the replica's link to its primary is up (`master_link_status:up`).
fn link_up(node: &RedisServer) -> bool {
    info_field(&mut node.client(), "replication", "master_link_status").as_deref() == Some("up")
}
