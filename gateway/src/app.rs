//! The gateway's HTTP application. Each request reads top to bottom:
//! access log -> target, key-header and size checks -> policy (on the normalized path) ->
//! identify -> limit (one `RL.CHECK`) -> read body (with a timeout) -> forward (the normalized
//! path) -> add rate-limit headers. Everything refused before the limit costs no quota.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use crate::config::{normalize_path, FailureMode, Settings};
use crate::error::ApiError;
use crate::headers::{rate_limit_headers, retry_after_secs};
use crate::identity::{api_key, bucket_ip, client_ip, is_trusted, BadIdentity, Hasher, Identity};
use crate::limiter::Limiter;
use crate::proxy::UpstreamClient;

/// Shared by every request: cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    settings: Settings,
    limiter: Limiter,
    upstream: UpstreamClient,
    hasher: Hasher,
}

impl AppState {
    pub fn new(settings: Settings) -> Result<Self, String> {
        let limiter = Limiter::new(&settings.redis)?;
        let upstream = UpstreamClient::new(settings.upstream.clone());
        let hasher = Hasher::new(&settings.identity.secret);
        Ok(AppState(Arc::new(Inner { settings, limiter, upstream, hasher })))
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    pub fn limiter(&self) -> &Limiter {
        &self.0.limiter
    }
}

/// The router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`: the
/// client address is needed to identify callers without an API key.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(gateway)
        .layer(middleware::from_fn(access_log))
        .with_state(state)
}

async fn access_log(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(%method, %path, status, elapsed_ms = format_args!("{elapsed_ms:.1}"), "request");
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when Redis answers and has the module loaded.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.limiter().ready().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": "redis unavailable"})))
                .into_response()
        }
    }
}

async fn gateway(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let settings = state.settings();
    let (parts, body) = request.into_parts();
    let max = settings.max_body_bytes;

    // `OPTIONS *`, `CONNECT host:port`: nothing to forward to the model.
    if !parts.uri.path().starts_with('/') {
        return ApiError::BadRequest("The request target must be a path starting with '/'.").into_response();
    }
    // Two different keys, or a key header the proxy would strip: refused before any quota is spent.
    let key = match api_key(&parts.headers, &settings.identity.api_key_headers) {
        Ok(key) => key,
        Err(e) => return ApiError::BadRequest(e.message()).into_response(),
    };
    if key.is_none() && settings.identity.require_api_key {
        return ApiError::Unauthorized.into_response();
    }
    // A declared length over the limit is refused before any quota is spent.
    match declared_length(&parts.headers) {
        Err(e) => return e.into_response(),
        Ok(Some(len)) if len > max => return ApiError::PayloadTooLarge { limit: max }.into_response(),
        Ok(_) => {}
    }

    // The policy is chosen on the normalized path, and that same path is what the model gets.
    let path = normalize_path(parts.uri.path());
    let peer_trusted = is_trusted(peer, &settings.identity.trusted_proxies);
    let mut limit_headers = HeaderMap::new();
    if let Some(policy) = settings.policy_for_normal(&path) {
        let identity = match key {
            Some(key) => Identity::ApiKey(key),
            None => match client_ip(&parts.headers, peer, &settings.identity.trusted_proxies) {
                Ok(ip) => Identity::Ip(bucket_ip(ip, settings.identity.ipv6_prefix)),
                Err(_) => return ApiError::BadRequest(BadIdentity::ForwardedFor.message()).into_response(),
            },
        };
        let hash = state.0.hasher.hash(&identity);
        match state.limiter().check(policy, &hash).await {
            Ok(decision) => {
                tracing::debug!(policy = %policy.name, identity = identity.kind(), id = %hash, ?decision, "checked");
                limit_headers = rate_limit_headers(policy, &decision);
                if !decision.allowed {
                    let mut response =
                        ApiError::RateLimited { retry_after_secs: retry_after_secs(&decision) }.into_response();
                    response.headers_mut().extend(limit_headers);
                    return response;
                }
            }
            Err(e) => match settings.redis.failure_mode {
                FailureMode::Closed => return ApiError::LimiterUnavailable { detail: e.to_string() }.into_response(),
                FailureMode::Open => {
                    tracing::warn!(error = %e, "rate limiter unavailable, forwarding unmetered (failure_mode = open)")
                }
            },
        }
    }

    let timeout = settings.client_body_timeout;
    let body = match tokio::time::timeout(timeout, read_body(body, max)).await {
        Ok(read) => read,
        Err(_) => Err(ApiError::RequestTimeout { ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) }),
    };
    let mut response = match body {
        Ok(bytes) => match state.0.upstream.forward(parts, &path, bytes, peer, peer_trusted).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    };
    response.headers_mut().extend(limit_headers);
    response
}

fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(ApiError::BadRequest("Malformed Content-Length header.")),
    }
}

/// The whole body, refusing more than `max` bytes (also when no length was declared).
async fn read_body(body: Body, max: u64) -> Result<Bytes, ApiError> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::PayloadTooLarge { limit: max }),
        Err(_) => Err(ApiError::BadRequest("The request body could not be read.")),
    }
}
