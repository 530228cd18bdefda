//! A soak (issue 23): the whole system under steady mixed traffic for a long time while faults
//! come and go, then checked for what must hold however long it runs.
//!
//! Topology, all real processes on 127.0.0.1: a Redis primary with the module and `appendonly
//! yes`, a replica of it, the demo model, and two gateways on the primary, the first also serving
//! the Envoy rate limit service (gRPC). Traffic ([`traffic`]): hundreds of API keys sending plain
//! predictions (a request limit, 2 in flight per caller), LLM chat completions (a request limit
//! and a token budget, streamed and not), leased bursts (3 at once on a policy allowing 2 in
//! flight) and `ShouldRateLimit` calls, at a steady rate; and probe identities far above tight
//! limits, whose every admission is recorded with the client's own clock. Faults ([`Fault`]),
//! in rotation: Redis paused, every Redis client connection killed, a gateway killed and started
//! again on its port, the primary killed and started again from its AOF.
//!
//! Recorded per interval and written to `report.md`, `report.json` and `soak.svg` (under
//! `RL_SOAK_REPORT_DIR`, else `target/soak/<UTC time>/`): answers admitted / limited / errors,
//! p50 / p99 of the HTTP requests, each gateway's RSS, the keys in the primary and the replica,
//! the leases held, the faults. Asserted at the end: no probe was ever admitted beyond its limit
//! in any window, faults included; the key count does not grow and every key expires; no lease
//! is left; each gateway's memory is flat after warm-up; the p99 is stable outside faults; the
//! replica holds what the primary holds.
//!
//! `RL_SOAK_SECONDS` (default 60: the short run of `make test`; `make soak` sets it from
//! `SOAK_MINUTES`), `RL_SOAK_FAULT_EVERY_SECONDS` (default a fifth of the run, between 10 and
//! 180), `RL_SOAK_INTERVAL_SECONDS` (default a thirtieth of the run, between 2 and 5),
//! `RL_SOAK_RATE` (dispatches a second, default 150), `RL_SOAK_REPORT_DIR`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "soak/svg.rs"]
mod svg;
#[path = "soak/traffic.rs"]
mod traffic;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::json;
use testkit::redis;
use traffic::{Admission, Bucket, Outcome, Stats, Targets};

// ---------------------------------------------------------------------------------------------
// The limits (the gateway's config and the Envoy service's, below) and what follows from them.

/// Probes: 5 requests per 10 s, a bucket of 5: one every T = 2 s.
const PROBE_LIMIT: u64 = 5;
const PROBE_WINDOW_SECS: u64 = 10;
/// gRPC probes: 2 a second, a bucket of 4: one every T = 0.5 s.
const GRPC_PROBE_PER_SECOND: u64 = 2;
const GRPC_PROBE_BURST: u64 = 4;
/// The lease of a caller's (and the upstream's) slot without renewal.
const LEASE_MS: u64 = 10_000;
/// The longest a key can live after its last write: the chat policy's token bucket (10 s to
/// refill) plus the debt a forced charge may leave (at most one more bucket): 20 s. Request
/// buckets refill within 10 s, leases end within `LEASE_MS`, the Envoy buckets within 2 s.
const KEY_LIFE: Duration = Duration::from_secs(20);
/// Every key the traffic can make, one per identity and limit: plain keys (requests, leases),
/// leased keys (the same policy), LLM keys (requests, tokens, leases), HTTP probes (requests),
/// gRPC keys (one bucket per key, one per key and model), gRPC probes, and the upstream's lease
/// set.
const KEY_BOUND: u64 = traffic::PLAIN_KEYS as u64 * 2
    + traffic::LEASE_KEYS as u64 * 2
    + traffic::LLM_KEYS as u64 * 3
    + traffic::HTTP_PROBES as u64
    + traffic::GRPC_KEYS as u64 * (1 + traffic::GRPC_MODELS.len() as u64)
    + traffic::GRPC_PROBES as u64
    + 1;

fn gateway_config() -> String {
    format!(
        r#"
[upstream]
max_concurrent = 64
lease_ms = {LEASE_MS}

[[policy]]
name = "predict"
paths = ["/v1/predict"]
limit = 10
window = 10
max_concurrent = 2
lease_ms = {LEASE_MS}

[[policy]]
name = "chat"
paths = ["/v1/chat/completions"]
kind = "openai"
limit = 20
window = 10
max_concurrent = 2
lease_ms = {LEASE_MS}
[[policy.limits]]
name = "tokens"
unit = "tokens"
limit = 2000
window = 10

[[policy]]
name = "probe"
paths = ["/v1/echo"]
limit = {PROBE_LIMIT}
window = {PROBE_WINDOW_SECS}
"#
    )
}

fn envoy_config() -> String {
    format!(
        r#"domain: soak
descriptors:
  - key: api_key
    rate_limit: {{unit: second, requests_per_unit: 5}}
    metadata:
      ml_api_rate_limiter: {{burst: 10}}
    descriptors:
      - key: model
        rate_limit: {{unit: second, requests_per_unit: 2}}
  - key: probe
    rate_limit: {{unit: second, requests_per_unit: {GRPC_PROBE_PER_SECOND}}}
    metadata:
      ml_api_rate_limiter: {{burst: {GRPC_PROBE_BURST}}}
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Settings.

struct Settings {
    duration: Duration,
    fault_every: Duration,
    interval: Duration,
    rate: f64,
    report_dir: PathBuf,
}

fn env_secs(name: &str) -> Option<f64> {
    let value = std::env::var(name).ok()?;
    let secs: f64 = value.trim().parse().unwrap_or_else(|e| panic!("{name}={value:?}: {e}"));
    assert!(secs > 0.0, "{name} must be positive");
    Some(secs)
}

impl Settings {
    fn from_env() -> Settings {
        let duration = env_secs("RL_SOAK_SECONDS").unwrap_or(60.0);
        assert!(duration >= 30.0, "RL_SOAK_SECONDS: at least 30");
        // A fifth of the run: the short run gets 4 faults (one of each kind), 30 minutes one
        // every 3 minutes.
        let fault_every = env_secs("RL_SOAK_FAULT_EVERY_SECONDS").unwrap_or((duration / 5.0).clamp(10.0, 180.0));
        let interval = env_secs("RL_SOAK_INTERVAL_SECONDS").unwrap_or((duration / 30.0).clamp(2.0, 5.0));
        let rate = env_secs("RL_SOAK_RATE").unwrap_or(150.0);
        let report_dir = match std::env::var_os("RL_SOAK_REPORT_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| testkit::workspace_root().join("target"));
                let target = if target.is_absolute() { target } else { testkit::workspace_root().join(target) };
                target.join("soak").join(utc_stamp())
            }
        };
        Settings {
            duration: Duration::from_secs_f64(duration),
            fault_every: Duration::from_secs_f64(fault_every),
            interval: Duration::from_secs_f64(interval),
            rate,
            report_dir,
        }
    }

    /// Warm-up: the first 20% of the run or the first 60 s, whichever is shorter.
    fn warmup(&self) -> f64 {
        (self.duration.as_secs_f64() * 0.2).min(60.0)
    }
}

/// Now in UTC as `YYYYMMDD-HHMMSS`.
fn utc_stamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rest / 3600, rest / 60 % 60, rest % 60)
}

// ---------------------------------------------------------------------------------------------
// The processes.

/// One gateway: its process, its port and arguments (kept to start it again on the same
/// port), and when its current process started.
struct Gateway {
    proc: Proc,
    port: u16,
    args: Vec<String>,
    /// Seconds since the start of the run at which the current process was ready (0 for the
    /// first one).
    life_start: f64,
    restarts: u32,
}

/// The gateway's environment: the tests' key secret, and info logs without the access log (a
/// line per request: tens of megabytes an hour; debug logs would be far more).
const GATEWAY_ENV: [(&str, &str); 2] =
    [("GATEWAY_KEY_SECRET", SECRET), ("RUST_LOG", "info,gateway::pipeline::access_log=warn")];

impl Gateway {
    fn start(index: usize, port: u16, args: Vec<String>, life_start: f64) -> Gateway {
        let mut proc = Proc::spawn(&format!("gateway-{index}"), port, &args, &GATEWAY_ENV);
        proc.wait_healthy();
        Gateway { proc, port, args, life_start, restarts: 0 }
    }
}

