//! Network faults between hosts, on one machine: [`Network`] is a private L2 segment (a bridge
//! in a namespace of its own) that the test process joins at `10.77.<n>.1` (a subnet no other
//! address of the machine is in), and every
//! [`Node`] is a network namespace on it at `10.77.<n>.<k>`, where a server or a gateway runs
//! as if on a host of its own (`ip netns exec`). Faults are made in the node's namespace, so
//! they touch nothing else on the machine:
//!
//! - [`Node::cut_off_from`]: packets to and from some addresses silently dropped (an `nft`
//!   rule; the harshest partition: no reset, no ICMP, senders wait and retransmit).
//! - [`Node::isolate`]: the same for every address (loopback inside the node still works).
//! - [`Node::heal`]: the rules removed.
//! - [`Node::link_down`] / [`Node::link_up`]: the node's link down (unreachable at once).
//! - [`Node::shape`]: a `tbf` qdisc on the node's link (bandwidth, queueing delay).
//!
//! (This kernel has no `netem` qdisc: latency, stalls and loss at the stream level come from
//! [`crate::Proxy`].) Needs root, `ip` (iproute2) and `nft` (nftables); `make test` installs
//! them. Names start with `rlt<pid>x`, so that a network left behind by a test binary killed
//! with `SIGKILL` is recognised as stale (its process is gone) and removed by the next one.
//! Dropping the [`Network`] deletes its namespaces, which deletes their links; a [`Node`]
//! only names its namespace and must not outlive the network, nor the processes run in it
//! (their guards kill them first when declared after the network).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// Networks made by this process so far (their names count them).
static NETWORKS: AtomicU8 = AtomicU8::new(0);

/// Subnets handed out by this process, so that its networks made at once never share one.
static TAKEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Runs `ip args...` (or another tool), panicking with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install iproute2 and nftables, as root): {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Like [`run`], for clean-up: failures are ignored (the thing may already be gone).
fn run_quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// A private segment joined by the test process: see the module's comment.
pub struct Network {
    prefix: String,
    subnet: u8,
    hub: String,
    nodes: Mutex<Vec<String>>,
}

/// One namespace on a [`Network`], with its address there.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub addr: Ipv4Addr,
    /// The node's end of its link (inside its namespace).
    link: String,
}

impl Network {
    /// A new segment `10.77.<n>.0/24`, the test process at `10.77.<n>.1`.
    pub fn new() -> Network {
        remove_stale();
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let subnet = free_subnet();
        let prefix = format!("rlt{}x{n}", std::process::id());
        let hub = format!("{prefix}hub");
        run("ip", &["netns", "add", &hub]);
        let network = Network { prefix: prefix.clone(), subnet, hub: hub.clone(), nodes: Mutex::new(Vec::new()) };
        // From here on the drop removes what was made, also if a step below fails.
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &hub, "link", "set", "br0", "up"]);
        // The test process's own link onto the bridge (its end lives in the root namespace and
        // goes when the hub's end is deleted with the hub).
        let root_end = format!("{prefix}r");
        run("ip", &["link", "add", &root_end, "type", "veth", "peer", "name", "p0", "netns", &hub]);
        run("ip", &["addr", "add", &format!("10.77.{subnet}.1/24"), "dev", &root_end]);
        run("ip", &["link", "set", &root_end, "up"]);
        run("ip", &["-n", &hub, "link", "set", "p0", "master", "br0"]);
        run("ip", &["-n", &hub, "link", "set", "p0", "up"]);
        network
    }

    /// The test process's address on this segment.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// A new namespace on the segment, at the next address (`.2`, `.3`, ...).
    pub fn node(&self, name: &str) -> Node {
        let mut nodes = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = u8::try_from(nodes.len() + 2).expect("at most 250 nodes");
        let netns = format!("{}n{k}", self.prefix);
        run("ip", &["netns", "add", &netns]);
        nodes.push(netns.clone());
        let (link, hub_end) = ("eth0".to_string(), format!("p{k}"));
        run("ip", &["-n", &netns, "link", "add", &link, "type", "veth", "peer", "name", &hub_end, "netns", &self.hub]);
        let addr = Ipv4Addr::new(10, 77, self.subnet, k);
        run("ip", &["-n", &netns, "addr", "add", &format!("{addr}/24"), "dev", &link]);
        run("ip", &["-n", &netns, "link", "set", &link, "up"]);
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        run("ip", &["-n", &self.hub, "link", "set", &hub_end, "master", "br0"]);
        run("ip", &["-n", &self.hub, "link", "set", &hub_end, "up"]);
        Node { name: name.to_string(), netns, addr, link }
    }
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for netns in self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..) {
            run_quietly("ip", &["netns", "del", &netns]);
        }
        run_quietly("ip", &["netns", "del", &self.hub]);
        TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|s| *s != self.subnet);
    }
}

