//! The gateway's configuration: a TOML file (see `gateway/gateway.toml`, every key documented
//! there) and the flags of `gateway serve`, checked once into [`Settings`].
//!
//! Each setting is declared once for the file ([`FileConfig`], in `file.rs`) and at most once
//! for its flag ([`Overrides`], in `flags.rs`); its default is a named constant below.
//! [`Settings::resolve`] (`resolve.rs`) applies the flags to the file, fills in the defaults
//! and checks every value, reporting the key at fault ([`ConfigError`], `error.rs`); the
//! request path never meets an invalid value. Secrets are wrapped ([`RedisUrl`],
//! [`Redacted`], `secret.rs`) so that `Settings` derives `Debug` without ever printing one.

mod error;
mod file;
mod flags;
mod policies;
mod resolve;
mod secret;
#[cfg(test)]
mod tests;
mod tiers;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{LimitSize, RefusedLimit};
use crate::identity::IpNet;
pub use crate::lease::Concurrency;

pub use error::ConfigError;
pub use file::{
    CapacityFile, DenyCacheFile, FileConfig, IdentityFile, LimitFile, PolicyFile, PolicyTierFile, RedisFile, TierFile,
    TiersFile, UpstreamFile,
};
pub use flags::{Overrides, ServeArgs};
pub use resolve::key_secret;
pub use secret::{redact_url, Pem, Redacted, RedisUrl};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_CLIENT_BODY_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_CLIENT_HEADER_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:9000";
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// Client connections open at once: ten thousand, two file descriptors each, well within the
/// usual hard limit on open files (524288 under systemd, 1048576 in containers).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// A write to a client that reads nothing: a minute, as nginx's `send_timeout`.
pub const DEFAULT_CLIENT_WRITE_TIMEOUT_MS: u64 = 60_000;
/// The whole answer of the model: ten minutes, as the OpenAI SDKs wait by default.
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT_MS: u64 = 600_000;
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 250;
pub const DEFAULT_REDIS_CONNECT_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_KEY_PREFIX: &str = "rl:";
pub const DEFAULT_API_KEY_HEADERS: [&str; 2] = ["authorization", "x-api-key"];
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
pub const DEFAULT_SECRET_ENV: &str = "GATEWAY_KEY_SECRET";
/// The environment variable read as `--redis-url` when none of `--redis-url`,
/// `--redis-cluster-node` and `--redis-sentinel` is given.
pub const REDIS_URL_ENV: &str = "GATEWAY_REDIS_URL";
/// The policy `--limit` and `--window` make when the file has none, and the paths of a
/// policy that names none.
pub const DEFAULT_POLICY_NAME: &str = "default";
pub const DEFAULT_POLICY_PATH: &str = "/";
/// The name of the limit a policy's simple form (`limit`, `window`, `burst`) declares.
pub const REQUESTS_LIMIT_NAME: &str = "requests";
/// The tier of API keys no `[[tier]]` lists, and of callers without a key, when `[tiers]` does
/// not say.
pub const DEFAULT_TIER: &str = "default";
pub const DEFAULT_IP_TIER: &str = "anonymous";
pub const DEFAULT_CHARS_PER_TOKEN: u64 = 4;
pub const DEFAULT_MAX_TOKENS: u64 = 1024;
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;
/// One server-sent event of a streamed LLM answer: chunks are a few hundred bytes, so 1 MiB
/// only stops a model that never ends an event.
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 1024 * 1024;
/// How many refused callers the deny cache remembers at most (about 100 bytes each).
pub const DEFAULT_DENY_CACHE_MAX_ENTRIES: u64 = 100_000;
/// How long a concurrency lease lives without renewal (renewed every third of it).
pub const DEFAULT_LEASE_MS: u64 = 30_000;
/// The module's bounds on `max` and `lease_ms` of `RL.ACQUIRE` (from `rl_protocol::bounds`,
/// where the module takes them from too).
pub use rl_protocol::bounds::{MAX_LEASES as MAX_CONCURRENT_LIMIT, MAX_LEASE_MS};

/// What to do with a request when Redis does not answer in time (or answers an error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Refuse with `503` (the default): no request reaches the model unmetered.
    #[default]
    Closed,
    /// Forward without a limit (and without rate-limit headers), logging a warning.
    Open,
}

/// `redis.backend`: which commands the gateway uses (see `limiter::redis::dialect`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Probe: the module, else the Functions library, else the library as a script.
    #[default]
    Auto,
    /// The module's commands (`RL.CHECK ...`).
    Module,
    /// The Functions library (`FCALL rl_check ...`), loaded by the gateway if missing or older.
    Functions,
    /// The library as a script (`EVALSHA ...`), for servers without Functions (Redis 6.2).
    Scripts,
}

impl BackendChoice {
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Module => "module",
            BackendChoice::Functions => "functions",
            BackendChoice::Scripts => "scripts",
        }
    }
}

