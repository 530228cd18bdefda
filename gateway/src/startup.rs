//! `gateway serve` once its settings are resolved: logs them (passwords hidden), sets up the
//! Redis limiter, says early whether Redis is ready, and serves [`crate::app::app_with_routes`] until shutdown. On
//! `SIGHUP` it reads the config file again and puts its policies and tiers in force for the
//! requests that start from then on (open connections stay); everything else (listen address,
//! upstream, Redis, identity, body limits) needs a restart, and a changed value is logged as
//! ignored. A file that does not load keeps the running config, and the reason is logged.

use std::fmt;

use std::sync::Arc;

use crate::admission::Admission;
use crate::app::app_with_routes;
use crate::config::{ConfigError, ServeArgs, Settings};
use crate::limiter::Metered;
use crate::limiter::{ClientError, RateLimiter, RedisLimiter};
use crate::rls::grpc::Rls;
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
        upstream_limits = %describe_upstream_limits(&settings.upstream),
        redis = %settings.redis.target,
        key_prefix = %settings.redis.key_prefix,
        failure_mode = ?settings.redis.failure_mode,
        deny_cache = %match settings.deny_cache.enabled {
            true => format!("on, at most {} entries", settings.deny_cache.max_entries),
            false => "off".to_string(),
        },
        policies = %describe_policies(&settings.policies),
        "gateway configured"
    );
    warn_if_short(&settings.identity.secret.0);
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
    let limiter_for_envoy = limiter.clone();
    let router = app_with_routes(&settings, limiter, routes);
    let connections = serve::Connections {
        header_timeout: settings.client_header_timeout,
        write_timeout: settings.client_write_timeout,
        max: serve::connections_that_fit(settings.max_connections),
    };
    let http = serve::run("gateway", settings.listen, router, connections);
    match &settings.envoy {
        None => http.await?,
        Some(envoy) => {
            // Beside the HTTP listener, on the same limiter; both stop on the same signal.
            // Every limiter call timed into /metrics, as the HTTP pipeline's are.
            let admission = Admission::new(Metered(limiter_for_envoy), settings.deny_cache);
            let service = Rls::new(envoy.config.clone(), admission).into_server();
            tracing::info!(listen = %envoy.listen, config = %envoy.config_path.display(), "Envoy rate limit service (gRPC) listening");
            let grpc = async {
                let listener = tokio::net::TcpListener::bind(envoy.listen).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("the Envoy rate limit service on {}: {e}", envoy.listen))
                })?;
                crate::rls::listener::serve(listener, service, connections.max, serve::shutdown_signal()).await.map_err(
                    |e| std::io::Error::other(format!("the Envoy rate limit service on {}: {e}", envoy.listen)),
                )
            };
            tokio::try_join!(http, grpc)?;
        }
    }
    Ok(())
}

/// Below this many bytes the key-hashing secret is easy to guess: the gateway warns at start.
pub const SHORT_SECRET_BYTES: usize = 16;

/// A short secret is accepted (a test or a demo may use one) but said: whoever has a key's
/// digest (tier lists in config files, the access log) and guesses the secret can test
/// candidate keys offline.
fn warn_if_short(secret: &[u8]) {
    if secret.len() < SHORT_SECRET_BYTES {
        tracing::warn!(
            bytes = secret.len(),
            "the key-hashing secret is shorter than {SHORT_SECRET_BYTES} bytes: anyone holding a key digest could \
             guess it; use 32 random bytes (openssl rand -hex 32)"
        );
    }
}

/// Every policy, `; `-separated, as [`describe_policy`] says it.
fn describe_policies(policies: &[crate::config::Policy]) -> String {
    let described: Vec<String> = policies.iter().map(describe_policy).collect();
    described.join("; ")
}

/// `chat on /v1/chat, /v1/completions: requests 60/60s burst 60, tokens 100000/60s burst
/// 100000, max_concurrent 4 (lease 30000 ms) [tier pro: ...]`, for the log.
fn describe_policy(policy: &crate::config::Policy) -> String {
    let tiers: Vec<String> =
        policy.tiers.iter().map(|(tier, p)| format!(" [tier {tier}: {}]", describe_limits(p))).collect();
    let shadow = if policy.shadow { " (shadow: counted, never enforced)" } else { "" };
    format!("{} on {}: {}{}{shadow}", policy.name, policy.paths.join(", "), describe_limits(policy), tiers.concat())
}

fn describe_limits(policy: &crate::config::Policy) -> String {
    let mut limits: Vec<String> = policy.limits.iter().map(describe_quota).collect();
    limits.extend(policy.concurrency.map(describe_concurrency));
    limits.join(", ")
}

