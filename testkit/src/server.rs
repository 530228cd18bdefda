//! One real `redis-server` / `valkey-server` process: [`RedisServer`], built by [`ServerBuilder`].

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_port, module_path, redis, server_binary, wait_until, ChildGuard};

/// How long a server may take to start answering before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a `SHUTDOWN` may take before the process is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start a server. Build with [`RedisServer::builder`].
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    binary: String,
    with_module: bool,
    module_args: Vec<String>,
    args: Vec<String>,
    /// The node the server runs on (its namespace and address), else 127.0.0.1.
    node: Option<crate::Node>,
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

    /// Adds a config directive of several words, each passed as it is, e.g.
    /// `.arg_words("rename-command", &["HELLO", ""])`.
    pub fn arg_words(mut self, name: &str, words: &[&str]) -> Self {
        self.args.push(format!("--{name}"));
        self.args.extend(words.iter().map(|w| w.to_string()));
        self
    }

    /// Use another server binary than `RL_SERVER_BIN`.
    pub fn binary(mut self, binary: &str) -> Self {
        self.binary = binary.to_string();
        self
    }

    /// Run on `node` of a [`crate::Network`]: in its namespace, bound to its address (with
    /// `protected-mode no`, as the default user has no password), reached there.
    pub fn on_node(mut self, node: &crate::Node) -> Self {
        self.node = Some(node.clone());
        self
    }

    /// Start as a replica of `primary` and wait until the replication link is up.
    pub fn start_replica_of(self, primary: &RedisServer) -> RedisServer {
        let server = self.arg("replicaof", &format!("{} {}", primary.host(), primary.port())).start();
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
        // The port was free when chosen, but another process may bind it before the server
        // does: then the server exits at once saying so, and a fresh port is tried.
        for _ in 0..5 {
            match server.try_spawn() {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => server.port = free_port(),
                Err(log) => panic!("server exited at start\n{log}"),
            }
        }
        panic!("no free port found for the server\n{}", server.log_tail())
    }
}

/// A running server on 127.0.0.1 in its own temporary directory; killed when dropped.
pub struct RedisServer {
    builder: ServerBuilder,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<ChildGuard>,
}

impl RedisServer {
    /// A standalone server with the module loaded.
    pub fn start() -> Self {
        Self::builder().start()
    }

    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            binary: server_binary(),
            with_module: true,
            module_args: Vec::new(),
            args: Vec::new(),
            node: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server is reached at: 127.0.0.1, or its node's.
    pub fn host(&self) -> std::net::Ipv4Addr {
        self.builder.node.as_ref().map_or(std::net::Ipv4Addr::LOCALHOST, |node| node.addr)
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}/", self.host(), self.port)
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