/// One rate-limit policy: the request paths under any of `paths` (see [`crate::routing`]),
/// and its limits, all checked together in one atomic call (all charged or none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub paths: Vec<String>,
    /// At least one, names distinct, in the order of the file (the simple form's `limit`,
    /// `window`, `burst` first, as the limit named [`REQUESTS_LIMIT_NAME`]).
    pub limits: Vec<Quota>,
    /// `Some` for an OpenAI-compatible LLM route (`kind = "openai"`): tokens are estimated
    /// from the request, reserved, and settled on the answer's `usage`.
    pub llm: Option<Llm>,
    /// The policy as it applies to callers of a tier with limits of its own (`[[policy.tier]]`),
    /// by tier name; each has the same name, paths and LLM settings, and no tiers. Callers of
    /// any other tier get this policy's `limits`.
    pub tiers: BTreeMap<String, Arc<Policy>>,
    /// `max_concurrent` requests in flight per caller, each holding a lease of `lease_ms`
    /// ([`crate::lease`]); `None` without `max_concurrent`.
    pub concurrency: Option<Concurrency>,
    /// `shadow = true`: every limit and lease is evaluated and counted (metrics, logs), but
    /// nothing is refused and the answers carry no rate-limit headers.
    pub shadow: bool,
}

/// Which tier a caller is in: API keys by their HMAC digest, unknown keys `default`, callers
/// without a key `ip`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tiers {
    pub default: String,
    pub ip: String,
    /// HMAC digest of an API key (32 hex digits) -> its tier.
    pub keys: HashMap<String, String>,
    /// `[[tier]] keep_percent` by tier name (0 for a tier not listed).
    pub keep_percent: HashMap<String, u64>,
}

impl Tiers {
    /// The tier of a caller with the API key whose digest is `key_digest`, or without a key.
    pub fn of(&self, key_digest: Option<&str>) -> &str {
        match key_digest {
            Some(digest) => self.keys.get(digest).map_or(&self.default, |t| t),
            None => &self.ip,
        }
    }

    /// `keep_percent` of `tier`: 0 unless its `[[tier]]` says.
    pub fn keep_percent(&self, tier: &str) -> u64 {
        self.keep_percent.get(tier).copied().unwrap_or(0)
    }

    /// The policy `policy` as it applies to a caller of `tier`.
    pub fn policy_for(policy: &Arc<Policy>, tier: &str) -> Arc<Policy> {
        policy.tiers.get(tier).cloned().unwrap_or_else(|| policy.clone())
    }
}

/// `kind` of a policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Any HTTP API: every request costs 1 on each limit.
    #[default]
    Plain,
    /// OpenAI-compatible JSON (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`).
    Openai,
}

/// How an LLM policy estimates and settles tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Llm {
    /// Characters of prompt text counted as one token (rounded up).
    pub chars_per_token: u64,
    /// Completion tokens reserved when the request names no `max_completion_tokens`/`max_tokens`.
    pub default_max_tokens: u64,
    /// The largest non-streamed answer buffered to read its `usage`; a larger one is passed
    /// through and keeps its reservation.
    pub max_response_bytes: u64,
    /// The largest event of a streamed answer (events are held whole to read the usage); a
    /// longer one cuts the stream, which then keeps its reservation.
    pub max_event_bytes: u64,
}

/// What one request costs on a limit: one (`requests`), or its tokens (`tokens`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    #[default]
    Requests,
    Tokens,
}

impl Unit {
    /// `requests` or `tokens`, as in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
        }
    }
}

/// One limit of a policy: `limit` units per `window` seconds, bucket of `burst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Letters, digits, '-', '_', '.'; part of the Redis key and the header item name.
    pub name: String,
    pub unit: Unit,
    pub limit: u64,
    pub window: u64,
    pub burst: u64,
}

impl Quota {
    /// This limit as it refused a request, in a refusal's body.
    pub fn refused(&self, policy: &str, retry_after_ms: Option<u64>) -> RefusedLimit {
        RefusedLimit {
            policy: policy.to_string(),
            name: self.name.clone(),
            unit: self.unit.as_str(),
            retry_after_ms,
            size: LimitSize::Rate { limit: self.limit, window: self.window, burst: self.burst },
        }
    }
}