struct Topology {
    primary: RedisServer,
    replica: RedisServer,
    _model: Proc,
    gateways: Vec<Gateway>,
    grpc_port: u16,
    report_dir: PathBuf,
    _config: tempfile::TempDir,
}

impl Topology {
    fn start(report_dir: PathBuf) -> Topology {
        let primary = RedisServer::builder().arg("appendonly", "yes").start();
        let replica = RedisServer::builder().start_replica_of(&primary);
        // 20 ms per prediction and before a chat's first token, 5 ms per chat token.
        let model = start_model(20);
        let config = tempfile::Builder::new().prefix("soak-config-").tempdir().unwrap();
        let gateway_toml = config.path().join("gateway.toml");
        let envoy_yaml = config.path().join("ratelimit.yaml");
        fs::write(&gateway_toml, gateway_config()).unwrap();
        fs::write(&envoy_yaml, envoy_config()).unwrap();
        let grpc_port = free_port();
        let mut gateways = Vec::new();
        for index in 0..2 {
            let port = free_port();
            let mut extra: Vec<String> =
                vec!["--redis-url".into(), primary.url(), "--config".into(), gateway_toml.display().to_string()];
            if index == 0 {
                extra.extend([
                    "--envoy-listen".into(),
                    format!("127.0.0.1:{grpc_port}"),
                    "--envoy-config".into(),
                    envoy_yaml.display().to_string(),
                ]);
            }
            let args = serve_args(port, &model.url(""), &extra);
            gateways.push(Gateway::start(index, port, args, 0.0));
        }
        Topology { primary, replica, _model: model, gateways, grpc_port, report_dir, _config: config }
    }

    fn targets(&self) -> Targets {
        Targets { http_ports: self.gateways.iter().map(|g| g.port).collect(), grpc_port: self.grpc_port }
    }

    /// Keeps a gateway process's logs in the report directory (before it is replaced, and at
    /// the end).
    fn save_logs(&self, index: usize) {
        let gateway = &self.gateways[index];
        let path = self.report_dir.join(format!("gateway-{index}.run{}.log", gateway.restarts));
        let _ = fs::write(path, gateway.proc.logs());
    }
}

/// A connection for sampling and faults, with timeouts: `None` while the server is down.
fn connect(port: u16) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let con = client.get_connection_with_timeout(Duration::from_secs(1)).ok()?;
    con.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    con.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(con)
}

// ---------------------------------------------------------------------------------------------
// Faults. Each is one variant and one function; a new one (a network partition in a namespace,
// say) is a variant, its function, its arm in `inject` and its place in `ROTATION`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `CLIENT PAUSE 2000 ALL` on the primary: every command waits 2 s; the gateways' calls
    /// time out (fail closed: 503) and what the late replies took is given back.
    RedisPause,
    /// `CLIENT KILL TYPE normal` on the primary: every client connection (the gateways')
    /// dropped at once, commands in flight lost.
    KillClients,
    /// A gateway killed (SIGKILL, its leases left to expire) and started again on its port.
    GatewayRestart,
    /// The primary killed (SIGKILL) and started again from its AOF on the same port.
    PrimaryRestart,
}

/// How long `CLIENT PAUSE` holds the primary.
const PAUSE_MS: u64 = 2000;

/// A fault as injected: when (seconds since the start) and on what.
#[derive(Clone, Debug)]
struct Injected {
    fault: Fault,
    target: String,
    start: f64,
    end: f64,
    note: String,
}

/// What a fault's function reports: its target, when its effect ends, a note.
struct Effect {
    target: String,
    until: Instant,
    note: String,
}

impl Fault {
    /// The order of the faults, round and round.
    const ROTATION: [Fault; 4] = [Fault::RedisPause, Fault::KillClients, Fault::GatewayRestart, Fault::PrimaryRestart];

    fn name(self) -> &'static str {
        match self {
            Fault::RedisPause => "redis-pause",
            Fault::KillClients => "kill-clients",
            Fault::GatewayRestart => "gateway-restart",
            Fault::PrimaryRestart => "primary-restart",
        }
    }

    /// Injects the fault; `nth` counts the earlier faults of the same kind.
    fn inject(self, topology: &mut Topology, stats: &Stats, nth: usize) -> Injected {
        let start = Instant::now();
        let effect = match self {
            Fault::RedisPause => pause_redis(topology),
            Fault::KillClients => kill_clients(topology),
            // Gateway 1 first (it serves HTTP only), then gateway 0 (HTTP and gRPC), in turn.
            Fault::GatewayRestart => restart_gateway(topology, stats, 1 - nth % 2),
            Fault::PrimaryRestart => restart_primary(topology),
        };
        Injected {
            fault: self,
            target: effect.target,
            start: stats.secs(start),
            end: stats.secs(effect.until),
            note: effect.note,
        }
    }
}

fn pause_redis(topology: &mut Topology) -> Effect {
    let mut con = topology.primary.client();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(PAUSE_MS).arg("ALL").query(&mut con).unwrap();
    Effect {
        target: "primary".into(),
        until: Instant::now() + Duration::from_millis(PAUSE_MS),
        note: format!("CLIENT PAUSE {PAUSE_MS} ALL"),
    }
}

fn kill_clients(topology: &mut Topology) -> Effect {
    let mut con = topology.primary.client();
    // SKIPME is yes by default: this connection stays.
    let killed: u64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query(&mut con).unwrap();
    Effect {
        target: "primary".into(),
        until: Instant::now(),
        note: format!("CLIENT KILL TYPE normal: {killed} killed"),
    }
}

fn restart_gateway(topology: &mut Topology, stats: &Stats, index: usize) -> Effect {
    topology.save_logs(index);
    let gateway = &mut topology.gateways[index];
    gateway.proc.kill();
    // Down for a second: clients meet a closed port, its leases stay until they expire.
    std::thread::sleep(Duration::from_secs(1));
    let mut proc = Proc::spawn(&format!("gateway-{index}"), gateway.port, &gateway.args, &GATEWAY_ENV);
    proc.wait_healthy();
    let ready = Instant::now();
    gateway.proc = proc;
    gateway.restarts += 1;
    gateway.life_start = stats.secs(ready);
    Effect {
        target: format!("gateway-{index}"),
        until: ready,
        note: format!("SIGKILL, down 1 s, restarted on port {} (pid {})", gateway.port, gateway.proc.id()),
    }
}

fn restart_primary(topology: &mut Topology) -> Effect {
    let dbsize = |port: u16| -> Option<u64> { connect(port).and_then(|mut c| redis::cmd("DBSIZE").query(&mut c).ok()) };
    let before = dbsize(topology.primary.port());
    topology.primary.kill();
    std::thread::sleep(Duration::from_secs(1));
    topology.primary.respawn();
    let up = Instant::now();
    let after = dbsize(topology.primary.port());
    let show = |keys: Option<u64>| keys.map_or("?".into(), |k| k.to_string());
    Effect {
        target: "primary".into(),
        until: up,
        note: format!(
            "SIGKILL with {} keys, down 1 s, respawned from its AOF with {} \
             (those whose bucket refilled meanwhile expired)",
            show(before),
            show(after)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Sampling.

/// What the servers and processes looked like at `t`.
#[derive(Clone, Debug, Default)]
struct Sample {
    t: f64,
    rss_kib: Vec<Option<u64>>,
    dbsize: Option<u64>,
    replica_dbsize: Option<u64>,
    /// Live leases (deadline after the server's now) over every `*:concurrent` set.
    leases: Option<u64>,
    /// Keys without an expiry (there must be none).
    keys_without_ttl: Option<u64>,
    /// The primary's `used_memory`, in KiB.
    redis_used_kib: Option<u64>,
    /// Per gateway, from its `/metrics`: client connections open, refusals its deny cache
    /// remembers, leases it holds (both slots).
    gauges: Vec<Option<Gauges>>,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct Gauges {
    connections_open: f64,
    deny_cache_entries: f64,
    leases_in_flight: f64,
}

/// A gateway's gauges from `/metrics`, over a plain blocking connection (the sampler runs on the
/// test's own thread); `None` when it does not answer.
fn gauges(port: u16) -> Option<Gauges> {
    use std::io::{Read, Write};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut gauges = Gauges::default();
    for line in body.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        match name.split('{').next().unwrap_or("") {
            "gateway_connections_open" => gauges.connections_open += value,
            "gateway_deny_cache_entries" => gauges.deny_cache_entries += value,
            "gateway_leases_in_flight" => gauges.leases_in_flight += value,
            _ => {}
        }
    }
    Some(gauges)
}

fn scan(con: &mut redis::Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let iter: redis::Iter<String> =
        redis::cmd("SCAN").cursor_arg(0).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).clone().iter(con)?;
    iter.collect()
}

/// The server's clock in ms (`TIME`).
fn server_ms(con: &mut redis::Connection) -> redis::RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(con)?;
    Ok(secs * 1000 + micros / 1000)
}

/// Live leases over every lease set.
fn live_leases(con: &mut redis::Connection) -> redis::RedisResult<u64> {
    let keys = scan(con, "*:concurrent")?;
    if keys.is_empty() {
        return Ok(0);
    }
    let now = server_ms(con)?;
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("ZCOUNT").arg(key).arg(format!("({now}")).arg("+inf");
    }
    let counts: Vec<u64> = pipe.query(con)?;
    Ok(counts.iter().sum())
}

