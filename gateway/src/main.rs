//! `gateway serve | model | client`: the rate-limiting gateway, the demo model API and the
//! demo client. `gateway <command> --help` lists every flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::http::{HeaderName, Method, Uri};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::Targets;

use gateway::app::{app, AppState};
use gateway::client::{self, ClientOptions};
use gateway::config::{redact_url, FileConfig, Overrides, Settings};
use gateway::{model, serve};

#[derive(Parser)]
#[command(name = "gateway", version, about = "Rate-limiting gateway for ML model APIs (with a demo model and client)")]
struct Cli {
    /// Log format on stderr. The level comes from RUST_LOG (default "info"), e.g. RUST_LOG=warn.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: identify, rate limit (one RL.CHECK per request), forward to the model.
    Serve(ServeArgs),
    /// Run the demo model API (POST /v1/predict {"text": ...} -> sentiment).
    Model(ModelArgs),
    /// Send requests and print, per request, whether it was admitted or rate limited.
    Client(ClientArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file (see gateway/gateway.toml); flags override its values.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on [config: listen; default 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<String>,
    /// Base URL of the model API, http:// only [config: upstream.url].
    #[arg(long)]
    upstream: Option<String>,
    /// Upstream answer timeout in ms [config: upstream.timeout_ms].
    #[arg(long)]
    upstream_timeout_ms: Option<u64>,
    /// redis:// or rediss:// URL, with user:password@ if needed [config: redis.url; env GATEWAY_REDIS_URL].
    #[arg(long)]
    redis_url: Option<String>,
    /// A seed node of a Redis Cluster (repeatable), instead of --redis-url [config: redis.cluster_nodes].
    #[arg(long = "redis-cluster-node")]
    redis_cluster_nodes: Vec<String>,
    /// Timeout of one RL.CHECK in ms [config: redis.timeout_ms].
    #[arg(long)]
    redis_timeout_ms: Option<u64>,
    /// Prefix of every Redis key [config: redis.key_prefix].
    #[arg(long)]
    key_prefix: Option<String>,
    /// Requests per window, for every policy (or a single "default" policy on "/" without a config).
    #[arg(long)]
    limit: Option<u64>,
    /// Window in seconds, for every policy (see --limit).
    #[arg(long)]
    window: Option<u64>,
    /// Bucket size (requests allowed at once), for every policy; with --limit it defaults to that limit.
    #[arg(long)]
    burst: Option<u64>,
    /// Largest request body in bytes [config: max_body_bytes].
    #[arg(long)]
    max_body_bytes: Option<u64>,
    /// Time allowed to receive a request body in ms, then 408 [config: client_body_timeout_ms; default 30000].
    #[arg(long)]
    client_body_timeout_ms: Option<u64>,
    /// Time allowed to send request headers (and to stay idle between requests) in ms, then the
    /// connection is closed [config: client_header_timeout_ms; default 30000].
    #[arg(long)]
    client_header_timeout_ms: Option<u64>,
    /// A proxy (IP or CIDR) whose X-Forwarded-For is trusted; repeatable, added to the config's list.
    #[arg(long = "trusted-proxy")]
    trusted_proxies: Vec<String>,
    /// Forward requests unmetered when Redis fails, instead of answering 503 [config: redis.failure_mode = "open"].
    #[arg(long)]
    fail_open: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Simulated inference time per prediction, in ms.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
}

#[derive(Args)]
struct ClientArgs {
    /// Endpoint to call.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/predict")]
    url: Uri,
    /// Number of requests.
    #[arg(long, short = 'n', default_value_t = 10)]
    count: u64,
    /// Requests per second over all senders (default: as fast as answers come).
    #[arg(long)]
    rate: Option<f64>,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 1)]
    concurrency: usize,
    /// HTTP method; POST sends {"text": TEXT} as JSON.
    #[arg(long, default_value = "POST")]
    method: Method,
    /// Text to score.
    #[arg(long, default_value = "I love how fast this model is!")]
    text: String,
    /// API key to send (default: none, so the gateway limits by client IP).
    #[arg(long)]
    api_key: Option<String>,
    /// Header for the API key; "authorization" sends "Bearer <key>".
    #[arg(long, default_value = "authorization")]
    api_key_header: HeaderName,
    /// After a 429, wait Retry-After seconds, then go on with the next requests.
    #[arg(long)]
    wait: bool,
    /// Timeout per request in ms.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
}

