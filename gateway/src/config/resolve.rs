//! From the file and the flags to [`Settings`]: a flag wins over the file, the file over the
//! default; every value is checked here, with the key's name in the error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

impl Settings {
    /// Reads the config file named by `args` (if any) and resolves it with the flags; `env`
    /// looks up environment variables.
    pub fn load(args: &ServeArgs, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Settings::resolve(file, &args.overrides, env)
    }

    /// Applies `overrides` to `file`, fills in defaults and checks everything. `env` looks up
    /// environment variables: the secret may come from one, and [`REDIS_URL_ENV`] stands in
    /// for `--redis-url` when no Redis flag is given.
    pub fn resolve(
        file: FileConfig,
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let listen_text = overrides.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::invalid("listen", format!("{listen_text:?} is not an address such as 127.0.0.1:8080"))
        })?;

        let max_body_bytes = overrides.max_body_bytes.or(file.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(ConfigError::invalid("max_body_bytes", "must be at least 1"));
        }
        let client_body_timeout = positive_ms(
            overrides.client_body_timeout_ms.or(file.client_body_timeout_ms),
            DEFAULT_CLIENT_BODY_TIMEOUT_MS,
            "client_body_timeout_ms",
        )?;
        let client_header_timeout = positive_ms(
            overrides.client_header_timeout_ms.or(file.client_header_timeout_ms),
            DEFAULT_CLIENT_HEADER_TIMEOUT_MS,
            "client_header_timeout_ms",
        )?;

        let client_write_timeout = positive_ms(
            overrides.client_write_timeout_ms.or(file.client_write_timeout_ms),
            DEFAULT_CLIENT_WRITE_TIMEOUT_MS,
            "client_write_timeout_ms",
        )?;
        let max_connections = overrides.max_connections.or(file.max_connections);
        let max_connections = match max_connections.map(usize::try_from) {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(Ok(n)) if n > 0 => n,
            Some(_) => return Err(ConfigError::invalid("max_connections", "must be a positive integer")),
        };

        let upstream_url =
            overrides.upstream.clone().or(file.upstream.url).unwrap_or_else(|| DEFAULT_UPSTREAM.to_string());
        let upstream_timeout = positive_ms(
            overrides.upstream_timeout_ms.or(file.upstream.timeout_ms),
            DEFAULT_UPSTREAM_TIMEOUT_MS,
            "upstream.timeout_ms",
        )?;
        let mut upstream = parse_upstream(&upstream_url, upstream_timeout)?;
        upstream.response_timeout = positive_ms(
            overrides.upstream_response_timeout_ms.or(file.upstream.response_timeout_ms),
            DEFAULT_UPSTREAM_RESPONSE_TIMEOUT_MS,
            "upstream.response_timeout_ms",
        )?;
        upstream.concurrency = resolve_concurrency(file.upstream.max_concurrent, file.upstream.lease_ms)
            .map_err(|reason| ConfigError::invalid("upstream.max_concurrent", reason))?;
        if let Some(c) = file.upstream.capacity {
            let burst = c.burst.unwrap_or(c.limit);
            if let Err(why) = rl_protocol::bounds::check_quota(c.limit, c.window, burst) {
                return Err(ConfigError::invalid("upstream.capacity", why.to_string()));
            }
            let name = "capacity".to_string();
            upstream.capacity = Some(Quota { name, unit: Unit::Requests, limit: c.limit, window: c.window, burst });
        }

        let redis = resolve_redis(file.redis, overrides, &env)?;
        let identity = resolve_identity(file.identity, overrides, &env)?;
        let (tiers, tier_names) = super::tiers::resolve_tiers(file.tiers, file.tier_list)?;
        let envoy = resolve_envoy(file.envoy, overrides)?;
        let policies = super::policies::resolve_policies(file.policies, overrides, &tier_names, envoy.is_some())?;
        let max_entries = file.deny_cache.max_entries.unwrap_or(DEFAULT_DENY_CACHE_MAX_ENTRIES);
        let max_entries = match usize::try_from(max_entries) {
            Ok(n) if n > 0 => n,
            _ => return Err(ConfigError::invalid("deny_cache.max_entries", "must be a positive integer")),
        };
        let deny_cache = DenyCacheSettings { enabled: file.deny_cache.enabled.unwrap_or(true), max_entries };
        Ok(Settings {
            listen,
            max_body_bytes,
            client_body_timeout,
            client_header_timeout,
            client_write_timeout,
            max_connections,
            upstream,
            redis,
            identity,
            policies,
            tiers,
            deny_cache,
            envoy,
        })
    }
}