fn keys_without_ttl(con: &mut redis::Connection) -> redis::RedisResult<u64> {
    let keys = scan(con, "*")?;
    if keys.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("PTTL").arg(key);
    }
    let ttls: Vec<i64> = pipe.query(con)?;
    Ok(ttls.iter().filter(|ttl| **ttl == -1).count() as u64)
}

/// Samples everything; a gateway process that exited by itself is reported in `exits`.
fn sample(topology: &mut Topology, stats: &Stats, exits: &mut Vec<String>) -> Sample {
    let t = stats.secs(Instant::now());
    let mut rss_kib = Vec::new();
    let mut gauges_now = Vec::new();
    for (index, gateway) in topology.gateways.iter_mut().enumerate() {
        match gateway.proc.exited() {
            Some(status) => {
                if !exits.iter().any(|e: &String| e.starts_with(&format!("gateway-{index} "))) {
                    exits.push(format!("gateway-{index} exited by itself at {t:.0} s ({status})"));
                }
                rss_kib.push(None);
                gauges_now.push(None);
            }
            None => {
                rss_kib.push(Some(common::rss_kib(gateway.proc.id())));
                gauges_now.push(gauges(gateway.port));
            }
        }
    }
    let mut sample = Sample { t, rss_kib, gauges: gauges_now, ..Sample::default() };
    // Both key counts first, one right after the other: the scans below make the primary drop
    // the keys they find expired (and the replica with it).
    let mut primary = connect(topology.primary.port());
    let mut replica = connect(topology.replica.port());
    if let Some(con) = primary.as_mut() {
        sample.dbsize = redis::cmd("DBSIZE").query(con).ok();
    }
    if let Some(con) = replica.as_mut() {
        sample.replica_dbsize = redis::cmd("DBSIZE").query(con).ok();
    }
    if let Some(con) = primary.as_mut() {
        sample.leases = live_leases(con).ok();
        sample.keys_without_ttl = keys_without_ttl(con).ok();
        sample.redis_used_kib = testkit::info_field(con, "memory", "used_memory")
            .and_then(|v| v.parse::<u64>().ok())
            .map(|bytes| bytes / 1024);
    }
    sample
}

// ---------------------------------------------------------------------------------------------
// The end: the replica, leases and keys once traffic stopped.

/// A key's content as stored: its type, its value as bytes (a string, or a sorted set's members
/// and scores), its absolute expiry in ms.
#[derive(PartialEq, Eq)]
struct Content {
    kind: String,
    value: Vec<Vec<u8>>,
    pexpiretime: i64,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value: Vec<String> =
            self.value.iter().map(|v| String::from_utf8_lossy(v).escape_debug().to_string()).collect();
        write!(f, "{} {value:?} PEXPIRETIME {}", self.kind, self.pexpiretime)
    }
}

fn contents(con: &mut redis::Connection) -> redis::RedisResult<BTreeMap<String, Content>> {
    let mut out = BTreeMap::new();
    for key in scan(con, "*")? {
        let (kind, pexpiretime): (String, i64) =
            redis::pipe().cmd("TYPE").arg(&key).cmd("PEXPIRETIME").arg(&key).query(con)?;
        let value: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&key).query::<Option<Vec<u8>>>(con)?.unwrap_or_default()],
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).arg("WITHSCORES").query(con)?,
            "none" => continue,
            _ => vec![b"(another type)".to_vec()],
        };
        out.insert(key, Content { kind, value, pexpiretime });
    }
    Ok(out)
}

fn info_u64(con: &mut redis::Connection, field: &str) -> Option<u64> {
    testkit::info_field(con, "replication", field)?.parse().ok()
}

