//! The gateway's HTTP application: `/healthz`, `/readyz` and `/metrics`, and for every other
//! request the pipeline of [`crate::pipeline`], assembled here top to bottom.

use std::sync::Arc;

use axum::extract::State;
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower::ServiceBuilder;

use crate::config::Settings;
use crate::limiter::{LimiterError, Metered, RateLimiter};
use crate::log_limit::warn_every;
use crate::metrics;
use crate::pipeline::{access_log, checks, identify, keep_alive, limit, proxy, route};
use crate::pipeline::{Checks, Identify, KeepAlive, Limit, Proxy};
use crate::routing::{LiveRoutes, Routes};

/// The router. Requests to the pipeline need the client address as a
/// `ConnectInfo<SocketAddr>` extension (callers without an API key are limited by it):
/// [`crate::serve::run`] inserts it for each connection; a test inserts it by hand.
pub fn app<L: RateLimiter>(settings: &Settings, limiter: L) -> Router {
    app_with_routes(settings, limiter, Arc::new(LiveRoutes::new(Routes::from_settings(settings))))
}

/// [`app`] on routes the caller keeps, to replace them on a reload ([`LiveRoutes::replace`]).
pub fn app_with_routes<L: RateLimiter>(settings: &Settings, limiter: L, routes: Arc<LiveRoutes>) -> Router {
    // Every limiter call, from any step, lease or settlement, is timed into /metrics.
    let limiter = Metered(limiter);
    metrics::metrics().declare(settings);
    let keep = Arc::new(KeepAlive { body_timeout: settings.client_body_timeout });
    let pipeline = ServiceBuilder::new()
        .layer(from_fn_with_state(keep, keep_alive::keep_alive))
        .layer(from_fn_with_state(Arc::new(Checks::new(settings)), checks::check_request))
        .layer(from_fn_with_state(routes, route::route))
        .layer(from_fn_with_state(Arc::new(Identify::new(&settings.identity)), identify::identify))
        .layer(from_fn_with_state(Arc::new(Limit::new(limiter.clone(), settings)), limit::limit::<Metered<L>>))
        .service(proxy::proxy.with_state(Arc::new(Proxy::new(settings))));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<Metered<L>>))
        .route("/metrics", get(metrics_page))
        .with_state(Arc::new(limiter))
        .fallback_service(pipeline)
        .layer(from_fn(access_log::access_log))
}

/// Live: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The Prometheus scrape: every metric of [`crate::metrics`].
async fn metrics_page() -> Response {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::metrics().encode()).into_response()
}