fn describe_quota(q: &crate::config::Quota) -> String {
    format!("{} {}/{}s burst {}", q.name, q.limit, q.window, q.burst)
}

fn describe_concurrency(c: crate::config::Concurrency) -> String {
    format!("max_concurrent {} (lease {} ms)", c.max, c.lease_ms)
}

/// `[upstream] max_concurrent` and `[upstream.capacity]`, or `none`.
fn describe_upstream_limits(upstream: &crate::config::Upstream) -> String {
    let mut limits: Vec<String> = upstream.concurrency.map(describe_concurrency).into_iter().collect();
    limits.extend(upstream.capacity.as_ref().map(|q| format!("capacity {}/{}s burst {}", q.limit, q.window, q.burst)));
    if limits.is_empty() {
        return "none".into();
    }
    limits.join(", ")
}

/// The settings a reload cannot change that differ between `running` and `new`, by the name
/// a user knows them by.
fn changed_restart_only(running: &Settings, new: &Settings) -> Vec<&'static str> {
    let debug = |v: &dyn fmt::Debug| format!("{v:?}");
    let categories: [(&'static str, bool); 9] = [
        ("listen", running.listen != new.listen),
        ("max_connections", running.max_connections != new.max_connections),
        ("max_body_bytes", running.max_body_bytes != new.max_body_bytes),
        (
            "client timeouts (client_*_timeout_ms)",
            (running.client_body_timeout, running.client_header_timeout, running.client_write_timeout)
                != (new.client_body_timeout, new.client_header_timeout, new.client_write_timeout),
        ),
        ("[upstream]", debug(&running.upstream) != debug(&new.upstream)),
        ("[redis]", debug(&running.redis) != debug(&new.redis)),
        // Debug hides the secret: compared on its own.
        ("[identity]", debug(&running.identity) != debug(&new.identity)),
        ("the key-hashing secret", running.identity.secret != new.identity.secret),
        ("[deny_cache]", running.deny_cache != new.deny_cache),
    ];
    categories.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect()
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
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match Settings::load(&args, |name| std::env::var(name).ok()) {
                Ok(new) => {
                    let ignored = changed_restart_only(&running, &new);
                    if !ignored.is_empty() {
                        tracing::warn!(
                            changed = %ignored.join(", "),
                            "config reload: these changed settings need a restart and are not applied; \
                             only [[policy]], [tiers] and [[tier]] are reloaded"
                        );
                    }
                    // The new policies' series are in /metrics at zero from now on, as at start.
                    crate::metrics::metrics().declare(&new);
                    routes.replace(Routes::from_settings(&new));
                    tracing::info!(
                        policies = %describe_policies(&new.policies),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::settings;

    const CHAT: &str = "[[policy]]\nname = \"chat\"\npaths = [\"/v1/chat\", \"/v1/completions\"]\nlimit = 60\nwindow = 60\nmax_concurrent = 4\n";

    #[test]
    fn the_start_up_log_lists_every_limit_without_escaped_quotes() {
        let s = settings(&format!(
            "[upstream]\nmax_concurrent = 64\n[upstream.capacity]\nlimit = 100\nwindow = 1\n[[tier]]\nname = \"pro\"\n{CHAT}[[policy.tier]]\ntier = \"pro\"\nlimit = 600\nwindow = 60\n"
        ));
        assert_eq!(
            describe_policies(&s.policies),
            "chat on /v1/chat, /v1/completions: requests 60/60s burst 60, max_concurrent 4 (lease 30000 ms) \
             [tier pro: requests 600/60s burst 600, max_concurrent 4 (lease 30000 ms)]"
        );
        assert_eq!(
            describe_upstream_limits(&s.upstream),
            "max_concurrent 64 (lease 30000 ms), capacity 100/1s burst 100"
        );
        assert_eq!(describe_upstream_limits(&settings(CHAT).upstream), "none");
    }

    #[test]
    fn a_reload_names_only_the_restart_only_settings_that_changed() {
        let running = settings(CHAT);
        let policies_only = settings(&CHAT.replace("limit = 60", "limit = 5"));
        assert_eq!(changed_restart_only(&running, &policies_only), Vec::<&str>::new());
        let upstream = settings(&format!("[upstream]\ntimeout_ms = 5\n{CHAT}"));
        assert_eq!(changed_restart_only(&running, &upstream), vec!["[upstream]"]);
        let two = settings(&format!("max_body_bytes = 10\n[deny_cache]\nenabled = false\n{CHAT}"));
        assert_eq!(changed_restart_only(&running, &two), vec!["max_body_bytes", "[deny_cache]"]);
    }
}
