//! Step 6, the handler: reads the body (at most `max_body_bytes`, else `413`; within
//! `client_body_timeout_ms`, else `408`) and sends the request to the model on the route's
//! normalized path; the model's answer is streamed back (`502`/`504` when it cannot be had).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use axum::Extension;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::config::Settings;
use crate::error::{ApiError, BadRequest};
use crate::identity::{is_trusted, IpNet};
use crate::metrics::metrics;
use crate::routing::Route;
use crate::upstream::UpstreamClient;

pub struct Proxy {
    upstream: UpstreamClient,
    max_body_bytes: u64,
    body_timeout: Duration,
    trusted_proxies: Vec<IpNet>,
}

impl Proxy {
    pub fn new(settings: &Settings) -> Self {
        Proxy {
            upstream: UpstreamClient::new(settings.upstream.clone()),
            max_body_bytes: settings.max_body_bytes,
            body_timeout: settings.client_body_timeout,
            trusted_proxies: settings.identity.trusted_proxies.clone(),
        }
    }
}

pub async fn proxy(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(route): Extension<Route>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(body, proxy.max_body_bytes, proxy.body_timeout).await?;
    let peer_trusted = is_trusted(peer, &proxy.trusted_proxies);
    let started = Instant::now();
    let answer = proxy.upstream.forward(parts, &route.path, body, peer, peer_trusted).await;
    metrics().upstream_call(answer.as_ref().ok().map(|r| r.status().as_u16()), started.elapsed());
    answer
}

/// The whole body, refusing more than `max` bytes (also when no length was declared) and a
/// body that takes longer than `timeout` to arrive.
pub async fn read_body(body: Body, max: u64, timeout: Duration) -> Result<Bytes, ApiError> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::PayloadTooLarge { limit: max }),
        Ok(Err(_)) => Err(BadRequest::UnreadableBody.into()),
        Err(_) => Err(ApiError::RequestTimeout { ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX) }),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use axum::body::HttpBody;
    use axum::handler::Handler;
    use axum::http::StatusCode;
    use axum::middleware::from_fn_with_state;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Overrides;
    use crate::pipeline::route::route;
    use crate::routing::{LiveRoutes, Routes};
    use crate::test_support::{dead_upstream, echo_upstream, header, json, request, request_from, settings_with};

    /// The route step and the proxy, in front of the model at `upstream`.
    fn router(upstream: String, toml: &str) -> Router {
        let s = settings_with(toml, &Overrides { upstream: Some(upstream), ..Overrides::default() });
        Router::new()
            .fallback_service(proxy.with_state(Arc::new(Proxy::new(&s))))
            .layer(from_fn_with_state(Arc::new(LiveRoutes::new(Routes::from_settings(&s))), route))
    }

    /// A body whose bytes never come.
    struct Stalled;

    impl HttpBody for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_model_gets_the_normalized_path_the_query_and_the_body() {
        let app = router(echo_upstream().await, "");
        for (sent, path) in [("/v1//echo?x=1", "/v1/echo"), ("/a/%2570/b;c", "/a/%2570/b%3Bc"), ("/x/..", "/")] {
            let answer = app.clone().oneshot(request("POST", sent, &[], "four")).await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK, "{sent}");
            let seen = json(answer).await;
            assert_eq!(seen["path"], path, "{sent}");
            assert_eq!(seen["body_bytes"], 4);
        }
        let seen = json(app.oneshot(request("GET", "/q?a=1&b=2", &[], "")).await.unwrap()).await;
        assert_eq!(seen["query"], "a=1&b=2");
    }

    #[tokio::test]
    async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
        let app = router(echo_upstream().await, "[identity]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
        let sent = [("x-forwarded-for", "198.51.100.7"), ("x-real-ip", "1.1.1.1"), ("host", "gw.example")];
        let direct = json(app.clone().oneshot(request("GET", "/", &sent, "")).await.unwrap()).await;
        assert_eq!(direct["headers"]["x-forwarded-for"], "203.0.113.9");
        assert_eq!(direct["headers"]["x-forwarded-host"], "gw.example");
        assert_eq!(direct["headers"]["x-forwarded-proto"], "http");
        assert!(direct["headers"].get("x-real-ip").is_none());
        let proxied = json(app.oneshot(request_from("10.0.0.5:1", "GET", "/", &sent, "")).await.unwrap()).await;
        assert_eq!(proxied["headers"]["x-forwarded-for"], "198.51.100.7, 10.0.0.5");
        assert_eq!(proxied["headers"]["x-real-ip"], "1.1.1.1");
    }

    #[tokio::test]
    async fn a_body_too_large_or_too_slow_is_refused() {
        let app = router(echo_upstream().await, "max_body_bytes = 3\nclient_body_timeout_ms = 50\n");
        let large = app.clone().oneshot(request("POST", "/", &[], "four")).await.unwrap();
        assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json(large).await["error"]["message"], "The request body is larger than 3 bytes.");
        let slow = app.oneshot(request("POST", "/", &[], Body::new(Stalled))).await.unwrap();
        assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(header(&slow, "connection"), Some("close"));
        assert_eq!(json(slow).await["error"]["type"], "request_timeout");
    }

    #[tokio::test]
    async fn an_unreachable_model_is_a_502() {
        let answer = router(dead_upstream(), "").oneshot(request("GET", "/", &[], "")).await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(json(answer).await["error"]["type"], "upstream_unavailable");
    }
}