/// Ready when the limiter answers (for Redis: it runs and has the module loaded).
async fn readyz<L: RateLimiter>(State(limiter): State<Arc<L>>) -> Response {
    match limiter.ready().await {
        Ok(()) => match limiter.backend() {
            Some(backend) => Json(json!({"status": "ready", "backend": backend})).into_response(),
            None => Json(json!({"status": "ready"})).into_response(),
        },
        Err(e) => {
            warn_every!(error = %e, "not ready");
            let reason = match e {
                LimiterError::ModuleMissing(_) => "ratelimit module not loaded in redis",
                LimiterError::LibraryMissing(_) => {
                    "ratelimit functions library unusable in redis (see the gateway's log)"
                }
                _ => "redis unavailable",
            };
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": reason}))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Overrides;
    use crate::limiter::memory::MemoryLimiter;
    use crate::test_support::{echo_upstream, header, json, request, settings_with};

    /// The gateway in front of an echo model: 3 requests per minute on `/v1`, other paths unlimited.
    async fn gateway(limiter: &MemoryLimiter, extra: &str) -> Router {
        let toml = format!("{extra}\n[[policy]]\nname = \"v1\"\npaths = [\"/v1\"]\nlimit = 3\nwindow = 60\n");
        let overrides = Overrides { upstream: Some(echo_upstream().await), ..Overrides::default() };
        app(&settings_with(&toml, &overrides), limiter.clone())
    }

    async fn send(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)]) -> Response {
        app.clone().oneshot(request(method, uri, headers, "")).await.unwrap()
    }

    #[tokio::test]
    async fn a_covered_request_is_checked_forwarded_and_labelled() {
        let limiter = MemoryLimiter::new();
        let app = gateway(&limiter, "").await;
        let answer = send(&app, "POST", "/v1/%65cho", &[("x-api-key", "k")]).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(header(&answer, "ratelimit-policy"), Some("\"v1\";q=3;w=60"));
        assert_eq!(header(&answer, "ratelimit"), Some("\"v1\";r=2;t=20"));
        assert_eq!(header(&answer, "x-ratelimit-limit"), Some("3"));
        assert_eq!(header(&answer, "x-ratelimit-reset"), Some("20"));
        let seen = json(answer).await;
        assert_eq!(seen["path"], "/v1/echo");
        assert_eq!(seen["headers"]["x-api-key"], "k", "the model gets the key it must authenticate");
        assert_eq!(limiter.checks(), 1);
    }

    #[tokio::test]
    async fn uncovered_paths_are_forwarded_without_a_check() {
        let limiter = MemoryLimiter::new();
        let answer = send(&gateway(&limiter, "").await, "GET", "/other", &[]).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(header(&answer, "ratelimit"), None);
        assert_eq!(limiter.checks(), 0);
    }

    #[tokio::test]
    async fn refusals_before_the_limit_cost_no_quota() {
        let limiter = MemoryLimiter::new();
        let app = gateway(&limiter, "max_body_bytes = 10\n[identity]\nrequire_api_key = true\n").await;
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: [(&str, Headers, StatusCode); 4] = [
            ("*", &[], StatusCode::BAD_REQUEST),
            ("/v1/x", &[("authorization", "Bearer a"), ("x-api-key", "b")], StatusCode::BAD_REQUEST),
            ("/v1/x", &[], StatusCode::UNAUTHORIZED),
            ("/v1/x", &[("x-api-key", "k"), ("content-length", "11")], StatusCode::PAYLOAD_TOO_LARGE),
        ];
        for (uri, headers, status) in cases {
            let answer = send(&app, "OPTIONS", uri, headers).await;
            assert_eq!(answer.status(), status, "{uri} {headers:?}");
            assert_eq!(header(&answer, "ratelimit"), None);
        }
        assert_eq!(limiter.checks(), 0);
        let unauthorized = send(&app, "GET", "/v1/x", &[]).await;
        assert_eq!(header(&unauthorized, "www-authenticate"), Some("Bearer"));
        assert_eq!(
            json(unauthorized).await.to_string(),
            r#"{"error":{"type":"unauthorized","message":"An API key is required."}}"#
        );
    }

    #[tokio::test]
    async fn each_caller_has_its_own_budget() {
        let limiter = MemoryLimiter::new();
        let app = gateway(&limiter, "").await;
        for _ in 0..3 {
            assert_eq!(send(&app, "GET", "/v1", &[("x-api-key", "a")]).await.status(), StatusCode::OK);
        }
        assert_eq!(send(&app, "GET", "/v1", &[("x-api-key", "a")]).await.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(send(&app, "GET", "/v1", &[("x-api-key", "b")]).await.status(), StatusCode::OK);
        assert_eq!(send(&app, "GET", "/v1", &[]).await.status(), StatusCode::OK, "no key: the IP's budget");
        assert_eq!(limiter.identities("v1").len(), 3);
    }

    #[tokio::test]
    async fn health_and_readiness_are_answered_by_the_gateway_itself() {
        let limiter = MemoryLimiter::new();
        let app = gateway(&limiter, "[identity]\nrequire_api_key = true\n").await;
        let health = send(&app, "GET", "/healthz", &[("x-api-key", "a"), ("authorization", "Bearer b")]).await;
        assert_eq!(health.status(), StatusCode::OK, "not checked like proxied requests");
        assert_eq!(json(health).await, serde_json::json!({"status": "ok"}));
        assert_eq!(json(send(&app, "GET", "/readyz", &[]).await).await, serde_json::json!({"status": "ready"}));
        limiter.set_down(true);
        let not_ready = send(&app, "GET", "/readyz", &[]).await;
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(not_ready).await, serde_json::json!({"status": "not_ready", "reason": "redis unavailable"}));
        assert_eq!(send(&app, "GET", "/healthz", &[]).await.status(), StatusCode::OK);
        assert_eq!(limiter.checks(), 0);
    }
}