/// The replica against the primary, key by key: type, value (byte for byte) and absolute
/// expiry, once it has received every write the primary had made. Keys within 1 s of their
/// expiry are left out (one server may drop them between the two reads, a few milliseconds
/// apart).
fn compare_replica(topology: &Topology) -> Result<String, String> {
    let mut last_error = String::new();
    for _attempt in 0..3 {
        let mut primary = topology.primary.client();
        let mut replica = topology.replica.client();
        let offset = info_u64(&mut primary, "master_repl_offset").unwrap_or(0);
        let caught_up = wait_until(Instant::now() + Duration::from_secs(20), || {
            info_u64(&mut replica, "master_repl_offset").is_some_and(|o| o >= offset)
        });
        if !caught_up {
            last_error = format!("the replica never reached the primary's offset {offset}");
            continue;
        }
        let (Ok(ours), Ok(theirs)) = (contents(&mut primary), contents(&mut replica)) else {
            last_error = "reading the keys failed".into();
            continue;
        };
        let now = server_ms(&mut primary).unwrap_or(0) as i64;
        let lasting = |c: &Content| c.pexpiretime == -1 || c.pexpiretime > now + 1000;
        let mut mismatches = Vec::new();
        let mut compared = 0;
        for (key, content) in ours.iter().filter(|(_, c)| lasting(c)) {
            compared += 1;
            match theirs.get(key) {
                Some(other) if other == content => {}
                other => mismatches.push(format!("{key}: primary {content:?}, replica {other:?}")),
            }
        }
        for (key, content) in theirs.iter().filter(|(_, c)| lasting(c)) {
            if !ours.contains_key(key) {
                mismatches.push(format!("{key}: only on the replica {content:?}"));
            }
        }
        if mismatches.is_empty() {
            return Ok(format!(
                "{compared} keys identical (type, value, PEXPIRETIME) on both after the replica reached \
                 offset {offset}; {} keys on the primary, {} on the replica, those within 1 s of expiring \
                 not compared",
                ours.len(),
                theirs.len()
            ));
        }
        last_error = format!(
            "{} keys differ: {}",
            mismatches.len(),
            mismatches.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(last_error)
}

/// What the end of the run found.
#[derive(Debug, Default)]
struct End {
    replica: Option<Result<String, String>>,
    /// Seconds after traffic stopped at which no lease was live (`None`: never, within the wait).
    leases_gone_after: Option<f64>,
    leases_left: u64,
    keys_at_stop: Option<u64>,
    /// Seconds after traffic stopped at which the primary held no key.
    keys_gone_after: Option<f64>,
    keys_left: Vec<String>,
    /// Per gateway: leases it says it holds (`gateway_leases_in_flight`, both slots), late
    /// replies by outcome, requests by outcome.
    metrics: Vec<BTreeMap<String, f64>>,
}

// ---------------------------------------------------------------------------------------------
// The checks.

struct Check {
    name: &'static str,
    passed: bool,
    detail: String,
}

/// The clock slack of the probe check: the module reads the server's clock in whole
/// milliseconds on Redis 7.0 (`RedisModule_Milliseconds`; microseconds on 7.2+ and Valkey, and
/// `TIME` in the Functions library), truncated, so two decisions' server times can be up to
/// 1 ms further apart than they really were. Nothing else: the client's `Instant` and the
/// server's wall clock run on the same machine at the same (NTP-slewed) rate, and each
/// decision lies between its request's `sent` and `answered`, which the check already uses.
const CLOCK_SLACK_NANOS: u128 = 1_000_000;

/// The tightest window of one probe: `count` admissions within `span`, `bound` allowed.
#[derive(Clone, Debug)]
struct ProbeResult {
    name: String,
    admitted: usize,
    burst: u64,
    interval_nanos: u128,
    /// The window where the count came closest to (or above) the bound.
    tightest: Option<(usize, f64, u64)>,
    /// The same among the windows that overlap a fault.
    tightest_in_fault: Option<(usize, f64, u64)>,
    /// Windows over the bound, and the one furthest over it.
    violations: usize,
    worst_violation: Option<String>,
}

/// GCRA with a bucket of `burst` and one token every `T`: in any interval of length `t`, at
/// most `burst + floor(t / T)` admissions. The probes send one request at a time, so their
/// admissions are ordered by both `sent` and `answered`, and admissions `i..=j` were decided
/// within `[sent_i, answered_j]`: that length (plus [`CLOCK_SLACK_NANOS`]) bounds the interval.
/// A check whose reply came late (a pause) and was given back (`RL.REFUND`) moves the bucket's
/// TAT forward and back by the same amount while the bucket is not full, which a probe far
/// above its limit never lets it be: no slack is needed for that either.
fn check_probe(
    name: &str,
    admissions: &[Admission],
    burst: u64,
    interval_nanos: u128,
    faults: &[Injected],
) -> ProbeResult {
    // Seconds since the start as f64 hold nanoseconds exactly for days: rounding gives them back.
    let nanos = |secs: f64| (secs * 1e9).round() as u128;
    let mut result = ProbeResult {
        name: name.to_string(),
        admitted: admissions.len(),
        burst,
        interval_nanos,
        tightest: None,
        tightest_in_fault: None,
        violations: 0,
        worst_violation: None,
    };
    let mut worst = (0i128, String::new());
    let (mut tightest, mut tightest_in_fault) = (i128::MIN, i128::MIN);
    for i in 0..admissions.len() {
        for j in i..admissions.len() {
            let count = (j - i + 1) as u64;
            let span = nanos(admissions[j].answered).saturating_sub(nanos(admissions[i].sent)) + CLOCK_SLACK_NANOS;
            let bound = burst + (span / interval_nanos) as u64;
            let excess = count as i128 - bound as i128;
            let window = Some((count as usize, span as f64 / 1e9, bound));
            if excess > tightest {
                tightest = excess;
                result.tightest = window;
            }
            let overlaps = faults.iter().any(|f| admissions[i].sent <= f.end && admissions[j].answered >= f.start);
            if overlaps && excess > tightest_in_fault {
                tightest_in_fault = excess;
                result.tightest_in_fault = window;
            }
            if count > bound {
                result.violations += 1;
                if excess > worst.0 {
                    worst = (
                        excess,
                        format!(
                            "{count} admitted between {:.3} s and {:.3} s ({:.3} s): at most {bound}",
                            admissions[i].sent,
                            admissions[j].answered,
                            span as f64 / 1e9
                        ),
                    );
                }
            }
        }
    }
    result.worst_violation = (result.violations > 0).then_some(worst.1);
    result
}

fn percentile(sorted: &[u32], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64 / 1000.0)
}

/// How long after a fault ends its effects are not counted in the latency comparison: the
/// gateways' Redis timeout (250 ms), reconnecting, the late replies given back, the restarted
/// gateway's first connections, all well within.
const RECOVERY: f64 = 5.0;

/// The p99 comparison: each interval's p99 of its HTTP requests; the early p99 is the median of
/// those of the intervals in the first third of the run (the first interval, connection setup,
/// left out), the late p99 the median of those in the last third, both outside the faults and
/// their recovery. The median, so that one interval where a noisy neighbour took the cores does
/// not decide; a slowdown that lasts shows in every interval. The late p99 may be at most twice
/// the early one, or `P99_FLOOR_MS`, whichever is more: the slowest request's own work is 180 ms
/// (20 ms and 32 chat tokens of 5 ms), and on a shared 2-core machine a p99 of a couple of
/// hundred milliseconds can double with any neighbour, while a queue or a leak that grows
/// through the run passes half a second.
const P99_FLOOR_MS: f64 = 500.0;

/// RSS: the end may be at most 10% above the value after warm-up, plus `FAULT_HIGH_WATER_KIB`.
/// Both values are medians of the samples over a warm-up's length (right after the warm-up, and
/// at the end of the run): one sample moves by 2 MiB and back as the allocator takes and purges
/// whole segments.
const RSS_GROWTH: f64 = 1.10;
/// The faults raise a gateway's memory once: during a 2 s pause, or while the other gateway is
/// down, a few hundred requests are in flight at once instead of a few dozen, and the allocator
/// (mimalloc) keeps part of that high-water mark for reuse: 2-4 MiB on a 35 MiB process in
/// these runs, reached within the first round of faults and not exceeded by later rounds. A
/// leak grows with the traffic instead: a mere 100 bytes a request is 27 MiB in 30 minutes.
const FAULT_HIGH_WATER_KIB: f64 = 4096.0;

/// Keys: the most in the last third may be at most 25% (and 50 keys) above the most in the
/// middle third, both counted outside the faults and their recovery: how many keys are alive at
/// once is how many identities were active within a key's life (at most 20 s), a random draw
/// from the skewed choice of identities. Right after a pause the commands it held run at once
/// (checks and leases of requests that then proceed, or are given back a moment later): a
/// sample taken then sees half as many keys again, which says nothing about growth (the bound
/// of identities x limits holds for every sample). A leak grows without bound, far past this.
const KEY_GROWTH: f64 = 1.25;
const KEY_MARGIN: f64 = 50.0;

/// How long after a fault ends the traffic must be admitted again.
const RECOVERED_WITHIN: f64 = 15.0;

struct Analysis {
    checks: Vec<Check>,
    probes: Vec<ProbeResult>,
    rss: Vec<serde_json::Value>,
    p99: serde_json::Value,
    keys: serde_json::Value,
}

fn in_fault(start: f64, end: f64, faults: &[Injected]) -> bool {
    faults.iter().any(|f| start < f.end + RECOVERY && end > f.start)
}

#[allow(clippy::too_many_arguments)]
fn analyse(
    settings: &Settings,
    stats: &Stats,
    buckets: &[Bucket],
    samples: &[Sample],
    faults: &[Injected],
    end: &End,
    exits: &[String],
    gateways: &[Gateway],
) -> Analysis {
    let mut checks = Vec::new();
    let duration = settings.duration.as_secs_f64();
    let interval = settings.interval.as_secs_f64();

    // 1. Probes: never above the limit in any window.
    let probe_admissions = stats.probes.lock().unwrap().clone();
    let mut probes = Vec::new();
    for i in 0..traffic::HTTP_PROBES {
        let name = format!("probe-{i}");
        let admissions = probe_admissions.get(&name).cloned().unwrap_or_default();
        let t = u128::from(PROBE_WINDOW_SECS) * 1_000_000_000 / u128::from(PROBE_LIMIT);
        probes.push(check_probe(&name, &admissions, PROBE_LIMIT, t, faults));
    }
    for i in 0..traffic::GRPC_PROBES {
        let name = format!("grpc-probe-{i}");
        let admissions = probe_admissions.get(&name).cloned().unwrap_or_default();
        let t = 1_000_000_000 / u128::from(GRPC_PROBE_PER_SECOND);
        probes.push(check_probe(&name, &admissions, GRPC_PROBE_BURST, t, faults));
    }
    let violations: Vec<String> = probes
        .iter()
        .filter_map(|p| {
            let worst = p.worst_violation.as_ref()?;
            Some(format!("{}: {} windows over the bound, the worst {worst}", p.name, p.violations))
        })
        .collect();
    let starved: Vec<&str> = probes.iter().filter(|p| p.admitted == 0).map(|p| p.name.as_str()).collect();
    checks.push(Check {
        name: "probes never admitted beyond their limit in any window",
        passed: violations.is_empty() && starved.is_empty(),
        detail: if !violations.is_empty() {
            violations.join("; ")
        } else if !starved.is_empty() {
            format!("no admission at all for {starved:?}: the probe measured nothing")
        } else {
            probes
                .iter()
                .map(|p| {
                    let (count, span, bound) = p.tightest.unwrap_or((0, 0.0, 0));
                    let in_fault = p
                        .tightest_in_fault
                        .map_or(String::new(), |(c, s, b)| format!(", across a fault {c} in {s:.2} s (bound {b})"));
                    format!(
                        "{}: {} admitted, tightest {count} in {span:.2} s (bound {bound}){in_fault}",
                        p.name, p.admitted
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        },
    });

    // 2. Keys: bounded, not growing, expiring, all with an expiry.
    let dbsizes: Vec<(f64, u64)> = samples.iter().filter_map(|s| Some((s.t, s.dbsize?))).collect();
    let max_in = |from: f64, to: f64| {
        let outside_faults = |t: f64| !in_fault(t, t, faults);
        dbsizes.iter().filter(|(t, _)| *t > from && *t <= to && outside_faults(*t)).map(|(_, k)| *k).max()
    };
    let middle = max_in(duration / 3.0, 2.0 * duration / 3.0);
    let last = max_in(2.0 * duration / 3.0, duration + interval);
    let overall = dbsizes.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let no_ttl = samples.iter().filter_map(|s| s.keys_without_ttl).max().unwrap_or(0);
    checks.push(Check {
        name: "keys bounded by identities x limits",
        passed: overall <= KEY_BOUND,
        detail: format!("at most {overall} keys, bound {KEY_BOUND}"),
    });
    checks.push(Check {
        name: "key count not growing (last third vs middle third)",
        passed: match (middle, last) {
            (Some(m), Some(l)) => l as f64 <= m as f64 * KEY_GROWTH + KEY_MARGIN,
            _ => false,
        },
        detail: format!("max middle third {middle:?}, max last third {last:?} (allowed x{KEY_GROWTH} + {KEY_MARGIN})"),
    });
    checks.push(Check {
        name: "every key has an expiry",
        passed: no_ttl == 0,
        detail: format!("at most {no_ttl} keys without a TTL in a sample"),
    });
    let key_wait = KEY_LIFE.as_secs_f64() + 10.0;
    checks.push(Check {
        name: "keys gone once traffic stopped and the longest window passed",
        passed: end.keys_gone_after.is_some(),
        detail: match end.keys_gone_after {
            Some(after) => {
                format!("{:?} keys at stop, none {after:.1} s later (allowed {key_wait:.0} s)", end.keys_at_stop)
            }
            None => format!("{} keys left after {key_wait:.0} s: {:?}", end.keys_left.len(), end.keys_left),
        },
    });

    // 3. Leases: none left.
    let lease_wait = LEASE_MS as f64 / 1000.0 + 5.0;
    let gauges: Vec<f64> = end.metrics.iter().map(|m| m.get("leases_in_flight").copied().unwrap_or(f64::NAN)).collect();
    checks.push(Check {
        name: "no lease left after traffic stopped",
        passed: end.leases_gone_after.is_some() && gauges.iter().all(|g| *g == 0.0),
        detail: format!(
            "live leases in Redis gone after {:?} s (allowed {lease_wait:.0} s, {} left); \
             gateway_leases_in_flight per gateway {gauges:?}",
            end.leases_gone_after.map(|a| (a * 10.0).round() / 10.0),
            end.leases_left
        ),
    });

    // 4. RSS flat after warm-up, per gateway process.
    let warmup = settings.warmup();
    let mut rss = Vec::new();
    let mut rss_failures = Vec::new();
    let last_t = samples.last().map_or(0.0, |s| s.t);
    // The median RSS of gateway `index` over the samples in [from, to], and when that window is.
    let median_in = |index: usize, from: f64, to: f64| -> Option<(f64, u64)> {
        let mut values: Vec<u64> =
            samples.iter().filter(|s| s.t >= from && s.t <= to).filter_map(|s| s.rss_kib[index]).collect();
        values.sort_unstable();
        Some((from, *values.get(values.len() / 2)?))
    };
    for (index, gateway) in gateways.iter().enumerate() {
        // After warm-up: the warm-up's length right after it; the end: as long, up to the last
        // sample. A gateway restarted too late for the two not to overlap is not compared.
        let after_warmup = gateway.life_start + warmup;
        let baseline = median_in(index, after_warmup, after_warmup + warmup);
        let end_value = match last_t - warmup >= after_warmup + warmup {
            true => median_in(index, last_t - warmup, last_t),
            false => None,
        };
        let first = samples.iter().find(|s| s.t >= gateway.life_start).and_then(|s| s.rss_kib[index]);
        let peak = samples.iter().filter(|s| s.t >= gateway.life_start).filter_map(|s| s.rss_kib[index]).max();
        let (compared, ratio) = match (baseline, end_value) {
            (Some((bt, b)), Some((et, e))) => {
                let ratio = e as f64 / b as f64;
                if e as f64 > b as f64 * RSS_GROWTH + FAULT_HIGH_WATER_KIB {
                    rss_failures.push(format!(
                        "gateway-{index}: median {b} KiB from {bt:.0} s, {e} KiB from {et:.0} s \
                         (x{ratio:.3}; allowed x{RSS_GROWTH} + {FAULT_HIGH_WATER_KIB} KiB)"
                    ));
                }
                (true, Some(ratio))
            }
            _ => (false, None),
        };
        rss.push(json!({
            "gateway": index,
            "restarts": gateway.restarts,
            "life_start_s": gateway.life_start,
            "first_kib": first,
            "baseline": baseline.map(|(t, k)| json!({"t": t, "kib": k})),
            "end": end_value.map(|(t, k)| json!({"t": t, "kib": k})),
            "peak_kib": peak,
            "ratio": ratio,
            "compared": compared,
        }));
    }
    let compared = rss.iter().filter(|r| r["compared"] == true).count();
    checks.push(Check {
        name: "each gateway's RSS flat after warm-up (end within 10% and the faults' high-water mark)",
        passed: rss_failures.is_empty() && compared > 0,
        detail: if rss_failures.is_empty() {
            rss.iter()
                .map(|r| match r["ratio"].as_f64() {
                    Some(ratio) => format!(
                        "gateway-{}: median {} KiB after warm-up, {} KiB at the end (x{ratio:.3})",
                        r["gateway"], r["baseline"]["kib"], r["end"]["kib"]
                    ),
                    None => format!(
                        "gateway-{}: restarted at {:.0} s, too late to compare ({warmup:.0} s of warm-up, \
                         as long after it, and as long at the end)",
                        r["gateway"],
                        r["life_start_s"].as_f64().unwrap_or(0.0)
                    ),
                })
                .collect::<Vec<_>>()
                .join("; ")
        } else {
            rss_failures.join("; ")
        },
    });

    // 5. p99 stable outside faults.
    let clean = |i: usize| {
        let (a, b) = (i as f64 * interval, (i + 1) as f64 * interval);
        i > 0 && b <= duration && !in_fault(a, b, faults)
    };
    // The median of the chosen intervals' p99s, the p99 of all their requests pooled, how many
    // requests, which intervals.
    let p99_of = |range: &dyn Fn(usize) -> bool| {
        let mut all: Vec<u32> = Vec::new();
        let mut p99s: Vec<f64> = Vec::new();
        let mut used = Vec::new();
        for (i, bucket) in buckets.iter().enumerate() {
            if clean(i) && range(i) && !bucket.latencies_us.is_empty() {
                let mut sorted = bucket.latencies_us.clone();
                sorted.sort_unstable();
                p99s.extend(percentile(&sorted, 0.99));
                all.extend(&bucket.latencies_us);
                used.push(i);
            }
        }
        all.sort_unstable();
        p99s.sort_by(f64::total_cmp);
        let median = match p99s.len() {
            0 => None,
            n if n % 2 == 1 => Some(p99s[n / 2]),
            n => Some((p99s[n / 2 - 1] + p99s[n / 2]) / 2.0),
        };
        (median, percentile(&all, 0.99), all.len(), used)
    };
    let third = duration / 3.0;
    let (early, early_pooled, early_n, early_used) = p99_of(&|i| (i + 1) as f64 * interval <= third);
    let (late, late_pooled, late_n, late_used) = p99_of(&|i| i as f64 * interval >= 2.0 * third);
    let allowed = early.map(|e| (2.0 * e).max(P99_FLOOR_MS));
    let round = |v: Option<f64>| v.map(|v| v.round());
    checks.push(Check {
        name: "p99 stable outside faults (last third vs first third)",
        passed: matches!((early, late, allowed), (Some(_), Some(l), Some(a)) if l <= a),
        detail: format!(
            "early p99 {:?} ms (median of {} intervals; {:?} ms over their {early_n} requests), \
             late p99 {:?} ms (median of {} intervals; {:?} ms over their {late_n} requests), allowed {:?} ms",
            round(early),
            early_used.len(),
            round(early_pooled),
            round(late),
            late_used.len(),
            round(late_pooled),
            round(allowed)
        ),
    });
    let p99 = json!({
        "early_median_ms": early,
        "early_pooled_ms": early_pooled,
        "early_requests": early_n,
        "early_intervals": early_used,
        "late_median_ms": late,
        "late_pooled_ms": late_pooled,
        "late_requests": late_n,
        "late_intervals": late_used,
        "allowed_ms": allowed,
        "recovery_s": RECOVERY,
        "floor_ms": P99_FLOOR_MS,
    });

    // 6. The replica.
    checks.push(Check {
        name: "replica and primary agree at the end",
        passed: matches!(end.replica, Some(Ok(_))),
        detail: match &end.replica {
            Some(Ok(text)) | Some(Err(text)) => text.clone(),
            None => "not compared".into(),
        },
    });

    // 7. Every fault is recovered from, and nothing else went wrong.
    let mut unrecovered = Vec::new();
    for fault in faults {
        let recovered = buckets.iter().enumerate().any(|(i, b)| {
            // The intervals that start after the fault ended: admissions there came after it.
            let a = i as f64 * interval;
            a >= fault.end && a < fault.end + RECOVERED_WITHIN && b.http[0] > 0 && b.grpc[0] > 0
        });
        if !recovered {
            unrecovered.push(format!("{} at {:.0} s", fault.fault.name(), fault.start));
        }
    }
    checks.push(Check {
        name: "HTTP and gRPC traffic admitted again within 15 s of every fault",
        passed: unrecovered.is_empty() && !faults.is_empty(),
        detail: if faults.is_empty() {
            "no fault was injected".into()
        } else if unrecovered.is_empty() {
            format!("{} faults, each followed by admissions", faults.len())
        } else {
            format!("no admission after {unrecovered:?}")
        },
    });
    let unexpected = stats.unexpected.lock().unwrap().clone();
    checks.push(Check {
        name: "no unexpected answer (only 200, 429, 503; gRPC OK or OVER_LIMIT) and no gateway exited by itself",
        passed: unexpected.is_empty() && exits.is_empty(),
        detail: format!(
            "{} unexpected answers {:?}; exits {exits:?}",
            unexpected.len(),
            unexpected.iter().take(5).collect::<Vec<_>>()
        ),
    });
    let keys = json!({
        "bound": KEY_BOUND, "max": overall, "max_middle_third": middle, "max_last_third": last,
        "max_without_ttl": no_ttl, "at_stop": end.keys_at_stop, "gone_after_s": end.keys_gone_after,
        "left": end.keys_left,
    });
    Analysis { checks, probes, rss, p99, keys }
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Row {
    start: f64,
    end: f64,
    bucket: Bucket,
    p50: Option<f64>,
    p99: Option<f64>,
    faults: Vec<String>,
}

fn rows(buckets: &[Bucket], interval: f64, faults: &[Injected]) -> Vec<Row> {
    buckets
        .iter()
        .enumerate()
        .map(|(i, bucket)| {
            let (start, end) = (i as f64 * interval, (i + 1) as f64 * interval);
            let mut sorted = bucket.latencies_us.clone();
            sorted.sort_unstable();
            let faults = faults
                .iter()
                .filter(|f| f.start < end && f.end.max(f.start) >= start)
                .map(|f| f.fault.name().to_string())
                .collect();
            Row {
                start,
                end,
                bucket: bucket.clone(),
                p50: percentile(&sorted, 0.5),
                p99: percentile(&sorted, 0.99),
                faults,
            }
        })
        .collect()
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

#[allow(clippy::too_many_arguments)]
fn write_report(
    settings: &Settings,
    stats: &Stats,
    rows: &[Row],
    samples: &[Sample],
    faults: &[Injected],
    end: &End,
    analysis: &Analysis,
    started_unix: u64,
) -> (PathBuf, PathBuf, PathBuf) {
    let dir = &settings.report_dir;
    let kinds = stats.kinds.lock().unwrap().clone();
    let errors = stats.errors.lock().unwrap().clone();
    let total = |grpc: bool, slot: usize| -> u64 {
        rows.iter().map(|r| if grpc { r.bucket.grpc[slot] } else { r.bucket.http[slot] }).sum()
    };
    let dropped: u64 = rows.iter().map(|r| r.bucket.dropped).sum();
    let errors_outside: u64 = rows.iter().filter(|r| !in_fault(r.start, r.end, faults)).map(|r| r.bucket.http[2]).sum();
    let passed = analysis.checks.iter().all(|c| c.passed);

    // JSON.
    let window = |w: Option<(usize, f64, u64)>| w.map(|(c, s, b)| json!({"count": c, "span_s": s, "bound": b}));
    let probes: Vec<serde_json::Value> = analysis
        .probes
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "admitted": p.admitted,
                "burst": p.burst,
                "interval_s": p.interval_nanos as f64 / 1e9,
                "tightest": window(p.tightest),
                "tightest_across_a_fault": window(p.tightest_in_fault),
                "violations": p.violations,
                "worst_violation": p.worst_violation,
            })
        })
        .collect();
    let counts = |c: &[u64; 3]| json!({"admitted": c[0], "limited": c[1], "errors": c[2]});
    let intervals: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "start_s": r.start,
                "end_s": r.end,
                "http": counts(&r.bucket.http),
                "grpc": counts(&r.bucket.grpc),
                "dropped": r.bucket.dropped,
                "p50_ms": r.p50,
                "p99_ms": r.p99,
                "faults": r.faults,
            })
        })
        .collect();
    let sampled: Vec<serde_json::Value> = samples
        .iter()
        .map(|s| {
            json!({
                "t_s": s.t,
                "rss_kib": s.rss_kib,
                "dbsize": s.dbsize,
                "replica_dbsize": s.replica_dbsize,
                "leases": s.leases,
                "keys_without_ttl": s.keys_without_ttl,
                "redis_used_kib": s.redis_used_kib,
                "gateway_gauges": s.gauges,
            })
        })
        .collect();
    let checks: Vec<serde_json::Value> =
        analysis.checks.iter().map(|c| json!({"name": c.name, "passed": c.passed, "detail": c.detail})).collect();
    let by_kind: Vec<serde_json::Value> =
        kinds.iter().map(|((kind, outcome), n)| json!({"kind": kind, "outcome": outcome.name(), "count": n})).collect();
    let fault_list: Vec<serde_json::Value> = faults
        .iter()
        .map(|f| {
            json!({"fault": f.fault.name(), "target": f.target, "start_s": f.start, "end_s": f.end, "note": f.note})
        })
        .collect();
    let replica = match &end.replica {
        Some(Ok(text)) => json!({"ok": text}),
        Some(Err(text)) => json!({"error": text}),
        None => json!(null),
    };
    let json = json!({
        "started_unix": started_unix,
        "settings": {
            "duration_s": settings.duration.as_secs_f64(),
            "fault_every_s": settings.fault_every.as_secs_f64(),
            "interval_s": settings.interval.as_secs_f64(),
            "rate_per_s": settings.rate,
            "warmup_s": settings.warmup(),
        },
        "passed": passed,
        "checks": checks,
        "totals": {
            "http": {
                "admitted": total(false, 0),
                "limited": total(false, 1),
                "errors": total(false, 2),
                "errors_outside_faults": errors_outside,
            },
            "grpc": {"admitted": total(true, 0), "limited": total(true, 1), "errors": total(true, 2)},
            "dropped_dispatches": dropped,
            "by_kind": by_kind,
            "errors": errors,
        },
        "faults": fault_list,
        "probes": probes,
        "rss": analysis.rss,
        "p99": analysis.p99,
        "keys": analysis.keys,
        "end": {"replica": replica, "leases_gone_after_s": end.leases_gone_after, "gateway_metrics": end.metrics},
        "intervals": intervals,
        "samples": sampled,
    });
    let json_path = dir.join("report.json");
    fs::write(&json_path, serde_json::to_string_pretty(&json).unwrap()).unwrap();

    // Markdown.
    let mut md = String::new();
    let _ = writeln!(md, "# Soak report\n");
    let _ = writeln!(
        md,
        "{} s of traffic at {} dispatches/s (plus probes), a fault every {} s, sampled every {} s; warm-up {} s. \
         Started at {started_unix} (Unix time). **{}**\n",
        settings.duration.as_secs_f64(),
        settings.rate,
        settings.fault_every.as_secs_f64(),
        settings.interval.as_secs_f64(),
        settings.warmup(),
        if passed { "All checks passed." } else { "Some checks FAILED." }
    );
    let _ = writeln!(md, "![plot](soak.svg)\n\n## Checks\n\n| check | result | detail |\n|---|---|---|");
    for c in &analysis.checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            c.name,
            if c.passed { "pass" } else { "**FAIL**" },
            c.detail.replace('|', "\\|")
        );
    }
    let _ = writeln!(md, "\n## Totals\n\n| | admitted | limited | errors |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| HTTP | {} | {} | {} ({errors_outside} outside faults and their {RECOVERY} s recovery) |",
        total(false, 0),
        total(false, 1),
        total(false, 2)
    );
    let _ = writeln!(md, "| gRPC | {} | {} | {} |", total(true, 0), total(true, 1), total(true, 2));
    let _ = writeln!(
        md,
        "\nDispatches dropped (256 requests already in flight, or the test itself over a second behind): {dropped}.\n"
    );
    let _ = writeln!(md, "| kind | admitted | limited | errors |\n|---|---|---|---|");
    let kind_names: std::collections::BTreeSet<&str> = kinds.keys().map(|(k, _)| *k).collect();
    for kind in kind_names {
        let n = |o: Outcome| kinds.get(&(kind, o)).copied().unwrap_or(0);
        let _ = writeln!(md, "| {kind} | {} | {} | {} |", n(Outcome::Admitted), n(Outcome::Limited), n(Outcome::Error));
    }
    let _ = writeln!(md, "\nErrors by kind and cause:\n");
    for (what, n) in &errors {
        let _ = writeln!(md, "- {n} × {what}");
    }
    let _ = writeln!(md, "\n## Faults\n\n| start (s) | end (s) | fault | target | note |\n|---|---|---|---|---|");
    for f in faults {
        let _ = writeln!(md, "| {:.1} | {:.1} | {} | {} | {} |", f.start, f.end, f.fault.name(), f.target, f.note);
    }
    let _ = writeln!(
        md,
        "\n## Probes\n\n| probe | admitted | burst | T (s) | tightest window | tightest across a fault \
         | violations |\n|---|---|---|---|---|---|---|"
    );
    for p in &analysis.probes {
        let window =
            |w: Option<(usize, f64, u64)>| w.map_or("-".into(), |(c, s, b)| format!("{c} in {s:.2} s (bound {b})"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.name,
            p.admitted,
            p.burst,
            p.interval_nanos as f64 / 1e9,
            window(p.tightest),
            window(p.tightest_in_fault),
            p.violations
        );
    }
    let _ = writeln!(md, "\n## Gateways\n");
    for r in &analysis.rss {
        let _ = writeln!(md, "- {r}");
    }
    for (i, m) in end.metrics.iter().enumerate() {
        let _ = writeln!(md, "- gateway-{i} metrics at the end: {m:?}");
    }
    let _ = writeln!(md, "\n## Keys\n\n{}\n\n## p99\n\n{}\n", analysis.keys, analysis.p99);
    let _ = writeln!(
        md,
        "## Intervals\n\n| t (s) | HTTP adm | lim | err | gRPC adm | lim | err | p50 ms | p99 ms | RSS KiB | keys \
         | replica keys | leases | faults |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let sample = samples.iter().find(|s| s.t >= r.end - 0.5);
        let rss = sample.map_or("-".into(), |s| s.rss_kib.iter().map(|k| opt(*k)).collect::<Vec<_>>().join(" / "));
        let _ = writeln!(
            md,
            "| {:.0}-{:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {rss} | {} | {} | {} | {} |",
            r.start,
            r.end,
            r.bucket.http[0],
            r.bucket.http[1],
            r.bucket.http[2],
            r.bucket.grpc[0],
            r.bucket.grpc[1],
            r.bucket.grpc[2],
            opt(r.p50.map(|v| v.round())),
            opt(r.p99.map(|v| v.round())),
            opt(sample.and_then(|s| s.dbsize)),
            opt(sample.and_then(|s| s.replica_dbsize)),
            opt(sample.and_then(|s| s.leases)),
            r.faults.join(", ")
        );
    }
    let md_path = dir.join("report.md");
    fs::write(&md_path, md).unwrap();

    // The plot.
    let interval = settings.interval.as_secs_f64();
    // Whole intervals of traffic only: the one after the stop holds the stragglers.
    let plotted: Vec<&Row> = rows.iter().filter(|r| r.end <= settings.duration.as_secs_f64() + 1e-6).collect();
    let per_second = |slot: usize| -> Vec<(f64, Option<f64>)> {
        plotted.iter().map(|r| ((r.start + r.end) / 2.0, Some(r.bucket.http[slot] as f64 / interval))).collect()
    };
    let gateway_count = samples.first().map_or(0, |s| s.rss_kib.len());
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
    let panels = vec![
        svg::Panel {
            title: "HTTP answers per second".into(),
            series: vec![
                svg::Series { name: "admitted".into(), color: "#2ca02c", points: per_second(0) },
                svg::Series { name: "limited (429)".into(), color: "#ff7f0e", points: per_second(1) },
                svg::Series { name: "errors (503, ...)".into(), color: "#d62728", points: per_second(2) },
            ],
        },
        svg::Panel {
            title: "HTTP latency (ms)".into(),
            series: vec![
                svg::Series {
                    name: "p50".into(),
                    color: "#1f77b4",
                    points: plotted.iter().map(|r| ((r.start + r.end) / 2.0, r.p50)).collect(),
                },
                svg::Series {
                    name: "p99".into(),
                    color: "#9467bd",
                    points: plotted.iter().map(|r| ((r.start + r.end) / 2.0, r.p99)).collect(),
                },
            ],
        },
        svg::Panel {
            title: "Gateway RSS (MiB)".into(),
            series: (0..gateway_count)
                .map(|g| svg::Series {
                    name: format!("gateway-{g}"),
                    color: colors[g % colors.len()],
                    points: samples.iter().map(|s| (s.t, s.rss_kib[g].map(|k| k as f64 / 1024.0))).collect(),
                })
                .collect(),
        },
        svg::Panel {
            title: "Redis keys and leases".into(),
            series: vec![
                svg::Series {
                    name: "keys (primary)".into(),
                    color: "#1f77b4",
                    points: samples.iter().map(|s| (s.t, s.dbsize.map(|k| k as f64))).collect(),
                },
                svg::Series {
                    name: "keys (replica)".into(),
                    color: "#17becf",
                    points: samples.iter().map(|s| (s.t, s.replica_dbsize.map(|k| k as f64))).collect(),
                },
                svg::Series {
                    name: "leases held".into(),
                    color: "#8c564b",
                    points: samples.iter().map(|s| (s.t, s.leases.map(|k| k as f64))).collect(),
                },
            ],
        },
        svg::Panel {
            title: "Gateways' gauges (sum of both) and Redis memory".into(),
            series: vec![
                svg::Series {
                    name: "connections open".into(),
                    color: "#1f77b4",
                    points: samples.iter().map(|s| (s.t, gauge_sum(s, |g| g.connections_open))).collect(),
                },
                svg::Series {
                    name: "deny cache entries".into(),
                    color: "#ff7f0e",
                    points: samples.iter().map(|s| (s.t, gauge_sum(s, |g| g.deny_cache_entries))).collect(),
                },
                svg::Series {
                    name: "leases in flight".into(),
                    color: "#8c564b",
                    points: samples.iter().map(|s| (s.t, gauge_sum(s, |g| g.leases_in_flight))).collect(),
                },
                svg::Series {
                    name: "Redis used_memory (MiB)".into(),
                    color: "#7f7f7f",
                    points: samples.iter().map(|s| (s.t, s.redis_used_kib.map(|k| k as f64 / 1024.0))).collect(),
                },
            ],
        },
    ];
    let markers: Vec<svg::Marker> =
        faults.iter().map(|f| svg::Marker { start: f.start, end: f.end, label: f.fault.name().into() }).collect();
    let x_max = samples.last().map_or(settings.duration.as_secs_f64(), |s| s.t).max(settings.duration.as_secs_f64());
    let title = format!("Soak: {} s, {} faults", settings.duration.as_secs_f64(), faults.len());
    let svg_path = dir.join("soak.svg");
    fs::write(&svg_path, svg::render(&title, x_max, &panels, &markers)).unwrap();
    (md_path, json_path, svg_path)
}

