//! The config file as written: every key optional (the defaults are filled in by
//! [`Settings::resolve`](super::Settings::resolve)), unknown keys refused.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BackendChoice, ConfigError, FailureMode, PolicyKind, Unit};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub client_body_timeout_ms: Option<u64>,
    pub client_header_timeout_ms: Option<u64>,
    pub client_write_timeout_ms: Option<u64>,
    pub max_connections: Option<u64>,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub redis: RedisFile,
    #[serde(default)]
    pub identity: IdentityFile,
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyFile>,
    #[serde(default)]
    pub tiers: TiersFile,
    #[serde(default, rename = "tier")]
    pub tier_list: Vec<TierFile>,
    #[serde(default)]
    pub deny_cache: DenyCacheFile,
    #[serde(default)]
    pub envoy: EnvoyFile,
}

/// `[envoy]`: the rate limit service for Envoy, on a gRPC listener of its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyFile {
    /// The gRPC listener, e.g. `127.0.0.1:8081`; without it, no service.
    pub listen: Option<String>,
    /// envoyproxy/ratelimit's YAML configuration: one file, or a directory of them.
    pub config: Option<String>,
}

/// `[deny_cache]`: answering a caller Redis just refused locally until its `retry_after`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyCacheFile {
    pub enabled: Option<bool>,
    pub max_entries: Option<u64>,
}

/// `[tiers]`: the tier of API keys no `[[tier]]` lists, and of callers without a key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiersFile {
    pub default: Option<String>,
    pub ip: Option<String>,
}

/// One `[[tier]]`: its name and the HMAC digests of its API keys (`gateway hash-key`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    pub name: String,
    #[serde(default)]
    pub keys: Vec<String>,
    /// Percent of `[upstream.capacity]`'s burst that must remain after a request of this tier.
    pub keep_percent: Option<u64>,
}

/// One `[[policy.tier]]`: the limits of the policy for callers of `tier`, replacing the
/// policy's own (same keys as the policy's simple form and `[[policy.tier.limits]]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTierFile {
    pub tier: String,
    pub limit: Option<u64>,
    pub window: Option<u64>,
    pub burst: Option<u64>,
    #[serde(default)]
    pub limits: Vec<LimitFile>,
    /// Requests in flight per caller for this tier (else the policy's `max_concurrent`).
    pub max_concurrent: Option<u64>,
    pub lease_ms: Option<u64>,
}

/// `[upstream.capacity]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityFile {
    pub limit: u64,
    pub window: u64,
    pub burst: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub url: Option<String>,
    pub timeout_ms: Option<u64>,
    pub response_timeout_ms: Option<u64>,
    /// Requests in flight to the upstream across every gateway (one lease set in Redis).
    pub max_concurrent: Option<u64>,
    pub lease_ms: Option<u64>,
    /// A bucket every forwarded request takes 1 from, shared by all callers and gateways.
    pub capacity: Option<CapacityFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub url: Option<String>,
    pub cluster_nodes: Option<Vec<String>>,
    pub sentinels: Option<Vec<String>>,
    pub sentinel_master: Option<String>,
    pub sentinel_master_password: Option<String>,
    pub timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub key_prefix: Option<String>,
    pub failure_mode: Option<FailureMode>,
    pub backend: Option<BackendChoice>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub api_key_headers: Option<Vec<String>>,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub require_api_key: Option<bool>,
    pub ipv6_prefix: Option<u8>,
}

/// One `[[policy]]` table: the simple form (`limit`, `window`, `burst`: a limit named
/// "requests") and/or `[[policy.limits]]` tables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub name: String,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    pub limit: Option<u64>,
    pub window: Option<u64>,
    pub burst: Option<u64>,
    #[serde(default)]
    pub limits: Vec<LimitFile>,
    /// `"openai"`: an OpenAI-compatible LLM route (reserve tokens, then settle).
    pub kind: Option<PolicyKind>,
    pub chars_per_token: Option<u64>,
    pub default_max_tokens: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub max_event_bytes: Option<u64>,
    /// Requests in flight per caller (a lease each, held until the response body ends).
    pub max_concurrent: Option<u64>,
    /// How long a lease lives without renewal, in ms; default 30000.
    pub lease_ms: Option<u64>,
    /// `[[policy.tier]]` tables.
    #[serde(default, rename = "tier")]
    pub tiers: Vec<PolicyTierFile>,
    /// Evaluate and count the limits, never refuse, send no rate-limit headers.
    pub shadow: Option<bool>,
}

/// One `[[policy.limits]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {
    pub name: String,
    #[serde(default)]
    pub unit: Unit,
    pub limit: u64,
    pub window: u64,
    pub burst: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: Some(path.to_owned()), source })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse { path: None, source })
    }
}
