//! The one harness every test and benchmark uses to run real servers.
//!
//! A [`RedisServer`] is a real `redis-server` (or `valkey-server`) process with the module
//! loaded, listening on a free port on 127.0.0.1 in its own temporary directory. Dropping
//! the guard kills the process, also when the test panics, so no server outlives its test.
//!
//! Environment:
//! - `RL_SERVER_BIN`: the server binary to test against (default `redis-server` on `PATH`).
//! - `RL_MODULE`: path of the built module (default `<workspace>/target/release/librl.so`).

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub use redis;

mod cluster;
pub use cluster::{Cluster, ClusterBuilder, SLOTS};

/// How long a server may take to start answering before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

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
pub fn free_port() -> u16 {
    let start = 20000 + (std::process::id() % 400) as u16 * 25;
    let _ = NEXT_PORT.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let port = 20000 + (port - 20000) % 10000;
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
}

/// How to start a server. Build with [`RedisServer::builder`].
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    binary: String,
    with_module: bool,
    module_args: Vec<String>,
    args: Vec<String>,
}

impl ServerBuilder {
    /// Start without loading the module (for baselines).
    pub fn without_module(mut self) -> Self {
        self.with_module = false;
        self
    }

    /// Arguments passed to the module after its path (`--loadmodule librl.so ARG`).
    pub fn module_args(mut self, arg: &str) -> Self {
        self.module_args.push(arg.to_string());
        self
    }

    /// Adds a config directive, e.g. `.arg("appendonly", "yes")`.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push(format!("--{name}"));
        self.args.push(value.to_string());
        self
    }

    /// Use another server binary than `RL_SERVER_BIN`.
    pub fn binary(mut self, binary: &str) -> Self {
        self.binary = binary.to_string();
        self
    }

    /// Start as a replica of `primary` and wait until the replication link is up.
    pub fn start_replica_of(self, primary: &RedisServer) -> RedisServer {
        let server = self.arg("replicaof", &format!("127.0.0.1 {}", primary.port())).start();
        server.wait_for_info("master_link_status:up");
        server
    }

    pub fn start(self) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("rl-test-redis-")
            .tempdir()
            .expect("create a temporary directory for the server");
        let port = free_port();
        let mut server = RedisServer { builder: self, dir, port, child: None };
        server.spawn();
        server
    }
}

/// A running server; killed when dropped.
pub struct RedisServer {
    builder: ServerBuilder,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone server with the module loaded.
    pub fn start() -> Self {
        Self::builder().start()
    }

    pub fn builder() -> ServerBuilder {
        ServerBuilder { binary: server_binary(), with_module: true, module_args: Vec::new(), args: Vec::new() }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new synchronous connection.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.url(), self.log_tail()))
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!("--- server log ({}) ---\n{}", self.dir.path().display(), lines[from..].join("\n"))
    }

    /// True while the process runs and answers PING.
    pub fn is_alive(&mut self) -> bool {
        let running = match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        };
        running && self.try_ping()
    }

    /// Stops the server the way an operator would (`SHUTDOWN`, which writes the RDB when
    /// saving is configured) and starts it again on the same port, directory and config.
    pub fn restart(&mut self) {
        self.shutdown(true);
        self.spawn();
    }

    /// Kills the process abruptly (as a crash would): nothing is saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again after [`RedisServer::kill`], same port, directory and config.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "respawn only after kill");
        self.spawn();
    }

    fn shutdown(&mut self, save: bool) {
        if let Ok(mut con) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
            let _: Result<(), _> = redis::cmd("SHUTDOWN").arg(if save { "SAVE" } else { "NOSAVE" }).query(&mut con);
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Polls `INFO` until it contains `needle`.
    pub fn wait_for_info(&self, needle: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut con = self.client();
        loop {
            let info: String = redis::cmd("INFO").query(&mut con).unwrap_or_default();
            if info.contains(needle) {
                return;
            }
            assert!(Instant::now() < deadline, "INFO never showed {needle:?}\n{}", self.log_tail());
            sleep(Duration::from_millis(20));
        }
    }

    fn try_ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else { return false };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut con).is_ok()
    }

    fn spawn(&mut self) {
        let dir = self.dir.path();
        let mut cmd = Command::new(&self.builder.binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no", "--save", "", "--appendonly", "no"])
            // Replicas of test servers sync at once instead of after the default 5 s delay.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("server.log"));
        if self.builder.with_module {
            cmd.arg("--loadmodule").arg(module_path()).args(&self.builder.module_args);
        }
        cmd.args(&self.builder.args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start `{}`: {e}. Install it (`apt-get install redis-server`, or run \
                 `make test`, which installs it) or set RL_SERVER_BIN to a server binary",
                self.builder.binary
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("server exited at start ({status})\n{}", self.log_tail());
                }
            }
            if self.try_ping() {
                return;
            }
            assert!(Instant::now() < deadline, "server did not answer PING in time\n{}", self.log_tail());
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