/// A gauge summed over the gateways that answered.
fn gauge_sum(sample: &Sample, gauge: impl Fn(&Gauges) -> f64) -> Option<f64> {
    let values: Vec<f64> = sample.gauges.iter().flatten().map(&gauge).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

// ---------------------------------------------------------------------------------------------
// The run.

/// What `/metrics` of a gateway says at the end.
async fn end_metrics(port: u16) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(answer) = get(&format!("http://127.0.0.1:{port}/metrics")).await else { return out };
    let text = String::from_utf8_lossy(&answer.body).to_string();
    let Ok(scrape) = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))) else { return out };
    let mut leases = 0.0;
    for sample in &scrape.samples {
        let v = match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            _ => continue,
        };
        match sample.metric.as_str() {
            "gateway_leases_in_flight" => leases += v,
            "gateway_redis_late_replies_total" => {
                let key = format!(
                    "late_replies.{}.{}",
                    sample.labels.get("command").unwrap_or("?"),
                    sample.labels.get("outcome").unwrap_or("?")
                );
                *out.entry(key).or_default() += v;
            }
            "gateway_requests_total" => {
                *out.entry(format!("requests.{}", sample.labels.get("outcome").unwrap_or("?"))).or_default() += v;
            }
            "gateway_envoy_requests_total" => {
                *out.entry(format!("envoy.{}", sample.labels.get("code").unwrap_or("?"))).or_default() += v;
            }
            _ => {}
        }
    }
    out.insert("leases_in_flight".into(), leases);
    out
}