impl Policy {
    /// A policy with one request limit named [`REQUESTS_LIMIT_NAME`] (the simple form).
    pub fn simple(name: &str, paths: &[&str], limit: u64, window: u64, burst: u64) -> Policy {
        Policy {
            name: name.to_string(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            limits: vec![Quota { name: REQUESTS_LIMIT_NAME.into(), unit: Unit::Requests, limit, window, burst }],
            llm: None,
            tiers: BTreeMap::new(),
            concurrency: None,
            shadow: false,
        }
    }

    /// The limit the `X-RateLimit-*` headers describe: the first counted in requests, else
    /// the first.
    pub fn primary(&self) -> usize {
        self.limits.iter().position(|q| q.unit == Unit::Requests).unwrap_or(0)
    }

    /// The name of limit `quota` in the `RateLimit-Policy` and `RateLimit` headers: the policy's
    /// name when it has a single limit, else `<policy>-<limit>`.
    pub fn item_name(&self, quota: &Quota) -> String {
        match self.limits.len() {
            1 => self.name.clone(),
            _ => format!("{}-{}", self.name, quota.name),
        }
    }
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub max_body_bytes: u64,
    /// How long reading a request body may take (then `408`).
    pub client_body_timeout: Duration,
    /// How long a client may take to send a request's headers, or stay idle between requests.
    pub client_header_timeout: Duration,
    /// How long a write to a client may wait for it to read; then the connection is closed.
    pub client_write_timeout: Duration,
    /// Client connections open at once (before the limit on open files is applied).
    pub max_connections: usize,
    pub upstream: Upstream,
    pub redis: RedisSettings,
    pub identity: IdentitySettings,
    pub policies: Vec<Policy>,
    pub tiers: Tiers,
    pub deny_cache: DenyCacheSettings,
    /// `[envoy]`: the rate limit service for Envoy, when it has a listener.
    pub envoy: Option<EnvoySettings>,
}

/// `[envoy]`, checked: where the gRPC service listens and the configuration it read.
#[derive(Clone, Debug)]
pub struct EnvoySettings {
    pub listen: SocketAddr,
    pub config_path: std::path::PathBuf,
    pub config: std::sync::Arc<crate::rls::config::RlsConfig>,
}

/// `[deny_cache]`: once Redis refused a caller under a policy whose refusing limits all count
/// requests, the gateway answers that caller's requests under that policy with `429` itself
/// until the refusal's `retry_after`, without asking Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyCacheSettings {
    pub enabled: bool,
    /// The most refusals remembered at once; when full, a new refusal is not remembered.
    pub max_entries: usize,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    /// `http://host:port`, without a trailing slash.
    pub origin: String,
    /// The base path requests are appended to (`""` or `/something`, no trailing slash).
    pub base_path: String,
    /// Until the model's response headers.
    pub timeout: Duration,
    /// Until the model's whole answer has been received (headers and body).
    pub response_timeout: Duration,
    /// `[upstream] max_concurrent`: requests in flight to the model across every gateway.
    pub concurrency: Option<Concurrency>,
    /// `[upstream.capacity]`: one bucket (`<prefix>upstream:capacity`) for every forwarded
    /// request, where a tier's `keep_percent` of the burst must remain after its request.
    pub capacity: Option<Quota>,
}

#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// The time allowed for one answer.
    pub timeout: Duration,
    /// The time allowed to (re)connect.
    pub connect_timeout: Duration,
    pub key_prefix: String,
    pub failure_mode: FailureMode,
    pub tls: Option<RedisTls>,
    /// Which commands: the module's, the Functions library's, the script's, or probed.
    pub backend: BackendChoice,
}

/// Where the limits live: one server, a Redis Cluster given by seed nodes, or the primary
/// that Redis Sentinel names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    Server(RedisUrl),
    /// Seed nodes, all `redis://` or all `rediss://`.
    Cluster(Vec<RedisUrl>),
    Sentinel(SentinelTarget),
}

/// `redis.sentinels` and the primary they monitor. Plain TCP only (`redis://`): the sentinel
/// URLs may carry the sentinels' own credentials, the primary's password is separate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelTarget {
    pub sentinels: Vec<RedisUrl>,
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> ...`).
    pub master: String,
    /// `AUTH` to the primary (and whichever replica is promoted), as the default user.
    pub master_password: Option<Redacted<String>>,
}

impl RedisTarget {
    /// Whether the connection is TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        match self {
            RedisTarget::Server(url) => url.is_tls(),
            RedisTarget::Cluster(nodes) => !nodes.is_empty() && nodes.iter().all(RedisUrl::is_tls),
            RedisTarget::Sentinel(_) => false,
        }
    }
}

/// For logs: the URL, `cluster [nodes]` or `sentinel master <name> via [sentinels]`,
/// passwords hidden.
impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Server(url) => write!(f, "{url}"),
            RedisTarget::Cluster(nodes) => write!(f, "cluster {nodes:?}"),
            RedisTarget::Sentinel(s) => write!(f, "sentinel master {:?} via {:?}", s.master, s.sentinels),
        }
    }
}

/// PEM files for `rediss://`: a CA to trust instead of the system's, and a client
/// certificate and key for servers that require them (`tls-auth-clients yes`).
#[derive(Clone, Debug, Default)]
pub struct RedisTls {
    pub ca: Option<Pem>,
    pub client_cert_and_key: Option<(Pem, Redacted<Pem>)>,
}

#[derive(Clone, Debug)]
pub struct IdentitySettings {
    /// Lower-case header names, tried in order; `authorization` takes `Bearer <key>`.
    pub api_key_headers: Vec<String>,
    pub secret: Redacted<Vec<u8>>,
    pub trusted_proxies: Vec<IpNet>,
    /// Answer `401` to requests without an API key instead of limiting them by IP.
    pub require_api_key: bool,
    /// IPv6 callers without a key share one bucket per network of this prefix length.
    pub ipv6_prefix: u8,
}
