//! The flags of `gateway serve`: the config file, and [`Overrides`], one flag per setting it
//! overrides (`None`, empty or `false` leaves the file's value). `gateway/gateway.toml` lists
//! the same flags in its header; a test keeps the two lists equal.

use std::path::PathBuf;

use super::{
    BackendChoice, DEFAULT_CLIENT_BODY_TIMEOUT_MS, DEFAULT_CLIENT_HEADER_TIMEOUT_MS, DEFAULT_CLIENT_WRITE_TIMEOUT_MS,
    DEFAULT_KEY_PREFIX, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REDIS_CONNECT_TIMEOUT_MS, DEFAULT_REDIS_TIMEOUT_MS, DEFAULT_REDIS_URL, DEFAULT_UPSTREAM,
    DEFAULT_UPSTREAM_RESPONSE_TIMEOUT_MS, DEFAULT_UPSTREAM_TIMEOUT_MS, REDIS_URL_ENV,
};

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML config file (see gateway/gateway.toml); flags override its values.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

// Help texts that name a default are built from its constant, so they cannot drift.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Overrides {
    #[arg(long, help = "Serve Envoy's rate limit service (gRPC) on this address too [config: envoy.listen]")]
    pub envoy_listen: Option<String>,

    #[arg(long, help = "envoyproxy/ratelimit's YAML config, a file or a directory [config: envoy.config]")]
    pub envoy_config: Option<String>,

    #[arg(long, help = format!("Address to listen on [config: listen; default {DEFAULT_LISTEN}]"))]
    pub listen: Option<String>,

    #[arg(long, help = format!("Base URL of the model API, http:// only [config: upstream.url; default {DEFAULT_UPSTREAM}]"))]
    pub upstream: Option<String>,

    #[arg(long, help = format!("Time until the model's response headers in ms, then 504 [config: upstream.timeout_ms; default {DEFAULT_UPSTREAM_TIMEOUT_MS}]"))]
    pub upstream_timeout_ms: Option<u64>,

    #[arg(long, help = format!("Time for the model's whole answer (headers and body) in ms; then 504, or a cut stream [config: upstream.response_timeout_ms; default {DEFAULT_UPSTREAM_RESPONSE_TIMEOUT_MS}]"))]
    pub upstream_response_timeout_ms: Option<u64>,

    #[arg(long, help = format!("redis:// or rediss:// URL, with user:password@ if needed [config: redis.url; env {REDIS_URL_ENV}; default {DEFAULT_REDIS_URL}]"))]
    pub redis_url: Option<String>,

    /// A seed node of a Redis Cluster (repeatable), instead of --redis-url [config: redis.cluster_nodes].
    #[arg(long = "redis-cluster-node")]
    pub redis_cluster_nodes: Vec<String>,

    /// A Redis Sentinel, redis:// (repeatable), instead of --redis-url; needs --redis-sentinel-master [config: redis.sentinels].
    #[arg(long = "redis-sentinel")]
    pub redis_sentinels: Vec<String>,

    /// The name Sentinel monitors the primary under [config: redis.sentinel_master].
    #[arg(long)]
    pub redis_sentinel_master: Option<String>,

    #[arg(long, help = format!("Timeout of one RL.CHECK in ms [config: redis.timeout_ms; default {DEFAULT_REDIS_TIMEOUT_MS}]"))]
    pub redis_timeout_ms: Option<u64>,

    #[arg(long, help = format!("Time allowed to (re)connect to Redis in ms [config: redis.connect_timeout_ms; default {DEFAULT_REDIS_CONNECT_TIMEOUT_MS}]"))]
    pub redis_connect_timeout_ms: Option<u64>,

    #[arg(long, help = format!("Prefix of every Redis key [config: redis.key_prefix; default {DEFAULT_KEY_PREFIX}]"))]
    pub key_prefix: Option<String>,

    /// Requests per window, for every policy (or a single "default" policy on "/" without a config).
    #[arg(long)]
    pub limit: Option<u64>,

    /// Window in seconds, for every policy (see --limit).
    #[arg(long)]
    pub window: Option<u64>,

    /// Bucket size (requests allowed at once), for every policy; with --limit it defaults to that limit.
    #[arg(long)]
    pub burst: Option<u64>,

    #[arg(long, help = format!("Largest request body in bytes [config: max_body_bytes; default {DEFAULT_MAX_BODY_BYTES}]"))]
    pub max_body_bytes: Option<u64>,

    #[arg(long, help = format!("Time allowed to receive a request body in ms, then 408 [config: client_body_timeout_ms; default {DEFAULT_CLIENT_BODY_TIMEOUT_MS}]"))]
    pub client_body_timeout_ms: Option<u64>,

    #[arg(long, help = format!("Time allowed to send request headers (and to stay idle between requests) in ms, then the connection is closed [config: client_header_timeout_ms; default {DEFAULT_CLIENT_HEADER_TIMEOUT_MS}]"))]
    pub client_header_timeout_ms: Option<u64>,

    #[arg(long, help = format!("Time a write to a client may wait for it to read in ms, then the connection is closed [config: client_write_timeout_ms; default {DEFAULT_CLIENT_WRITE_TIMEOUT_MS}]"))]
    pub client_write_timeout_ms: Option<u64>,

    #[arg(long, help = format!("Client connections open at once; one more is closed at once [config: max_connections; default {DEFAULT_MAX_CONNECTIONS}]"))]
    pub max_connections: Option<u64>,

    /// A proxy (IP or CIDR) whose X-Forwarded-For is trusted; repeatable, added to the config's list.
    #[arg(long = "trusted-proxy")]
    pub trusted_proxies: Vec<String>,

    /// Forward requests unmetered when Redis fails, instead of answering 503 [config: redis.failure_mode = "open"].
    #[arg(long)]
    pub fail_open: bool,

    /// Which commands to use: the module's, the Functions library's, the library as a script, or
    /// probe in that order [config: redis.backend; default auto].
    #[arg(long, value_enum)]
    pub redis_backend: Option<BackendChoice>,
}