    /// The last lines of the server's log (and what it printed, if anything), for failure
    /// messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(30);
        let mut tail = format!("--- server log ({}) ---\n{}", self.dir.path().display(), lines[from..].join("\n"));
        for stream in ["stdout", "stderr"] {
            let printed = fs::read_to_string(self.dir.path().join(format!("server.{stream}"))).unwrap_or_default();
            if !printed.trim().is_empty() {
                tail.push_str(&format!("\n--- server {stream} ---\n{printed}"));
            }
        }
        tail
    }

    /// True while the process runs and answers PING.
    pub fn is_alive(&mut self) -> bool {
        let running = self.child.as_mut().is_some_and(|child| child.exited().is_none());
        running && answers_ping((self.host(), self.port))
    }

    /// Stops the server the way an operator would (`SHUTDOWN`, which writes the RDB when
    /// saving is configured) and starts it again on the same port, directory and config.
    pub fn restart(&mut self) {
        self.shutdown(true);
        self.spawn();
    }

    /// Kills the process abruptly (as a crash would): nothing is saved.
    pub fn kill(&mut self) {
        // Dropping the guard kills and reaps the process.
        self.child = None;
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
            // A server that did not stop in time is killed when the guard drops.
            child.wait_exit(SHUTDOWN_TIMEOUT);
        }
    }

    /// The files in the server's `appendonlydir` whose names end with `suffix` (`.incr.aof`,
    /// `.base.aof`, or `.aof` for all of them), concatenated as text; panics when there is none.
    pub fn aof_files(&self, suffix: &str) -> String {
        let dir = self.dir().join("appendonlydir");
        let mut out = String::new();
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
            if path.to_string_lossy().ends_with(suffix) {
                let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        assert!(!out.is_empty(), "no {suffix} file in {}", dir.display());
        out
    }

    /// Polls `INFO` until it contains `needle`.
    pub fn wait_for_info(&self, needle: &str) {
        let mut con = self.client();
        let shown = wait_until(Instant::now() + START_TIMEOUT, || {
            let info: String = redis::cmd("INFO").query(&mut con).unwrap_or_default();
            info.contains(needle)
        });
        assert!(shown, "INFO never showed {needle:?}\n{}", self.log_tail());
    }

    /// Starts the server on its port (kept across restarts): panics when it does not come up.
    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("server exited at start\n{log}");
        }
    }

    /// Starts the server; `Err(its log)` when it exited at start.
    fn try_spawn(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let host = self.host();
        let mut cmd = match valgrind_logs() {
            // `make test-valgrind`: the server under memcheck, each process logging to its own
            // file in that directory (errors are written as they happen; the server is killed,
            // so leak summaries are not what this looks at).
            Some(logs) => {
                let mut cmd = Command::new("valgrind");
                cmd.args(["--tool=memcheck", "--track-origins=yes", "--num-callers=30", "--error-limit=no"])
                    .arg(format!("--log-file={}/server-%p.log", logs.display()))
                    .arg(&self.builder.binary);
                cmd
            }
            None => match &self.builder.node {
                Some(node) => node.command(&self.builder.binary),
                None => Command::new(&self.builder.binary),
            },
        };
        if self.builder.node.is_some() {
            cmd.args(["--protected-mode", "no"]);
        }
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", &host.to_string(), "--daemonize", "no", "--save", "", "--appendonly", "no"])
            // Replicas of test servers sync at once instead of after the default 5 s delay.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("server.log"));
        let library_instead = self.builder.with_module && crate::functions::library_instead_of_module();
        if self.builder.with_module && !library_instead {
            cmd.arg("--loadmodule").arg(module_path()).args(&self.builder.module_args);
        }
        cmd.args(&self.builder.args);
        let mut child = ChildGuard::try_spawn_logging_to("server", cmd, dir).unwrap_or_else(|e| {
            panic!(
                "cannot start `{}`: {e}. Install it (`apt-get install redis-server`, or run \
                 `make test`, which installs it) or set RL_SERVER_BIN to a server binary",
                self.builder.binary
            )
        });
        let (port, pid) = ((host, self.port), child.id());
        let mut exited = None;
        // Our server answers: another process answering PING on this port does not count.
        let answered = wait_until(Instant::now() + start_timeout(), || {
            exited = child.exited();
            // INFO answers while the dataset loads, PING only once it is loaded.
            exited.is_some() || (answering_pid(port) == Some(pid) && answers_ping(port))
        });
        if let Some(status) = exited {
            return Err(format!("({status})\n{}", self.log_tail()));
        }
        self.child = Some(child);
        assert!(answered, "server did not answer PING in time\n{}", self.log_tail());
        // A replica gets the library from its primary.
        let replica = self.builder.args.iter().any(|arg| arg == "--replicaof" || arg == "--slaveof");
        if library_instead && !replica {
            crate::functions::load(&mut self.client(), &crate::functions::source());
        }
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `RL_SERVER_VALGRIND`: a directory to run every server under valgrind memcheck, logging
/// there (`make test-valgrind`).
fn valgrind_logs() -> Option<std::path::PathBuf> {
    std::env::var_os("RL_SERVER_VALGRIND").filter(|v| !v.is_empty()).map(std::path::PathBuf::from)
}

/// How long a server may take to answer its first PING: much longer under valgrind.
fn start_timeout() -> Duration {
    if valgrind_logs().is_some() {
        START_TIMEOUT * 20
    } else {
        START_TIMEOUT
    }
}

/// The `process_id` of the server answering at `(host, port)`, if one does.
fn answering_pid((host, port): (std::net::Ipv4Addr, u16)) -> Option<u32> {
    let client = redis::Client::open(format!("redis://{host}:{port}/")).ok()?;
    let mut con = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).ok()?;
    info.lines().find_map(|line| line.strip_prefix("process_id:")).and_then(|pid| pid.trim().parse().ok())
}

fn answers_ping((host, port): (std::net::Ipv4Addr, u16)) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://{host}:{port}/")) else { return false };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
        return false;
    };
    redis::cmd("PING").query::<String>(&mut con).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server counts as started only when the process answering on its port is its own.
    #[test]
    fn the_answering_server_is_told_apart_by_its_process_id() {
        let a = RedisServer::builder().without_module().start();
        let b = RedisServer::builder().without_module().start();
        let pid_of = |server: &RedisServer| server.child.as_ref().map(ChildGuard::id);
        let local = |port| (std::net::Ipv4Addr::LOCALHOST, port);
        assert_eq!(answering_pid(local(a.port)), pid_of(&a));
        assert_ne!(answering_pid(local(a.port)), pid_of(&b), "another server on the port is not ours");
        assert_eq!(answering_pid(local(crate::free_port())), None, "nobody there");
        assert!(a.port < 20000 && b.port < 20000, "ports and bus ports below the ephemeral range");
    }
}