fn init_logs(format: LogFormat) {
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    use tracing_subscriber::prelude::*;
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).init()
        }
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init(),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logs(cli.log_format);
            exit(serve_gateway(args))
        }
        Command::Model(args) => {
            init_logs(cli.log_format);
            exit(serve_model(args))
        }
        Command::Client(args) => run_client(args),
    }
}

fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_gateway(args: ServeArgs) -> Result<(), String> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
        upstream_timeout_ms: args.upstream_timeout_ms,
        redis_url: args.redis_url.or_else(|| {
            if args.redis_cluster_nodes.is_empty() {
                std::env::var("GATEWAY_REDIS_URL").ok()
            } else {
                None
            }
        }),
        redis_cluster_nodes: args.redis_cluster_nodes,
        redis_timeout_ms: args.redis_timeout_ms,
        key_prefix: args.key_prefix,
        limit: args.limit,
        window: args.window,
        burst: args.burst,
        max_body_bytes: args.max_body_bytes,
        client_body_timeout_ms: args.client_body_timeout_ms,
        client_header_timeout_ms: args.client_header_timeout_ms,
        trusted_proxies: args.trusted_proxies,
        fail_open: args.fail_open,
    };
    let settings = Settings::resolve(file, &overrides, |name| std::env::var(name).ok()).map_err(|e| e.to_string())?;
    tracing::info!(
        listen = %settings.listen,
        upstream = %format!("{}{}", settings.upstream.origin, settings.upstream.base_path),
        redis = %if settings.redis.cluster_nodes.is_empty() {
            redact_url(&settings.redis.url)
        } else {
            format!("cluster {:?}", settings.redis.cluster_nodes.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
        },
        key_prefix = %settings.redis.key_prefix,
        failure_mode = ?settings.redis.failure_mode,
        policies = ?settings.policies.iter().map(|p| format!("{}: {}/{}s burst {} on {:?}", p.name, p.limit, p.window, p.burst, p.paths)).collect::<Vec<_>>(),
        "gateway configured"
    );
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let listen = settings.listen;
        let header_timeout = settings.client_header_timeout;
        let state = AppState::new(settings)?;
        // Say early (without delaying the start) when Redis or the module is missing.
        let limiter = state.limiter().clone();
        tokio::spawn(async move {
            match limiter.ready().await {
                Ok(()) => tracing::info!("Redis answers and has the ratelimit module"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "Redis is not ready (is it running, with the ratelimit module loaded?); rate-limited paths fail until it is"
                ),
            }
        });
        serve::run("gateway", listen, app(state), header_timeout).await.map_err(|e| e.to_string())
    })
}

fn serve_model(args: ModelArgs) -> Result<(), String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        tracing::info!(model = model::MODEL_NAME, latency_ms = args.latency_ms, "demo model");
        let router = model::router(Duration::from_millis(args.latency_ms));
        serve::run("model", args.listen, router, serve::DEFAULT_HEADER_TIMEOUT).await.map_err(|e| e.to_string())
    })
}

fn run_client(args: ClientArgs) -> ExitCode {
    if let Some(rate) = args.rate {
        if let Err(why) = client::interval(rate) {
            eprintln!("error: {why}");
            return ExitCode::from(2);
        }
    }
    let options = ClientOptions {
        url: args.url,
        count: args.count,
        rate: args.rate,
        concurrency: args.concurrency,
        method: args.method,
        text: args.text,
        api_key: args.api_key,
        api_key_header: args.api_key_header,
        wait: args.wait,
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(client::run(options));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
