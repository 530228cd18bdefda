//! `gateway serve` once its settings are resolved: logs them (passwords hidden), sets up the
//! Redis limiter, says early whether Redis is ready, and serves [`crate::app::app_with_routes`] until shutdown. On
//! `SIGHUP` it reads the config file again and puts its policies and tiers in force for the
//! requests that start from then on (open connections stay); everything else (listen address,
//! upstream, Redis, identity, body limits) needs a restart, and a changed value is logged as
//! ignored. A file that does not load keeps the running config, and the reason is logged.

use std::fmt;

use std::sync::Arc;

use crate::app::app_with_routes;
use crate::config::{ConfigError, ServeArgs, Settings, Tiers};
use crate::limiter::{ClientError, RateLimiter, RedisLimiter};
use crate::routing::{LiveRoutes, Routes};
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

/// Serves the gateway until SIGTERM or Ctrl-C (then drains open requests); `args` (the config
/// file and flags it was loaded from) are loaded again on SIGHUP.
pub async fn serve_gateway(settings: Settings, args: ServeArgs) -> Result<(), StartError> {
    tracing::info!(
        listen = %settings.listen,
        upstream = %format!("{}{}", settings.upstream.origin, settings.upstream.base_path),
        redis = %settings.redis.target,
        key_prefix = %settings.redis.key_prefix,
        failure_mode = ?settings.redis.failure_mode,
        deny_cache = %match settings.deny_cache.enabled {
            true => format!("on, at most {} entries", settings.deny_cache.max_entries),
            false => "off".to_string(),
        },
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
    let routes = Arc::new(LiveRoutes::new(Routes::from_settings(&settings)));
    spawn_reloader(args, settings.clone(), routes.clone());
    let router = app_with_routes(&settings, limiter, routes);
    let connections = serve::Connections {
        header_timeout: settings.client_header_timeout,
        write_timeout: settings.client_write_timeout,
        max: serve::connections_that_fit(settings.max_connections),
    };
    serve::run("gateway", settings.listen, router, connections).await?;
    Ok(())
}

/// `chat on ["/v1/chat"]: requests 60/60s burst 60, tokens 100000/60s burst 100000`, for the log.
fn describe_policy(policy: &crate::config::Policy) -> String {
    let tiers: Vec<String> =
        policy.tiers.iter().map(|(tier, p)| format!(" [tier {tier}: {}]", describe_limits(p))).collect();
    let shadow = if policy.shadow { " (shadow: counted, never enforced)" } else { "" };
    format!("{} on {:?}: {}{}{shadow}", policy.name, policy.paths, describe_limits(policy), tiers.concat())
}

fn describe_limits(policy: &crate::config::Policy) -> String {
    let limits: Vec<String> =
        policy.limits.iter().map(|q| format!("{} {}/{}s burst {}", q.name, q.limit, q.window, q.burst)).collect();
    limits.join(", ")
}

/// What a reload cannot change, for comparison: the settings without policies and tiers (and
/// the secret, which `Debug` hides).
fn fixed_part(settings: &Settings) -> (String, Vec<u8>) {
    let fixed = Settings { policies: Vec::new(), tiers: Tiers::default(), ..settings.clone() };
    (format!("{fixed:?}"), settings.identity.secret.0.clone())
}

/// On each SIGHUP: load `args` again and replace the routes, or log why not.
#[cfg(unix)]
fn spawn_reloader(args: ServeArgs, running: Settings, routes: Arc<LiveRoutes>) {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered now, before serving: from here on SIGHUP no longer ends the process.
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: no config reloads");
            return;
        }
    };
    let fixed = fixed_part(&running);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match Settings::load(&args, |name| std::env::var(name).ok()) {
                Ok(new) => {
                    if fixed_part(&new) != fixed {
                        tracing::warn!(
                            "config reload: only [[policy]], [tiers] and [[tier]] are reloaded; the other \
                             changed settings (listen, upstream, redis, identity, body limits) need a restart"
                        );
                    }
                    routes.replace(Routes::from_settings(&new));
                    tracing::info!(
                        policies = ?new.policies.iter().map(describe_policy).collect::<Vec<_>>(),
                        tiered_keys = new.tiers.keys.len(),
                        "config reloaded"
                    );
                }
                Err(e) => tracing::error!(error = %e, "config reload failed, keeping the running config"),
            }
        }
    });
}

#[cfg(not(unix))]
fn spawn_reloader(_: ServeArgs, _: Settings, _: Arc<LiveRoutes>) {}
