//! The gateway's configuration: a TOML file (see `gateway/gateway.toml`, every key documented
//! there), overridden by command-line flags, checked once into [`Settings`].
//!
//! Everything that can be wrong with a setting is reported here, at start, with the key's
//! name; the request path never meets an invalid value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::identity::IpNet;

/// The file as written, every key optional (defaults are filled in by [`Settings::resolve`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub client_body_timeout_ms: Option<u64>,
    pub client_header_timeout_ms: Option<u64>,
    #[serde(default)]
    pub upstream: UpstreamFile,
    #[serde(default)]
    pub redis: RedisFile,
    #[serde(default)]
    pub identity: IdentityFile,
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub url: Option<String>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub url: Option<String>,
    pub cluster_nodes: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub key_prefix: Option<String>,
    pub failure_mode: Option<FailureMode>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub name: String,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    pub limit: u64,
    pub window: u64,
    pub burst: Option<u64>,
}

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

/// Flags that override the file (`None` leaves the file's value).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub upstream_timeout_ms: Option<u64>,
    pub redis_url: Option<String>,
    pub redis_cluster_nodes: Vec<String>,
    pub redis_timeout_ms: Option<u64>,
    pub key_prefix: Option<String>,
    pub limit: Option<u64>,
    pub window: Option<u64>,
    pub burst: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub client_body_timeout_ms: Option<u64>,
    pub client_header_timeout_ms: Option<u64>,
    pub trusted_proxies: Vec<String>,
    pub fail_open: bool,
}

/// One rate-limit policy: `limit` requests per `window` seconds, bucket of `burst`, applied
/// to the request paths under any of `paths`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub paths: Vec<String>,
    pub limit: u64,
    pub window: u64,
    pub burst: u64,
}

impl Policy {
    /// The length of the longest of this policy's prefixes that covers `path`, if any.
    fn matches(&self, path: &str) -> Option<usize> {
        self.paths.iter().filter(|p| path_under(path, p)).map(|p| p.len()).max()
    }
}

/// The path with percent-escapes decoded, empty and `.` segments dropped and `..` applied.
pub fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() || (path.ends_with('/') && !segments.is_empty()) {
        normal.push('/');
    }
    normal
}

/// `path` is under `prefix` when it equals it, or continues it at a segment boundary:
/// `/v1` covers `/v1` and `/v1/predict` but not `/v10`; `/` covers everything.
fn path_under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The checked configuration.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub max_body_bytes: u64,
    /// How long reading a request body may take (then `408`).
    pub client_body_timeout: Duration,
    /// How long a client may take to send a request's headers, or stay idle between requests.
    pub client_header_timeout: Duration,
    pub upstream: Upstream,
    pub redis: RedisSettings,
    pub identity: IdentitySettings,
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    /// `http://host:port`, without a trailing slash.
    pub origin: String,
    /// The base path requests are appended to (`""` or `/something`, no trailing slash).
    pub base_path: String,
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct RedisSettings {
    /// The server, when not a cluster.
    pub url: String,
    /// Seed nodes of a Redis Cluster; empty for a single server (then `url` is used).
    pub cluster_nodes: Vec<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub key_prefix: String,
    pub failure_mode: FailureMode,
    pub tls: Option<RedisTls>,
}

/// PEM files for `rediss://`: a CA to trust instead of the system's, and a client
/// certificate and key for servers that require them (`tls-auth-clients yes`).
#[derive(Clone, Debug, Default)]
pub struct RedisTls {
    pub ca_pem: Option<Vec<u8>>,
    pub client_cert_and_key_pem: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone)]
pub struct IdentitySettings {
    /// Lower-case header names, tried in order; `authorization` takes `Bearer <key>`.
    pub api_key_headers: Vec<String>,
    pub secret: Vec<u8>,
    pub trusted_proxies: Vec<IpNet>,
    /// Answer `401` to requests without an API key instead of limiting them by IP.
    pub require_api_key: bool,
    /// IPv6 callers without a key share one bucket per network of this prefix length.
    pub ipv6_prefix: u8,
}

/// A configuration error, naming the key at fault.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:9000";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const DEFAULT_KEY_PREFIX: &str = "rl:";
pub const DEFAULT_SECRET_ENV: &str = "GATEWAY_KEY_SECRET";

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }
}