#[test]
fn soak() {
    let settings = Settings::from_env();
    fs::create_dir_all(&settings.report_dir).unwrap();
    println!(
        "soak: {} s of traffic, a fault every {} s, report in {}",
        settings.duration.as_secs_f64(),
        settings.fault_every.as_secs_f64(),
        settings.report_dir.display()
    );
    let mut topology = Topology::start(settings.report_dir.clone());
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let t0 = Instant::now();
    let stats = Arc::new(Stats::new(t0, settings.interval));
    let stop = Arc::new(AtomicBool::new(false));
    let seed = started_unix ^ 0x5EED;
    let traffic = rt.spawn(traffic::run(stats.clone(), topology.targets(), settings.rate, stop.clone(), seed));

    let mut samples = Vec::new();
    let mut faults: Vec<Injected> = Vec::new();
    let mut exits = Vec::new();
    let mut next_sample = settings.interval;
    let mut next_fault = settings.fault_every;
    // No fault starts in the last 10 s: each one's recovery is seen before traffic stops.
    let last_fault = settings.duration.saturating_sub(Duration::from_secs(10));
    let mut printed = 0;
    while t0.elapsed() < settings.duration {
        let now = t0.elapsed();
        if now >= next_sample {
            samples.push(sample(&mut topology, &stats, &mut exits));
            next_sample = settings.interval * (now.as_secs_f64() / settings.interval.as_secs_f64()).floor() as u32
                + settings.interval;
            printed = progress(&stats, &samples, printed);
        } else if now >= next_fault && next_fault <= last_fault {
            let fault = Fault::ROTATION[faults.len() % Fault::ROTATION.len()];
            let nth = faults.iter().filter(|f| f.fault == fault).count();
            let injected = fault.inject(&mut topology, &stats, nth);
            println!("[{:>6.1}s] fault {}: {} ({})", injected.start, fault.name(), injected.target, injected.note);
            faults.push(injected);
            next_fault += settings.fault_every;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(40), traffic).await });
    samples.push(sample(&mut topology, &stats, &mut exits));
    progress(&stats, &samples, printed);
    let since_stop = || stopped.elapsed().as_secs_f64();

    // The end: the replica first, while most keys still live (their lives are seconds; a release
    // or settlement still on its way makes one attempt differ, and the next one agree), then
    // the leases and the keys.
    let mut end = End {
        keys_at_stop: connect(topology.primary.port()).and_then(|mut c| redis::cmd("DBSIZE").query(&mut c).ok()),
        replica: Some(compare_replica(&topology)),
        ..End::default()
    };
    let lease_deadline = stopped + Duration::from_millis(LEASE_MS) + Duration::from_secs(5);
    loop {
        let live = connect(topology.primary.port()).and_then(|mut c| live_leases(&mut c).ok());
        if live == Some(0) {
            end.leases_gone_after = Some(since_stop());
            break;
        }
        if Instant::now() >= lease_deadline {
            end.leases_left = live.unwrap_or(u64::MAX);
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let ports: Vec<u16> = topology.gateways.iter().map(|g| g.port).collect();
    end.metrics = ports.iter().map(|port| rt.block_on(end_metrics(*port))).collect();
    let key_deadline = stopped + KEY_LIFE + Duration::from_secs(10);
    loop {
        let Some(mut con) = connect(topology.primary.port()) else { break };
        let keys: u64 = redis::cmd("DBSIZE").query(&mut con).unwrap_or(u64::MAX);
        if keys == 0 {
            end.keys_gone_after = Some(since_stop());
            break;
        }
        if Instant::now() >= key_deadline {
            // SCAN drops what already expired and was not yet evicted; what remains lives on.
            let left = scan(&mut con, "*").unwrap_or_default();
            if left.is_empty() {
                end.keys_gone_after = Some(since_stop());
            }
            for key in left.iter().take(10) {
                let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap_or(-3);
                end.keys_left.push(format!("{key} (PTTL {pttl})"));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for index in 0..topology.gateways.len() {
        topology.save_logs(index);
    }

    let buckets = stats.buckets.lock().unwrap().clone();
    let analysis = analyse(&settings, &stats, &buckets, &samples, &faults, &end, &exits, &topology.gateways);
    let rows = rows(&buckets, settings.interval.as_secs_f64(), &faults);
    let (md, json, svg) = write_report(&settings, &stats, &rows, &samples, &faults, &end, &analysis, started_unix);
    println!("\nsoak checks:");
    for check in &analysis.checks {
        println!("  [{}] {}: {}", if check.passed { "pass" } else { "FAIL" }, check.name, check.detail);
    }
    println!("\nsoak report: {}\nsoak data:   {}\nsoak plot:   {}", md.display(), json.display(), svg.display());
    let failed: Vec<String> =
        analysis.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    assert!(failed.is_empty(), "soak checks failed (report in {}):\n{}", md.display(), failed.join("\n"));
}

/// Prints one line per new sample: the answers since the previous line, the p99, the RSS,
/// the keys and leases. Returns how many samples are printed.
fn progress(stats: &Stats, samples: &[Sample], printed: usize) -> usize {
    let buckets = stats.buckets.lock().unwrap().clone();
    for s in &samples[printed..] {
        let index = ((s.t / stats.interval.as_secs_f64()) as usize).saturating_sub(1);
        let b = buckets.get(index).cloned().unwrap_or_default();
        let mut sorted = b.latencies_us.clone();
        sorted.sort_unstable();
        let rss: Vec<String> =
            s.rss_kib.iter().map(|k| k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))).collect();
        println!(
            "[{:>6.1}s] http {}/{}/{} grpc {}/{}/{} (adm/lim/err) p99 {} ms | rss {} MiB | keys {} (replica {}) \
             | leases {}{}",
            s.t,
            b.http[0],
            b.http[1],
            b.http[2],
            b.grpc[0],
            b.grpc[1],
            b.grpc[2],
            opt(percentile(&sorted, 0.99).map(|v| v.round())),
            rss.join("/"),
            opt(s.dbsize),
            opt(s.replica_dbsize),
            opt(s.leases),
            if b.dropped > 0 { format!(" | dropped {}", b.dropped) } else { String::new() }
        );
    }
    samples.len()
}
