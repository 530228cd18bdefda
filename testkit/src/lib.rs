//! The one test kit: everything the module's tests, the gateway's tests and the benchmarks use
//! to start, drive and inspect real processes. A test file defines only what is about its own
//! subject; a helper that a second file could use belongs here.
//!
//! What is where:
//! - **Servers** ([`server`]): [`RedisServer`] is a real `redis-server` (or `valkey-server`)
//!   with the module loaded, on a free port on 127.0.0.1 in its own temporary directory;
//!   [`ServerBuilder`] adds config directives, module arguments, replicas
//!   ([`ServerBuilder::start_replica_of`]). Restart, crash ([`RedisServer::kill`]) and respawn
//!   keep the port, directory and config.
//! - **Clusters** ([`cluster`]): [`Cluster`] forms a real Redis Cluster (one node, or three or
//!   more primaries with replicas), reports slot owners and roles, runs a failover, and waits
//!   for replicas over a cluster connection.
//! - **Sentinel** ([`sentinel`]): [`SentinelGroup`], a primary with the module, one replica
//!   and three real `--sentinel` processes (quorum 2, 500 ms to hold a server down); crash the
//!   primary and wait for the promotion.
//! - **Typed commands** ([`commands`]): [`check`], [`peek`], [`tokens`] for a limiter given
//!   as numbers; [`rl_check`], [`rl_peek`], [`rl_checkall`], [`rl_refund`], [`rl_reset`],
//!   [`cl_throttle`] for arguments exactly as written; [`rl_acquire`], [`rl_release`],
//!   [`rl_renew`] for concurrency leases. Replies are the typed values of
//!   [`reply`] (the `rl-protocol` crate): [`CheckReply`], [`CheckAllReply`], [`RefundReply`],
//!   [`ThrottleReply`], [`AcquireReply`].
//! - **The Functions library** ([`functions`]): its source (also with a test clock), loading
//!   it, and running a module command line as `FCALL` or `EVALSHA` ([`functions::command`]).
//! - **Inspection** ([`inspect`]): what a server holds ([`Stored`], [`stored`], [`snapshot`],
//!   [`all_keys`]; [`StoredLeases`] for a lease set), what it reports ([`info_field`], [`command_calls`],
//!   [`repl_offset`], [`redis_version`], [`is_valkey`]), and [`wait_for_replicas`] (`WAIT`).
//! - **Processes** ([`process`]): [`ChildGuard`] runs any binary with its output in files and
//!   kills it on drop; the gateway's tests run the `gateway` binary with it.
//! - **Envoy** ([`envoy`]): [`Envoy`], a real Envoy 1.40 started from a bootstrap's text
//!   (its ports moved to free ones by [`envoy::with_ports`]), ready when it says so.
//! - **Faults** ([`proxy`]): [`Proxy`], a loopback TCP relay that can drop a connection after
//!   the server ran a command and before the client hears the reply.
//! - **Network faults** ([`netns`]): [`Network`], a private segment of network namespaces
//!   ([`Node`]s) where servers ([`ServerBuilder::on_node`]) and gateways run as on hosts of
//!   their own, cut off silently (`nft`), unplugged (link down) or throttled (`tbf`), healed,
//!   and removed on drop.
//! - **Waiting** ([`wait`]): [`wait_until`], the one poll loop with a deadline.
//!
//! Every process binds 127.0.0.1 only (or its node's address on a private [`Network`]), and every guard ([`RedisServer`], [`Cluster`],
//! [`SentinelGroup`], [`Envoy`], [`ChildGuard`], [`Proxy`]) stops what it started when it drops, also
//! when the test panics, so nothing outlives its test. A missing server binary fails loudly
//! with how to install it; nothing is skipped.
//!
//! Environment:
//! - `RL_SERVER_BIN`: the server binary to test against (default `redis-server` on `PATH`).
//! - `RL_MODULE`: path of the built module (default `$CARGO_TARGET_DIR/release/librl.so`, or
//!   `<workspace>/target/release/librl.so`).
//! - `RL_ENVOY_BIN`: the Envoy binary (default `<workspace>/.cache/envoy/envoy`).

// A harness: a server that fails to start or a reply of the wrong shape ends the test that
// asked for it, so unwrapping (with a message) is how it reports; nothing here runs in Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};

pub use redis;
/// The module's replies as typed values (the `rl-protocol` crate).
pub use rl_protocol as reply;
pub use rl_protocol::{AcquireReply, CheckAllReply, CheckReply, RefundReply, ThrottleReply};

pub mod cluster;
pub mod commands;
pub mod envoy;
pub mod functions;
pub mod fuzz;
pub mod inspect;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod sentinel;
pub mod server;
pub mod wait;

pub use cluster::{Cluster, ClusterBuilder, SLOTS};
pub use commands::{
    check, cl_throttle, peek, rl_acquire, rl_check, rl_checkall, rl_peek, rl_refund, rl_release, rl_renew, rl_reset,
    tokens,
};
pub use envoy::Envoy;
pub use inspect::{
    all_keys, command_calls, info_field, is_valkey, redis_version, repl_offset, snapshot, stored, wait_for_replicas,
    Stored, StoredLeases, LEASE_MARKER,
};
pub use netns::{Network, Node};
pub use process::ChildGuard;
pub use proxy::Proxy;
pub use sentinel::SentinelGroup;
pub use server::{RedisServer, ServerBuilder};
pub use wait::wait_until;

/// The server binary under test: `RL_SERVER_BIN`, else `redis-server`.
pub fn server_binary() -> String {
    std::env::var("RL_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_string())
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the workspace root")
        .to_path_buf()
}

/// Path of the built module; panics with the command to build it when it is missing.
pub fn module_path() -> PathBuf {
    let path = match std::env::var_os("RL_MODULE") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            let target = if target.is_absolute() { target } else { workspace_root().join(target) };
            target.join("release").join("librl.so")
        }
    };
    assert!(
        path.exists(),
        "the module is not built at {}: run `make build` (or `cargo build --release --lib`) first, \
         or point RL_MODULE at a built librl.so",
        path.display()
    );
    path
}

/// Ports handed out by this process; each test binary starts at a different offset so that
/// parallel test binaries rarely probe the same port twice.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback port that is free now, and whose cluster-bus twin (`port + 10000`) is free too.
/// Both lie below Linux's ephemeral range (32768 and up), so no outgoing connection is given
/// one of them between the check and the server's bind (a server that still loses its port
/// is started again on another: [`crate::ServerBuilder::start`]).
pub fn free_port() -> u16 {
    let start = 10000 + (std::process::id() % 400) as u16 * 25;
    let _ = NEXT_PORT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let port = 10000 + (port.wrapping_sub(10000)) % 10000;
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
}