impl Settings {
    /// Applies `overrides` to `file`, fills in defaults and checks everything. `env` looks up
    /// environment variables (the secret may come from one).
    pub fn resolve(
        file: FileConfig,
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let listen_text = overrides.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .or_else(|_| err(format!("listen: {listen_text:?} is not an address such as 127.0.0.1:8080")))?;

        let max_body_bytes = overrides.max_body_bytes.or(file.max_body_bytes).unwrap_or(1024 * 1024);
        if max_body_bytes == 0 {
            return err("max_body_bytes must be at least 1");
        }

        let client_body_timeout = positive_ms(
            overrides.client_body_timeout_ms.or(file.client_body_timeout_ms).unwrap_or(30_000),
            "client_body_timeout_ms",
        )?;
        let client_header_timeout = positive_ms(
            overrides.client_header_timeout_ms.or(file.client_header_timeout_ms).unwrap_or(30_000),
            "client_header_timeout_ms",
        )?;

        let upstream_url =
            overrides.upstream.clone().or(file.upstream.url).unwrap_or_else(|| DEFAULT_UPSTREAM.to_string());
        let upstream_timeout_ms = overrides.upstream_timeout_ms.or(file.upstream.timeout_ms).unwrap_or(30_000);
        let upstream = parse_upstream(&upstream_url, positive_ms(upstream_timeout_ms, "upstream.timeout_ms")?)?;

        let (redis_url, cluster_nodes) = resolve_redis_target(overrides, file.redis.url, file.redis.cluster_nodes)?;
        let tls_url = cluster_nodes.first().unwrap_or(&redis_url);
        let tls = resolve_tls(tls_url, file.redis.tls_ca_file, file.redis.tls_cert_file, file.redis.tls_key_file)?;
        let redis = RedisSettings {
            url: redis_url,
            cluster_nodes,
            timeout: positive_ms(
                overrides.redis_timeout_ms.or(file.redis.timeout_ms).unwrap_or(250),
                "redis.timeout_ms",
            )?,
            connect_timeout: positive_ms(file.redis.connect_timeout_ms.unwrap_or(1000), "redis.connect_timeout_ms")?,
            key_prefix: overrides
                .key_prefix
                .clone()
                .or(file.redis.key_prefix)
                .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string()),
            failure_mode: if overrides.fail_open {
                FailureMode::Open
            } else {
                file.redis.failure_mode.unwrap_or_default()
            },
            tls,
        };

        let identity = resolve_identity(file.identity, overrides, env)?;
        let policies = resolve_policies(file.policies, overrides)?;
        Ok(Settings {
            listen,
            max_body_bytes,
            client_body_timeout,
            client_header_timeout,
            upstream,
            redis,
            identity,
            policies,
        })
    }

    /// The policy for a request path: the one with the longest matching prefix (the first in
    /// the file on a tie), or `None` when no policy covers the path. The path is matched in
    /// its normalized form, so `/v1/%70redict` or `/x/../v1//predict` cannot slip past a
    /// policy for `/v1/predict` (the gateway forwards that normalized path, see
    /// [`Settings::policy_for_normal`]).
    pub fn policy_for(&self, path: &str) -> Option<&Policy> {
        self.policy_for_normal(&normalize_path(path))
    }

    /// [`Settings::policy_for`] for a path already normalized by [`normalize_path`] (it is not
    /// decoded again: `%2570` stays `%70`).
    pub fn policy_for_normal(&self, path: &str) -> Option<&Policy> {
        let mut best: Option<(&Policy, usize)> = None;
        for policy in &self.policies {
            if let Some(len) = policy.matches(path) {
                if best.is_none_or(|(_, b)| len > b) {
                    best = Some((policy, len));
                }
            }
        }
        best.map(|(p, _)| p)
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("client_body_timeout", &self.client_body_timeout)
            .field("client_header_timeout", &self.client_header_timeout)
            .field("upstream", &self.upstream)
            .field("redis_url", &redact_url(&self.redis.url))
            .field("redis_cluster_nodes", &self.redis.cluster_nodes.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
            .field("redis_timeout", &self.redis.timeout)
            .field("key_prefix", &self.redis.key_prefix)
            .field("failure_mode", &self.redis.failure_mode)
            .field("api_key_headers", &self.identity.api_key_headers)
            .field("trusted_proxies", &self.identity.trusted_proxies)
            .field("require_api_key", &self.identity.require_api_key)
            .field("ipv6_prefix", &self.identity.ipv6_prefix)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

fn positive_ms(ms: u64, name: &str) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return err(format!("{name} must be at least 1"));
    }
    Ok(Duration::from_millis(ms))
}

