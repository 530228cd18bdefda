//! Step 1b: answers made before the request body was read (a `429`, `400`, `401`, `413`, `503`)
//! leave the connection usable for the next request, or say it closes.
//!
//! HTTP/1.1 can only read the next request on a connection once this one's body is read. A
//! server that answers early and drops the body closes the connection; clients that sent the
//! body in a second write (Python's `http.client` does) then find their next request failing on
//! a connection the answer never said was closing. So: a body of at most [`DRAIN_BYTES`]
//! declared by `Content-Length` is read and thrown away after the answer is sent (the client is
//! sending it anyway), and the connection stays open; any other body (larger, chunked without
//! a length, or one the client holds back until asked, `Expect: 100-continue`) is not waited
//! for, and the answer carries `Connection: close`.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};

/// The largest body read through after an early answer.
pub const DRAIN_BYTES: u64 = 64 * 1024;

/// How long the rest of a request body may take to arrive after an early answer (the step's
/// state: `client_body_timeout_ms`).
pub struct KeepAlive {
    pub body_timeout: Duration,
}

pub async fn keep_alive(State(keep): State<Arc<KeepAlive>>, request: Request, next: Next) -> Response {
    // Most requests carry no body (or an empty one): nothing can be left unread.
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    // A client that sent `Expect: 100-continue` waits to be asked for its body, and is not
    // asked when the answer comes first: draining would swallow its next request.
    let declared = match request.headers().contains_key(header::EXPECT) {
        true => None,
        false => request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok()),
    };
    let unread = Arc::new(Mutex::new(None));
    let (parts, body) = request.into_parts();
    let body = Body::new(Returned { inner: Some(body), ended: false, unread: unread.clone() });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    let left = unread.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(body) = left {
        match declared {
            Some(length) if length <= DRAIN_BYTES => {
                tokio::spawn(drain(body, keep.body_timeout));
            }
            _ => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
    }
    response
}

/// Reads `body` to its end (or for `timeout`), throwing it away.
async fn drain(mut body: Body, timeout: Duration) {
    let read = async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
}

/// A request body that, when dropped before its end, puts itself in `unread` for
/// [`keep_alive`] to deal with.
struct Returned {
    inner: Option<Body>,
    ended: bool,
    unread: Arc<Mutex<Option<Body>>>,
}

impl HttpBody for Returned {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let frame = Pin::new(inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else { return };
        if !self.ended && !inner.is_end_stream() {
            *self.unread.lock().unwrap_or_else(PoisonError::into_inner) = Some(inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::middleware::from_fn_with_state;
    use axum::routing::any;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;
    use crate::test_support::{header, request};

    /// The step in front of a handler that refuses without reading the body, or (on `/read`)
    /// reads it first.
    fn router() -> Router {
        let state = Arc::new(KeepAlive { body_timeout: Duration::from_secs(1) });
        Router::new()
            .route("/refuse", any(|| async { StatusCode::TOO_MANY_REQUESTS }))
            .route("/read", any(|body: Bytes| async move { body.len().to_string() }))
            .layer(from_fn_with_state(state, keep_alive))
    }

    #[tokio::test]
    async fn only_an_unread_body_too_large_or_of_unknown_length_closes_the_connection() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, Option<&'a str>);
        let cases: [Case; 6] = [
            ("/refuse", &[("content-length", "5")], "hello", None),
            ("/refuse", &[], "", None),
            ("/refuse", &[("content-length", "70000")], "x", Some("close")),
            ("/refuse", &[("transfer-encoding", "chunked")], "hello", Some("close")),
            ("/refuse", &[("content-length", "5"), ("expect", "100-continue")], "hello", Some("close")),
            ("/read", &[("content-length", "70000")], "x", None),
        ];
        for (path, headers, body, connection) in cases {
            let mut request = request("POST", path, headers, body.to_string());
            if headers.iter().all(|(name, _)| *name != "content-length") && !body.is_empty() {
                // A body without a declared length, as a chunked request's.
                *request.body_mut() = Body::from_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(
                    Bytes::from(body.to_string()),
                )]));
            }
            let answer = router().oneshot(request).await.unwrap();
            assert_eq!(header(&answer, "connection"), connection, "{path} {headers:?}");
        }
    }
}
