//! `GET /stats`: `{"in_flight": n, "max_in_flight": m, "served": k}`, counted by a layer
//! around every other route. A request is in flight from when the router gets it until its
//! response body ends (or is dropped), so a streamed answer counts until its last chunk;
//! `max_in_flight` is the most ever in flight at once, `served` the requests finished.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use hyper::body::Frame;
use serde_json::{json, Value};

#[derive(Default)]
pub struct Stats {
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    served: AtomicU64,
}

/// One request in flight, until dropped.
struct InFlight(Arc<Stats>);

impl InFlight {
    fn new(stats: Arc<Stats>) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(stats)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.served.fetch_add(1, Ordering::SeqCst);
    }
}

/// The response body, holding its request's [`InFlight`] until it ends.
struct Counted {
    inner: Body,
    in_flight: Option<InFlight>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || self.inner.is_end_stream() {
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    /// The inner size, so a whole answer keeps its `Content-Length`.
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The layer (`axum::middleware::from_fn_with_state`) that counts every request.
pub async fn count(State(stats): State<Arc<Stats>>, request: Request, next: Next) -> Response {
    let in_flight = InFlight::new(stats);
    let (parts, body) = next.run(request).await.into_parts();
    Response::from_parts(parts, Body::new(Counted { inner: body, in_flight: Some(in_flight) }))
}

/// `GET /stats`.
pub async fn report(State(stats): State<Arc<Stats>>) -> Json<Value> {
    Json(json!({
        "in_flight": stats.in_flight.load(Ordering::SeqCst),
        "max_in_flight": stats.max_in_flight.load(Ordering::SeqCst),
        "served": stats.served.load(Ordering::SeqCst),
    }))
}

#[cfg(test)]
mod tests {
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::super::{router_with, Timing};

    async fn call(router: &axum::Router, method: Method, path: &str, body: &'static str) -> axum::response::Response {
        let request = Request::builder().method(method).uri(path).body(axum::body::Body::from(body)).unwrap();
        router.clone().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn stats_count_a_request_until_its_body_is_read() {
        let router = router_with(Timing::default());
        let answer = call(&router, Method::POST, "/v1/predict", r#"{"text":"good"}"#).await;
        let stats = |router| async move {
            let body = call(router, Method::GET, "/stats", "").await.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap().to_string()
        };
        assert_eq!(stats(&router).await, r#"{"in_flight":1,"max_in_flight":1,"served":0}"#, "body not read yet");
        answer.into_body().collect().await.unwrap();
        assert_eq!(stats(&router).await, r#"{"in_flight":0,"max_in_flight":1,"served":1}"#);
    }
}