fn parse_upstream(url: &str, timeout: Duration) -> Result<Upstream, ConfigError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return err(format!(
            "upstream.url must be an http:// URL (got {url:?}); the gateway talks plain HTTP to a model \
             next to it"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
        return err(format!("upstream.url {url:?} must look like http://host:port[/base/path]"));
    }
    let origin = format!("http://{authority}");
    origin.parse::<hyper::Uri>().map_err(|e| ConfigError(format!("upstream.url {url:?} is not a valid URL: {e}")))?;
    Ok(Upstream { origin, base_path: path.trim_end_matches('/').to_string(), timeout })
}

/// The single server URL, or the cluster's seed nodes. Flags win over the file; a single
/// server and a cluster cannot both be asked for.
fn resolve_redis_target(
    overrides: &Overrides,
    file_url: Option<String>,
    file_nodes: Option<Vec<String>>,
) -> Result<(String, Vec<String>), ConfigError> {
    if overrides.redis_url.is_some() && !overrides.redis_cluster_nodes.is_empty() {
        return err("give either --redis-url or --redis-cluster-node, not both");
    }
    let (url, nodes) = if let Some(url) = &overrides.redis_url {
        (url.clone(), Vec::new())
    } else if !overrides.redis_cluster_nodes.is_empty() {
        (DEFAULT_REDIS_URL.to_string(), overrides.redis_cluster_nodes.clone())
    } else {
        let nodes = file_nodes.unwrap_or_default();
        if file_url.is_some() && !nodes.is_empty() {
            return err("redis: set either url (one server) or cluster_nodes (a Redis Cluster), not both");
        }
        (file_url.unwrap_or_else(|| DEFAULT_REDIS_URL.to_string()), nodes)
    };
    for u in std::iter::once(&url).chain(&nodes) {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            return err(format!("redis.url must start with redis:// or rediss:// (got {})", redact_url(u)));
        }
    }
    if nodes.iter().any(|n| n.starts_with("rediss://")) && !nodes.iter().all(|n| n.starts_with("rediss://")) {
        return err("redis.cluster_nodes: use rediss:// for every node or for none");
    }
    Ok((url, nodes))
}

fn resolve_tls(
    url: &str,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<RedisTls>, ConfigError> {
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    if !url.starts_with("rediss://") {
        return err("redis.tls_* files need a rediss:// URL");
    }
    let read = |path: &Path, key: &str| {
        std::fs::read(path).map_err(|e| ConfigError(format!("redis.{key}: cannot read {}: {e}", path.display())))
    };
    let ca_pem = ca.map(|p| read(&p, "tls_ca_file")).transpose()?;
    let client_cert_and_key_pem = match (cert, key) {
        (Some(cert), Some(key)) => Some((read(&cert, "tls_cert_file")?, read(&key, "tls_key_file")?)),
        (None, None) => None,
        _ => return err("redis.tls_cert_file and redis.tls_key_file go together"),
    };
    Ok(Some(RedisTls { ca_pem, client_cert_and_key_pem }))
}

fn resolve_identity(
    file: IdentityFile,
    overrides: &Overrides,
    env: impl Fn(&str) -> Option<String>,
) -> Result<IdentitySettings, ConfigError> {
    let headers = file.api_key_headers.unwrap_or_else(|| vec!["authorization".into(), "x-api-key".into()]);
    let mut api_key_headers = Vec::with_capacity(headers.len());
    for h in headers {
        let lower = h.to_ascii_lowercase();
        if hyper::header::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return err(format!("identity.api_key_headers: {h:?} is not a header name"));
        }
        api_key_headers.push(lower);
    }

    let secret = match (file.secret, file.secret_env) {
        (Some(_), Some(_)) => return err("identity: set either secret or secret_env, not both"),
        (Some(secret), None) => secret,
        (None, name) => {
            let name = name.unwrap_or_else(|| DEFAULT_SECRET_ENV.to_string());
            match env(&name) {
                Some(secret) => secret,
                None => {
                    return err(format!(
                        "no key-hashing secret: set the environment variable {name} (or identity.secret \
                         in the config file) to a long random string, the same on every gateway instance"
                    ))
                }
            }
        }
    };
    if secret.is_empty() {
        return err("identity: the key-hashing secret is empty");
    }

    let mut trusted_proxies = Vec::new();
    for text in file.trusted_proxies.unwrap_or_default().iter().chain(&overrides.trusted_proxies) {
        let net = text
            .parse::<IpNet>()
            .map_err(|_| ConfigError(format!("identity.trusted_proxies: {text:?} is not an IP or CIDR")))?;
        trusted_proxies.push(net);
    }
    let ipv6_prefix = file.ipv6_prefix.unwrap_or(64);
    if !(1..=128).contains(&ipv6_prefix) {
        return err(format!("identity.ipv6_prefix must be between 1 and 128 (got {ipv6_prefix})"));
    }
    Ok(IdentitySettings {
        ipv6_prefix,
        api_key_headers,
        secret: secret.into_bytes(),
        trusted_proxies,
        require_api_key: file.require_api_key.unwrap_or(false),
    })
}

