//! `gateway serve | model | client | hash-key | load-functions`: the rate-limiting gateway (the `gateway` library), and
//! beside it the demo model API ([`model`]) and the demo client ([`client`]), which share
//! nothing with the gateway but [`gateway::serve::run`]. `gateway <command> --help` lists
//! every flag.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod client;
mod model;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::Targets;

use client::ClientArgs;
use gateway::config::{ServeArgs, Settings};
use gateway::hash_key::HashKeyArgs;
use gateway::load_functions::LoadFunctionsArgs;
use gateway::serve;
use gateway::startup::{serve_gateway, StartError};
use model::ModelArgs;

/// mimalloc instead of glibc's malloc: the request path allocates a few dozen small blocks per
/// request, and glibc's malloc and free were about a fifth of the gateway's instructions
/// (BENCHMARKS.md, "Gateway under wrk").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the gateway: identify, rate limit (one RL.CHECK or RL.CHECKALL per request), forward to the model.
    Serve(ServeArgs),
    /// Run the demo model API: POST /v1/predict {"text": ...} -> sentiment, POST /v1/chat/completions
    /// (OpenAI-compatible, JSON or streamed), GET /v1/models, ANY /v1/echo, GET /stats, GET /healthz.
    Model(ModelArgs),
    /// Send requests and print, per request, whether it was admitted or rate limited.
    Client(ClientArgs),
    /// Print the digest of an API key, to list it in a [[tier]] of the config.
    HashKey(HashKeyArgs),
    /// Load the ratelimit Functions library into Redis (FUNCTION LOAD REPLACE), for an administrator
    /// when the gateway's own user may not; or print it (--print).
    LoadFunctions(LoadFunctionsArgs),
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
            exit(run_gateway(args))
        }
        Command::Model(args) => {
            init_logs(cli.log_format);
            exit(serve_model(args))
        }
        Command::Client(args) => run_client(args),
        Command::LoadFunctions(args) => {
            let done =
                runtime().map_err(|e| e.to_string()).and_then(|rt| rt.block_on(gateway::load_functions::run(&args)));
            match done {
                Ok(lines) => {
                    lines.iter().for_each(|line| println!("{line}"));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::HashKey(args) => {
            match gateway::hash_key::run(&args, std::io::stdin(), |name| std::env::var(name).ok()) {
                Ok(digest) => {
                    println!("{digest}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn exit<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Said once: in the log's format, unless RUST_LOG turned errors off.
        Err(e) => {
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{e}");
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_gateway(args: ServeArgs) -> Result<(), StartError> {
    let settings = Settings::load(&args, |name| std::env::var(name).ok())?;
    runtime()?.block_on(serve_gateway(settings, args))
}

fn serve_model(args: ModelArgs) -> std::io::Result<()> {
    runtime()?.block_on(async {
        tracing::info!(
            model = model::MODEL_NAME,
            latency_ms = args.latency_ms,
            token_latency_ms = args.token_latency_ms,
            "demo model"
        );
        let router = model::router_with(args.timing());
        let connections = serve::Connections::default();
        let connections = serve::Connections { max: serve::connections_that_fit(connections.max), ..connections };
        serve::run("model", args.listen, router, connections).await
    })
}

fn run_client(args: ClientArgs) -> ExitCode {
    if let Some(rate) = args.rate {
        if let Err(why) = client::interval(rate) {
            eprintln!("error: {why}");
            return ExitCode::from(2);
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(client::run(args));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