/// `[envoy]`: both `listen` and `config`, or neither; the configuration read and checked now.
fn resolve_envoy(
    file: super::file::EnvoyFile,
    overrides: &Overrides,
) -> Result<Option<super::EnvoySettings>, ConfigError> {
    let listen = overrides.envoy_listen.clone().or(file.listen);
    let config = overrides.envoy_config.clone().or(file.config);
    let (listen_text, config_path) = match (listen, config) {
        (None, None) => return Ok(None),
        (Some(listen), Some(config)) => (listen, std::path::PathBuf::from(config)),
        (Some(_), None) => return Err(ConfigError::invalid("envoy.config", "is needed with envoy.listen")),
        (None, Some(_)) => return Err(ConfigError::invalid("envoy.listen", "is needed with envoy.config")),
    };
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        ConfigError::invalid("envoy.listen", format!("{listen_text:?} is not an address such as 127.0.0.1:8081"))
    })?;
    let config = crate::rls::config::RlsConfig::load(&config_path)
        .map_err(|e| ConfigError::invalid("envoy.config", e.to_string()))?;
    Ok(Some(super::EnvoySettings { listen, config_path, config: std::sync::Arc::new(config) }))
}

/// `max_concurrent` and `lease_ms` (default [`DEFAULT_LEASE_MS`]) within the module's bounds;
/// `None` without `max_concurrent` (then `lease_ms` may not be set).
pub(super) fn resolve_concurrency(max: Option<u64>, lease_ms: Option<u64>) -> Result<Option<Concurrency>, String> {
    let Some(max) = max else {
        return match lease_ms {
            Some(_) => Err("lease_ms needs max_concurrent".into()),
            None => Ok(None),
        };
    };
    let lease_ms = lease_ms.unwrap_or(DEFAULT_LEASE_MS);
    if !(1..=MAX_CONCURRENT_LIMIT).contains(&max) {
        return Err(format!("max_concurrent must be between 1 and {MAX_CONCURRENT_LIMIT}"));
    }
    if !(1..=MAX_LEASE_MS).contains(&lease_ms) {
        return Err(format!("lease_ms must be between 1 and {MAX_LEASE_MS}"));
    }
    Ok(Some(Concurrency { max, lease_ms }))
}