fn resolve_policies(files: Vec<PolicyFile>, overrides: &Overrides) -> Result<Vec<Policy>, ConfigError> {
    let files = if files.is_empty() {
        match (overrides.limit, overrides.window) {
            (Some(limit), Some(window)) => {
                vec![PolicyFile { name: "default".into(), paths: None, limit, window, burst: overrides.burst }]
            }
            _ => {
                return err(
                    "no rate-limit policy: add a [[policy]] table to the config file or pass --limit and --window",
                )
            }
        }
    } else {
        files
    };
    let mut policies = Vec::with_capacity(files.len());
    for f in files {
        let name = f.name;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return err(format!("policy name {name:?}: use letters, digits, '-', '_' and '.' only"));
        }
        if policies.iter().any(|p: &Policy| p.name == name) {
            return err(format!("policy {name:?} is defined twice"));
        }
        let limit = overrides.limit.unwrap_or(f.limit);
        let window = overrides.window.unwrap_or(f.window);
        // Flags describe a whole quota: --limit without --burst also resets the burst.
        let file_burst = if overrides.limit.is_some() { None } else { f.burst };
        let burst = overrides.burst.or(file_burst).unwrap_or(limit);
        for (value, key) in [(limit, "limit"), (window, "window"), (burst, "burst")] {
            if value == 0 || value > i64::MAX as u64 {
                return err(format!("policy {name:?}: {key} must be a positive integer"));
            }
        }
        let paths = f.paths.unwrap_or_else(|| vec!["/".to_string()]);
        if paths.is_empty() || paths.iter().any(|p| !p.starts_with('/')) {
            return err(format!("policy {name:?}: paths must be a non-empty list of paths starting with '/'"));
        }
        policies.push(Policy { name, paths, limit, window, burst });
    }
    Ok(policies)
}

