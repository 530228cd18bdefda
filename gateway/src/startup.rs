//! `gateway serve` once its settings are resolved: logs them (passwords hidden), sets up the
//! Redis limiter, says early whether Redis is ready, and serves [`app`] until shutdown.

use std::fmt;

use crate::app::app;
use crate::config::{ConfigError, Settings};
use crate::limiter::{ClientError, RateLimiter, RedisLimiter};
use crate::serve;

/// Why the gateway could not start (or stopped with an error).
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    /// The Redis client refused a setting.
    Redis(ClientError),
    /// Listening failed, or the runtime could not be built.
    Io(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => e.fmt(f),
            StartError::Redis(e) => e.fmt(f),
            StartError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Redis(e) => Some(e),
            StartError::Io(e) => Some(e),
        }
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

impl From<ClientError> for StartError {
    fn from(e: ClientError) -> Self {
        StartError::Redis(e)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Io(e)
    }
}

/// Serves the gateway until SIGTERM or Ctrl-C (then drains open requests).
pub async fn serve_gateway(settings: Settings) -> Result<(), StartError> {
    tracing::info!(
        listen = %settings.listen,
        upstream = %format!("{}{}", settings.upstream.origin, settings.upstream.base_path),
        redis = %settings.redis.target,
        key_prefix = %settings.redis.key_prefix,
        failure_mode = ?settings.redis.failure_mode,
        policies = ?settings.policies.iter().map(describe_policy).collect::<Vec<_>>(),
        "gateway configured"
    );
    let limiter = RedisLimiter::new(&settings.redis)?;
    // Say early (without delaying the start) when Redis or the module is missing.
    let probe = limiter.clone();
    tokio::spawn(async move {
        match probe.ready().await {
            Ok(()) => tracing::info!("Redis answers and has the ratelimit module"),
            Err(e) => tracing::warn!(
                error = %e,
                "Redis is not ready (is it running, with the ratelimit module loaded?); rate-limited paths fail until it is"
            ),
        }
    });
    let router = app(&settings, limiter);
    serve::run("gateway", settings.listen, router, settings.client_header_timeout).await?;
    Ok(())
}

/// `chat on ["/v1/chat"]: requests 60/60s burst 60, tokens 100000/60s burst 100000`, for the log.
fn describe_policy(policy: &crate::config::Policy) -> String {
    let limits: Vec<String> =
        policy.limits.iter().map(|q| format!("{} {}/{}s burst {}", q.name, q.limit, q.window, q.burst)).collect();
    format!("{} on {:?}: {}", policy.name, policy.paths, limits.join(", "))
}