/// A duration in ms: the given value or the default, at least 1.
fn positive_ms(ms: Option<u64>, default: u64, key: &'static str) -> Result<Duration, ConfigError> {
    match ms.unwrap_or(default) {
        0 => Err(ConfigError::invalid(key, "must be at least 1")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

pub(super) fn parse_upstream(url: &str, timeout: Duration) -> Result<Upstream, ConfigError> {
    const KEY: &str = "upstream.url";
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(ConfigError::invalid(
            KEY,
            format!("must be an http:// URL (got {url:?}); the gateway talks plain HTTP to a model next to it"),
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') || path.contains(['?', '#']) {
        return Err(ConfigError::invalid(KEY, format!("{url:?} must look like http://host:port[/base/path]")));
    }
    let origin = format!("http://{authority}");
    origin.parse::<hyper::Uri>().map_err(|e| ConfigError::invalid(KEY, format!("{url:?} is not a valid URL: {e}")))?;
    Ok(Upstream {
        origin,
        base_path: path.trim_end_matches('/').to_string(),
        timeout,
        response_timeout: Duration::from_millis(DEFAULT_UPSTREAM_RESPONSE_TIMEOUT_MS),
        concurrency: None,
        capacity: None,
    })
}

fn resolve_redis(
    file: RedisFile,
    overrides: &Overrides,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<RedisSettings, ConfigError> {
    let file_target = FileTarget {
        url: file.url,
        cluster_nodes: file.cluster_nodes,
        sentinels: file.sentinels,
        sentinel_master: file.sentinel_master,
        sentinel_master_password: file.sentinel_master_password,
    };
    let target = resolve_redis_target(overrides, file_target, env)?;
    let tls = resolve_tls(&target, file.tls_ca_file, file.tls_cert_file, file.tls_key_file)?;
    Ok(RedisSettings {
        target,
        timeout: positive_ms(
            overrides.redis_timeout_ms.or(file.timeout_ms),
            DEFAULT_REDIS_TIMEOUT_MS,
            "redis.timeout_ms",
        )?,
        connect_timeout: positive_ms(
            overrides.redis_connect_timeout_ms.or(file.connect_timeout_ms),
            DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
            "redis.connect_timeout_ms",
        )?,
        key_prefix: overrides.key_prefix.clone().or(file.key_prefix).unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string()),
        failure_mode: if overrides.fail_open { FailureMode::Open } else { file.failure_mode.unwrap_or_default() },
        tls,
        backend: overrides.redis_backend.or(file.backend).unwrap_or_default(),
    })
}

/// The keys of `[redis]` that say where Redis is.
struct FileTarget {
    url: Option<String>,
    cluster_nodes: Option<Vec<String>>,
    sentinels: Option<Vec<String>>,
    sentinel_master: Option<String>,
    sentinel_master_password: Option<String>,
}

/// One server, a cluster or Sentinel. Flags win over the file: `--redis-url` (or, when no
/// Redis flag is given, [`REDIS_URL_ENV`]) picks one server, `--redis-cluster-node` a
/// cluster, `--redis-sentinel` Sentinel; asking for two in the flags, or in the file, is an
/// error. The master name (`--redis-sentinel-master` over `redis.sentinel_master`) and the
/// master's password (file only) go with sentinels from either place.
fn resolve_redis_target(
    overrides: &Overrides,
    file: FileTarget,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<RedisTarget, ConfigError> {
    let flags_given: Vec<&'static str> = [
        (overrides.redis_url.is_some(), "--redis-url"),
        (!overrides.redis_cluster_nodes.is_empty(), "--redis-cluster-node"),
        (!overrides.redis_sentinels.is_empty(), "--redis-sentinel"),
    ]
    .into_iter()
    .filter_map(|(given, flag)| given.then_some(flag))
    .collect();
    if let [flag, other, ..] = flags_given[..] {
        return Err(ConfigError::Conflict { flag, other });
    }
    let flag_url = match &overrides.redis_url {
        Some(url) => Some(url.clone()),
        None if flags_given.is_empty() => env(REDIS_URL_ENV),
        None => None,
    };
    let file_nodes = file.cluster_nodes.filter(|nodes| !nodes.is_empty());
    let file_sentinels = file.sentinels.filter(|sentinels| !sentinels.is_empty());
    let master = overrides.redis_sentinel_master.clone().or(file.sentinel_master);
    if file_sentinels.is_none() && overrides.redis_sentinels.is_empty() {
        // Without sentinels anywhere, a master name is a mistake (sentinels meant but
        // forgotten), not something to ignore.
        if master.is_some() || file.sentinel_master_password.is_some() {
            let key = if master.is_some() { "redis.sentinel_master" } else { "redis.sentinel_master_password" };
            return Err(ConfigError::invalid(key, "goes with redis.sentinels (or --redis-sentinel), which is not set"));
        }
    }
    let master_password = file.sentinel_master_password.map(Redacted);
    let sentinel = |sentinels: Vec<String>| {
        match master.filter(|name| !name.is_empty()) {
        Some(master) => Ok(RedisTarget::Sentinel(SentinelTarget {
            sentinels: sentinels.into_iter().map(RedisUrl::new).collect(),
            master,
            master_password,
        })),
        None => Err(ConfigError::invalid(
            "redis.sentinel_master",
            "required with redis.sentinels: the name the sentinels monitor the primary under (sentinel monitor <name> ...)",
        )),
    }
    };
    let target = if let Some(url) = flag_url {
        RedisTarget::Server(RedisUrl::new(url))
    } else if !overrides.redis_cluster_nodes.is_empty() {
        RedisTarget::Cluster(overrides.redis_cluster_nodes.iter().map(RedisUrl::new).collect())
    } else if !overrides.redis_sentinels.is_empty() {
        sentinel(overrides.redis_sentinels.clone())?
    } else {
        match (file.url, file_nodes, file_sentinels) {
            (url, None, None) => {
                RedisTarget::Server(RedisUrl::new(url.unwrap_or_else(|| DEFAULT_REDIS_URL.to_string())))
            }
            (None, Some(nodes), None) => RedisTarget::Cluster(nodes.into_iter().map(RedisUrl::new).collect()),
            (None, None, Some(sentinels)) => sentinel(sentinels)?,
            _ => {
                return Err(ConfigError::invalid(
                    "redis",
                    "set one of url (one server), cluster_nodes (a Redis Cluster) or sentinels (Redis Sentinel), \
                     not several",
                ))
            }
        }
    };
    let scheme = |key: &'static str, url: &RedisUrl| match url.has_redis_scheme() {
        true => Ok(()),
        false => Err(ConfigError::invalid(key, format!("must start with redis:// or rediss:// (got {url})"))),
    };
    match &target {
        RedisTarget::Server(url) => scheme("redis.url", url)?,
        RedisTarget::Cluster(nodes) => {
            for node in nodes {
                scheme("redis.cluster_nodes", node)?;
            }
            if nodes.iter().any(RedisUrl::is_tls) && !nodes.iter().all(RedisUrl::is_tls) {
                return Err(ConfigError::invalid("redis.cluster_nodes", "use rediss:// for every node or for none"));
            }
        }
        RedisTarget::Sentinel(target) => {
            for sentinel in &target.sentinels {
                if sentinel.is_tls() {
                    return Err(ConfigError::invalid(
                        "redis.sentinels",
                        format!("TLS (rediss://) is not supported with Sentinel; use redis:// (got {sentinel})"),
                    ));
                }
                if !sentinel.has_redis_scheme() {
                    return Err(ConfigError::invalid(
                        "redis.sentinels",
                        format!("must start with redis:// (got {sentinel})"),
                    ));
                }
            }
        }
    }
    Ok(target)
}

fn resolve_tls(
    target: &RedisTarget,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<RedisTls>, ConfigError> {
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    if !target.is_tls() {
        return Err(ConfigError::invalid("redis.tls_*", "these files need a rediss:// URL"));
    }
    let read = |path: &Path, key: &'static str| match std::fs::read(path) {
        Ok(bytes) => Ok(Pem(bytes)),
        Err(source) => Err(ConfigError::ReadFile { key, path: path.to_owned(), source }),
    };
    let ca = ca.map(|p| read(&p, "redis.tls_ca_file")).transpose()?;
    let client_cert_and_key = match (cert, key) {
        (Some(cert), Some(key)) => {
            Some((read(&cert, "redis.tls_cert_file")?, Redacted(read(&key, "redis.tls_key_file")?)))
        }
        (None, None) => None,
        _ => {
            return Err(ConfigError::invalid(
                "redis.tls_cert_file",
                "goes together with redis.tls_key_file (set both or neither)",
            ))
        }
    };
    Ok(Some(RedisTls { ca, client_cert_and_key }))
}

fn resolve_identity(
    file: IdentityFile,
    overrides: &Overrides,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<IdentitySettings, ConfigError> {
    let headers =
        file.api_key_headers.clone().unwrap_or_else(|| DEFAULT_API_KEY_HEADERS.iter().map(|h| h.to_string()).collect());
    let mut api_key_headers = Vec::with_capacity(headers.len());
    for h in headers {
        let lower = h.to_ascii_lowercase();
        if hyper::header::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(ConfigError::invalid("identity.api_key_headers", format!("{h:?} is not a header name")));
        }
        api_key_headers.push(lower);
    }

    let secret = key_secret(&file, env)?;

    let mut trusted_proxies = Vec::new();
    for text in file.trusted_proxies.unwrap_or_default().iter().chain(&overrides.trusted_proxies) {
        let net = text
            .parse::<IpNet>()
            .map_err(|_| ConfigError::invalid("identity.trusted_proxies", format!("{text:?} is not an IP or CIDR")))?;
        trusted_proxies.push(net);
    }
    let ipv6_prefix = file.ipv6_prefix.unwrap_or(DEFAULT_IPV6_PREFIX);
    if !(1..=128).contains(&ipv6_prefix) {
        return Err(ConfigError::invalid(
            "identity.ipv6_prefix",
            format!("must be between 1 and 128 (got {ipv6_prefix})"),
        ));
    }
    Ok(IdentitySettings {
        api_key_headers,
        secret: Redacted(secret.into_bytes()),
        trusted_proxies,
        require_api_key: file.require_api_key.unwrap_or(false),
        ipv6_prefix,
    })
}

/// The key-hashing secret: `identity.secret`, else the environment variable named by
/// `identity.secret_env` (default [`DEFAULT_SECRET_ENV`]). Also what `gateway hash-key` uses.
pub fn key_secret(file: &IdentityFile, env: &impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let secret = match (&file.secret, &file.secret_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid("identity", "set either secret or secret_env, not both"));
        }
        (Some(secret), None) => secret.clone(),
        (None, name) => {
            let env_var = name.clone().unwrap_or_else(|| DEFAULT_SECRET_ENV.to_string());
            match env(&env_var) {
                Some(secret) => secret,
                None => return Err(ConfigError::NoSecret { env_var }),
            }
        }
    };
    if secret.is_empty() {
        return Err(ConfigError::invalid("identity.secret", "the key-hashing secret is empty"));
    }
    Ok(secret)
}