/// The URL with its credentials hidden, for logs and error messages. Everything between
/// `://` and the last `@` is the user info (a password may hold unencoded `/`, `?`, `#` or `@`,
/// so the authority is not looked for first): it becomes `user:***`, or `***` when the user
/// part before the first `:` is not plainly a user name. Without a `:` (a user name alone, or
/// no user info at all) nothing is secret and the URL is returned as is.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let after = scheme_end + 3;
    let rest = &url[after..];
    let Some(at) = rest.rfind('@') else { return url.to_string() };
    let userinfo = &rest[..at];
    let plain = |s: &str| !s.contains(['/', '?', '#', '@']);
    let hidden = match userinfo.split_once(':') {
        Some((user, _)) if plain(user) => format!("{user}:***"),
        Some(_) => "***".to_string(),
        None if plain(userinfo) => return url.to_string(),
        None => "***".to_string(),
    };
    format!("{}{}{}", &url[..after], hidden, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Settings, ConfigError> {
        Settings::resolve(FileConfig::parse(text)?, &Overrides::default(), |_| Some("s3cret".into()))
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_url("redis://user:pw@host:6379/0"), "redis://user:***@host:6379/0");
        assert_eq!(redact_url("rediss://:pw@host"), "rediss://:***@host");
        assert_eq!(redact_url("redis://host:6379/"), "redis://host:6379/");
        assert_eq!(redact_url("redis://user@host/"), "redis://user@host/");
        assert_eq!(redact_url("redis://u:p@ss@host/"), "redis://u:***@host/");
    }

    #[test]
    fn redacts_passwords_with_unencoded_delimiters() {
        assert_eq!(redact_url("redis://default:se/cret@host:6379/0"), "redis://default:***@host:6379/0");
        assert_eq!(redact_url("rediss://u:p?x#y@h/"), "rediss://u:***@h/");
        assert_eq!(redact_url("redis://:a/b?c#d@h:1/"), "redis://:***@h:1/");
        // A ':' inside what looks like a path: hide it all rather than guess.
        assert_eq!(redact_url("redis://us/er:pw@h/"), "redis://***@h/");
        for url in ["redis://default:se/cret@host:6379/0", "rediss://u:p?x#y@h/", "redis://x:s3cr/et@a@h/"] {
            let shown = redact_url(url);
            assert!(!shown.contains("cret") && !shown.contains("p?x") && !shown.contains("s3cr"), "{shown}");
        }
    }

    #[test]
    fn longest_prefix_wins_and_segments_matter() {
        let s = settings(
            r#"
            [[policy]]
            name = "all"
            limit = 100
            window = 60
            [[policy]]
            name = "predict"
            paths = ["/v1/predict"]
            limit = 10
            window = 60
            burst = 5
            "#,
        )
        .unwrap();
        assert_eq!(s.policy_for("/v1/predict").unwrap().name, "predict");
        assert_eq!(s.policy_for("/v1/predict/batch").unwrap().name, "predict");
        assert_eq!(s.policy_for("/v1/predictions").unwrap().name, "all");
        assert_eq!(s.policy_for("/").unwrap().name, "all");
        assert_eq!(s.policy_for("/v1/predict").unwrap().burst, 5);
        assert_eq!(s.policy_for("/other").unwrap().burst, 100);
    }

    #[test]
    fn paths_are_matched_normalized() {
        assert_eq!(normalize_path("/v1/%70redict"), "/v1/predict");
        assert_eq!(normalize_path("/x/../v1//predict/"), "/v1/predict/");
        assert_eq!(normalize_path("/v1%2Fpredict"), "/v1/predict");
        assert_eq!(normalize_path("/../.."), "/");
        assert_eq!(normalize_path("/a/%zz"), "/a/%zz");
        let s = settings(
            "[[policy]]\nname = \"all\"\nlimit = 9\nwindow = 1\n[[policy]]\nname = \"p\"\npaths = [\"/v1/predict\"]\nlimit = 1\nwindow = 1\n",
        )
        .unwrap();
        for sneaky in ["/v1/%70redict", "/x/../v1/predict", "//v1//predict", "/v1/./predict", "/V1/../v1/predict"] {
            assert_eq!(s.policy_for(sneaky).unwrap().name, "p", "{sneaky}");
        }
    }

    #[test]
    fn uncovered_paths_have_no_policy() {
        let s = settings("[[policy]]\nname = \"p\"\npaths = [\"/v1\"]\nlimit = 1\nwindow = 1\n").unwrap();
        assert!(s.policy_for("/v10").is_none());
        assert!(s.policy_for("/v1").is_some());
    }

    #[test]
    fn rejects_bad_values_with_the_key_name() {
        let cases = [
            ("[[policy]]\nname = \"p\"\nlimit = 0\nwindow = 1\n", "limit"),
            ("[[policy]]\nname = \"p q\"\nlimit = 1\nwindow = 1\n", "policy name"),
            ("listen = \"nowhere\"\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n", "listen"),
            ("[upstream]\nurl = \"https://x\"\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n", "upstream.url"),
            ("[redis]\nurl = \"http://x\"\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n", "redis.url"),
            (
                "[identity]\ntrusted_proxies = [\"10.0.0.0/33\"]\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n",
                "trusted",
            ),
            ("", "no rate-limit policy"),
            ("bogus = 1\n", "unknown field"),
        ];
        for (text, needle) in cases {
            let e = settings(text).err().unwrap_or_else(|| panic!("{text:?} was accepted"));
            assert!(e.0.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(
            "listen = \"127.0.0.1:1\"\n[redis]\nkey_prefix = \"a:\"\n[[policy]]\nname = \"p\"\nlimit = 9\nwindow = 9\n",
        )
        .unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            key_prefix: Some("b:".into()),
            limit: Some(3),
            window: Some(4),
            fail_open: true,
            ..Overrides::default()
        };
        let s = Settings::resolve(file, &o, |_| Some("x".into())).unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.redis.key_prefix, "b:");
        assert_eq!((s.policies[0].limit, s.policies[0].window, s.policies[0].burst), (3, 4, 3));
        assert_eq!(s.redis.failure_mode, FailureMode::Open);
        let with_burst = "[[policy]]\nname = \"p\"\nlimit = 9\nwindow = 9\nburst = 20\n";
        let o = Overrides { limit: Some(3), ..Overrides::default() };
        let t = Settings::resolve(FileConfig::parse(with_burst).unwrap(), &o, |_| Some("x".into())).unwrap();
        assert_eq!(t.policies[0].burst, 3, "--limit without --burst resets the burst");
        let t = Settings::resolve(FileConfig::parse(with_burst).unwrap(), &Overrides::default(), |_| Some("x".into()));
        assert_eq!(t.unwrap().policies[0].burst, 20);
    }

    #[test]
    fn a_cluster_or_one_server() {
        let both = "[redis]\nurl = \"redis://a/\"\ncluster_nodes = [\"redis://b/\"]\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n";
        assert!(settings(both).is_err());
        let cluster = "[redis]\ncluster_nodes = [\"redis://:pw@b:1/\", \"redis://c:2/\"]\n[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n";
        let s = settings(cluster).unwrap();
        assert_eq!(s.redis.cluster_nodes.len(), 2);
        assert!(!format!("{s:?}").contains("pw"));
        let o = Overrides { redis_url: Some("redis://one/".into()), ..Overrides::default() };
        let s = Settings::resolve(FileConfig::parse(cluster).unwrap(), &o, |_| Some("x".into())).unwrap();
        assert!(s.redis.cluster_nodes.is_empty(), "--redis-url picks a single server");
        assert_eq!(s.redis.url, "redis://one/");
    }

    #[test]
    fn the_new_identity_and_timeout_keys() {
        let policy = "[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n";
        let s = settings(policy).unwrap();
        assert!(!s.identity.require_api_key);
        assert_eq!(s.identity.ipv6_prefix, 64);
        assert_eq!(s.client_body_timeout, Duration::from_secs(30));
        assert_eq!(s.client_header_timeout, Duration::from_secs(30));
        let text = format!(
            "client_body_timeout_ms = 500\nclient_header_timeout_ms = 700\n{policy}[identity]\nrequire_api_key = true\nipv6_prefix = 48\n"
        );
        let s = settings(&text).unwrap();
        assert!(s.identity.require_api_key);
        assert_eq!(s.identity.ipv6_prefix, 48);
        assert_eq!(s.client_body_timeout, Duration::from_millis(500));
        assert_eq!(s.client_header_timeout, Duration::from_millis(700));
        for bad in ["0", "129"] {
            let e = settings(&format!("{policy}[identity]\nipv6_prefix = {bad}\n")).err().unwrap();
            assert!(e.0.contains("identity.ipv6_prefix"), "{e}");
        }
        let e = settings(&format!("client_body_timeout_ms = 0\n{policy}")).err().unwrap();
        assert!(e.0.contains("client_body_timeout_ms"), "{e}");
    }

    #[test]
    fn the_secret_is_required() {
        let file = FileConfig::parse("[[policy]]\nname = \"p\"\nlimit = 1\nwindow = 1\n").unwrap();
        let e = Settings::resolve(file, &Overrides::default(), |_| None).err().unwrap();
        assert!(e.0.contains(DEFAULT_SECRET_ENV), "{e}");
    }

    #[test]
    fn upstream_base_path_is_kept() {
        let u = parse_upstream("http://127.0.0.1:9000/model/", Duration::from_secs(1)).unwrap();
        assert_eq!((u.origin.as_str(), u.base_path.as_str()), ("http://127.0.0.1:9000", "/model"));
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../gateway.toml");
        let s = settings(text).unwrap();
        assert!(!s.policies.is_empty());
    }
}