/// A `10.77.<n>.0/24` no address of this machine is in (another test binary may run at the
/// same time) and this process has not handed out, starting at a place that depends on the
/// process id.
fn free_subnet() -> u8 {
    let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().map(|o| o.stdout).unwrap_or_default();
    let used = String::from_utf8_lossy(&out).into_owned();
    let mut taken = TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let start = std::process::id() % 240;
    let subnet = (0..240u32)
        .filter_map(|i| u8::try_from(10 + (start + i) % 240).ok())
        .find(|n| !taken.contains(n) && !used.contains(&format!(" 10.77.{n}.")))
        .expect("a free 10.77.<n>.0/24");
    taken.push(subnet);
    subnet
}

/// Deletes the namespaces of networks whose test binary is gone (killed before it could).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix("rlt").and_then(|rest| rest.split('x').next()) else { continue };
        let alive = pid.parse::<u32>().is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            run_quietly("ip", &["netns", "del", name]);
        }
    }
}

impl Node {
    /// `program` to be run inside the node (`ip netns exec <netns> program`): add its
    /// arguments and spawn it (e.g. with [`crate::ChildGuard::spawn`]).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }

    /// Silently drops every packet between this node and `peers` (both ways), until
    /// [`Node::heal`]. Connections stay open on both sides; what is sent is retransmitted
    /// into the void.
    pub fn cut_off_from(&self, peers: &[Ipv4Addr]) {
        self.reset_rules();
        for peer in peers {
            self.nft(&format!("add rule inet rlt in ip saddr {peer} drop"));
            self.nft(&format!("add rule inet rlt out ip daddr {peer} drop"));
        }
    }

    /// Silently drops every packet on the node's link (its loopback still works).
    pub fn isolate(&self) {
        self.reset_rules();
        self.nft(&format!("add rule inet rlt in iifname {} drop", self.link));
        self.nft(&format!("add rule inet rlt out oifname {} drop", self.link));
    }

    /// Removes what [`Node::cut_off_from`] or [`Node::isolate`] set.
    pub fn heal(&self) {
        run_quietly("ip", &["netns", "exec", &self.netns, "nft", "delete", "table", "inet", "rlt"]);
    }

    /// Sets the node's link down: unreachable, and its own sends fail at once.
    pub fn link_down(&self) {
        run("ip", &["-n", &self.netns, "link", "set", &self.link, "down"]);
    }

    pub fn link_up(&self) {
        run("ip", &["-n", &self.netns, "link", "set", &self.link, "up"]);
    }

    /// What leaves the node goes at most `rate` (a `tc` rate, e.g. `"1mbit"`) through a queue
    /// that holds at most `latency` (e.g. `"200ms"`) of it; `None` removes the shaping.
    pub fn shape(&self, shaping: Option<(&str, &str)>) {
        run_quietly("ip", &["netns", "exec", &self.netns, "tc", "qdisc", "del", "dev", &self.link, "root"]);
        if let Some((rate, latency)) = shaping {
            let args = [
                "netns",
                "exec",
                &self.netns,
                "tc",
                "qdisc",
                "add",
                "dev",
                &self.link,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "32kbit",
                "latency",
                latency,
            ];
            run("ip", &args);
        }
    }

    /// A fresh `inet rlt` table with an input and an output chain, no rules yet.
    fn reset_rules(&self) {
        self.heal();
        self.nft("add table inet rlt");
        self.nft("add chain inet rlt in { type filter hook input priority 0; policy accept; }");
        self.nft("add chain inet rlt out { type filter hook output priority 0; policy accept; }");
    }

    fn nft(&self, rule: &str) {
        let words: Vec<&str> = rule.split(' ').collect();
        let mut args = vec!["netns", "exec", &self.netns, "nft"];
        args.extend(words);
        run("ip", &args);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    /// Whether a TCP connection to `addr` opens within 300 ms.
    fn reaches(addr: SocketAddr) -> bool {
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    }

    #[test]
    fn a_node_is_reached_over_the_segment_and_faults_cut_it_and_heal() {
        let network = Network::new();
        let node = network.node("server");
        // A listener inside the node (the test binary itself, as `nc` may be missing: a
        // redis-server would do as well; a short Python one-liner keeps it dependency-free).
        let script = "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                      s.bind(('0.0.0.0',7777))\ns.listen(64)\nwhile True:\n  c,_=s.accept()\n";
        let mut cmd = node.command("python3");
        cmd.args(["-c", script]);
        let _listener = crate::ChildGuard::spawn("listener", cmd);
        let addr = SocketAddr::from((node.addr, 7777));
        assert!(crate::wait_until(std::time::Instant::now() + Duration::from_secs(5), || reaches(addr)));
        node.isolate();
        assert!(!reaches(addr), "isolated");
        node.heal();
        assert!(reaches(addr), "healed");
        node.cut_off_from(&[network.host_addr()]);
        assert!(!reaches(addr), "cut off from the test process");
        node.heal();
        node.link_down();
        assert!(!reaches(addr), "link down");
        node.link_up();
        assert!(crate::wait_until(std::time::Instant::now() + Duration::from_secs(5), || reaches(addr)));
        // Loopback inside an isolated node still works: nothing else is touched either.
        node.isolate();
        let local = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(reaches(local.local_addr().unwrap()), "the machine's own loopback is untouched");
        let netns = node.netns.clone();
        drop(network);
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&netns), "removed on drop");
    }
}
