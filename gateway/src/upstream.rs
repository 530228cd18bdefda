//! The HTTP client to the model: it sends a request on with the same method, query, headers
//! (minus hop-by-hop ones, forwarding headers trusted or rewritten) and body, and the
//! normalized path the policy was chosen on; the answer is streamed back as it arrives.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, request, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Upstream;
use crate::error::{error_chain, ApiError, BadRequest};
use crate::log_limit::warn_every;

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none (and a header named by `Connection` only counts when
    // `Connection` itself is there): one pass over the few names present instead of a lookup
    // per hop-by-hop name, twice per request.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Forwarding headers believed only from a trusted proxy; from other peers they are dropped
/// (and `X-Forwarded-For`, `-Host`, `-Proto` written afresh).
const UNTRUSTED_FORWARDING: [HeaderName; 5] =
    [X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, header::FORWARDED, HeaderName::from_static("x-real-ip")];

/// A decoded path made fit for a request line again: `/` and the characters a path segment
/// may hold as they are, anything else percent-encoded. `;` and `\` are encoded too, so a
/// model server cannot read them as path parameters or separators: after decoding it sees
/// exactly the path the policy was chosen on.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    encode_path_into(&mut out, path);
    out
}

fn encode_path_into(out: &mut String, path: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// `ip` as text: IPv4 (every request's `X-Forwarded-For` on a v4 network) by hand, which is a
/// fraction of `to_string`'s cost; IPv6 by its `Display`.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A kept-alive HTTP/1.1 connection to the model.
type Sender = SendRequest<Full<Bytes>>;

/// The model's idle kept-alive connections, the most recently used last (taken first). No
/// cap and no idle timeout, as with hyper's pooled client without a timer: the model closes
/// what it does not want, and a closed connection is dropped when next looked at.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Sender>>,
}

impl Pool {
    /// A connection ready for a request, if one is idle.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            // Only ready ones are put back, so one that is not ready has closed since.
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// Puts a connection whose response has ended back. It is ready at once when the model's
    /// answer was read to its end (the usual case); otherwise (the client went away mid-body,
    /// or the connection task has not caught up yet) a task waits for it to become ready, or
    /// to close.
    fn give_back(self: &Arc<Self>, mut sender: Sender) {
        if sender.is_ready() {
            self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(sender);
        } else if !sender.is_closed() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let pool = self.clone();
                runtime.spawn(async move {
                    if sender.ready().await.is_ok() {
                        pool.idle.lock().unwrap_or_else(PoisonError::into_inner).push(sender);
                    }
                });
            }
        }
    }
}

/// The model's response body, which returns its connection to the pool when it ends (or is
/// dropped).
struct PooledBody {
    body: Incoming,
    sender: Option<Sender>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.give_back(sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.body.is_end_stream() {
            self.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.release();
    }
}

/// Why no answer came from the model.
enum SendError {
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl SendError {
    fn detail(&self) -> String {
        match self {
            SendError::Connect(e) => format!("tcp connect error: {}", error_chain(e)),
            SendError::Http(e) => error_chain(e),
        }
    }
}

/// The client to the model: HTTP/1.1 over kept-alive connections of its own (`Pool`).
///
/// (It replaced hyper-util's pooled client, whose per-request work showed in the profile:
/// the pool key and `Host` value formatted for every request, the absolute URI rewritten to
/// origin form, and a task spawned per request to return the connection to the pool once
/// the response body ended. Here the `Host` value is made once and the connection goes back
/// when the body ends. Like that client, a request that a reused connection refused before
/// it was sent, because the connection closed meanwhile, is tried again on another one.)
#[derive(Clone)]
pub struct UpstreamClient {
    upstream: Upstream,
    /// `origin` + `base_path`, what every target starts with.
    prefix: String,
    /// Where to connect (`host` without IPv6 brackets), and the `Host` header the model gets:
    /// the origin's authority, without a default port.
    host: String,
    port: u16,
    host_header: Option<HeaderValue>,
    pool: Arc<Pool>,
}

impl UpstreamClient {
    pub fn new(upstream: Upstream) -> Self {
        let prefix = format!("{}{}", upstream.origin, upstream.base_path);
        // The origin was checked when the configuration was loaded; one that does not parse
        // here leaves no host, and every request fails to connect (502).
        let origin = upstream.origin.parse::<Uri>().ok();
        let host = origin.as_ref().and_then(Uri::host).unwrap_or_default();
        let port = origin.as_ref().and_then(Uri::port_u16);
        let host_header = match port {
            Some(port) if port != 80 => HeaderValue::try_from(format!("{host}:{port}")).ok(),
            _ => HeaderValue::from_str(host).ok(),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        UpstreamClient { prefix, host, port: port.unwrap_or(80), host_header, pool: Arc::default(), upstream }
    }

    /// The upstream URI: origin + base path + `path` (a normalized, decoded path, see
    /// [`crate::routing::normalize_path`], encoded again by [`encode_path`]) + the original query.
    pub fn target(&self, path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
        target_uri(&self.prefix, path, query)
    }

    /// [`UpstreamClient::target`] in origin form (base path + path + query), as it goes on
    /// the request line.
    fn origin_form(&self, path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
        target_uri(&self.upstream.base_path, path, query)
    }

    /// A new connection to the model, its task driving it in the background.
    async fn connect(&self) -> Result<Sender, SendError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `request` on an idle connection, else on a new one; the answer's head and the
    /// connection, which goes back to the pool with the answer's body.
    async fn send(&self, mut request: Request<Full<Bytes>>) -> Result<(Response<Incoming>, Sender), SendError> {
        loop {
            let (mut sender, reused) = match self.pool.take() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    // Not sent: the kept-alive connection closed meanwhile. Each try takes
                    // another connection, the last a new one, which is not retried.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// Forwards the request with `path` (the normalized path the policy was chosen on) in
    /// place of the one sent. `peer_trusted`: the peer is a trusted proxy, whose forwarding
    /// headers are kept (and extended); from anyone else they are dropped.
    pub async fn forward(
        &self,
        parts: request::Parts,
        path: &str,
        body: Bytes,
        peer: SocketAddr,
        peer_trusted: bool,
    ) -> Result<Response<Body>, ApiError> {
        let uri = self.origin_form(path, parts.uri.query())?;
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // The model sees its own authority in Host. From a
        // trusted proxy, its X-Forwarded-* / Forwarded / X-Real-IP headers are kept, and all its
        // X-Forwarded-For lines are joined with the peer appended; from anyone else they are
        // dropped, X-Forwarded-For is the peer, X-Forwarded-Host the original Host and
        // X-Forwarded-Proto "http". The body is re-framed, so its length is recomputed.
        let host = headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
        let mut forwarded_for = String::with_capacity(16);
        if peer_trusted {
            for hop in headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()) {
                if !forwarded_for.is_empty() {
                    forwarded_for.push_str(", ");
                }
                forwarded_for.push_str(hop);
            }
        }
        if !forwarded_for.is_empty() {
            forwarded_for.push_str(", ");
        }
        push_ip(&mut forwarded_for, peer.ip());
        let forwarded_for = HeaderValue::try_from(forwarded_for);
        if !peer_trusted {
            // Whatever a direct client says about earlier hops is made up.
            for name in UNTRUSTED_FORWARDING {
                headers.remove(name);
            }
        }
        headers.remove(X_FORWARDED_FOR);
        if let Ok(value) = forwarded_for {
            headers.insert(X_FORWARDED_FOR, value);
        }
        if !headers.contains_key(X_FORWARDED_HOST) {
            if let Some(host) = host {
                headers.insert(X_FORWARDED_HOST, host);
            }
        }
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if let Some(host) = &self.host_header {
            headers.insert(header::HOST, host.clone());
        }

        let mut request = Request::builder()
            .method(parts.method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| ApiError::UpstreamUnavailable { detail: e.to_string() })?;
        *request.headers_mut() = headers;

        let sent = Instant::now();
        let answer =
            tokio::time::timeout(self.upstream.timeout.min(self.upstream.response_timeout), self.send(request)).await;
        let (response, sender) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(ApiError::UpstreamUnavailable { detail: e.detail() }),
            Err(_) => {
                return Err(ApiError::UpstreamTimeout {
                    detail: format!(
                        "no answer within {} ms",
                        self.upstream.timeout.min(self.upstream.response_timeout).as_millis()
                    ),
                })
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = PooledBody { body, sender: Some(sender), pool: self.pool.clone() };
        let body = Bounded {
            body,
            deadline: sent + self.upstream.response_timeout,
            sleep: None,
            limit: self.upstream.response_timeout,
        };
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// The model's answer took longer than `upstream.response_timeout_ms` in all: its body ends
/// with this error (a `504` for an answer still being buffered, a cut stream for one passed on).
#[derive(Debug)]
pub struct AnswerTimedOut {
    pub limit: Duration,
}

impl fmt::Display for AnswerTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the model's answer did not end within {} ms (upstream.response_timeout_ms)", self.limit.as_millis())
    }
}

impl std::error::Error for AnswerTimedOut {}

impl AnswerTimedOut {
    /// Whether `e` (or one of its causes) is an [`AnswerTimedOut`].
    pub fn is_cause_of(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(e);
        while let Some(e) = cause {
            if e.is::<AnswerTimedOut>() {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// The model's answer body, ending with [`AnswerTimedOut`] at `deadline`. The timer is made
/// only when the body first has to wait for the model: an answer that is there at once (most
/// are) costs a clock read per frame and no timer.
struct Bounded {
    body: PooledBody,
    deadline: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
}

impl HttpBody for Bounded {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let timed_out = |limit: Duration| {
            warn_every!(limit_ms = limit.as_millis(), "the model's answer was cut at upstream.response_timeout_ms");
            Poll::Ready(Some(Err(AnswerTimedOut { limit }.into())))
        };
        if Instant::now() >= self.deadline {
            return timed_out(self.limit);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = tokio::time::Instant::from_std(self.deadline);
                let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => timed_out(self.limit),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `start` + `path` (encoded again by [`encode_path`]) + the query.
fn target_uri(start: &str, path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
    let mut uri = String::with_capacity(start.len() + path.len() + query.map_or(0, |q| q.len() + 1) + 8);
    uri.push_str(start);
    encode_path_into(&mut uri, path);
    if let Some(query) = query {
        uri.push('?');
        uri.push_str(query);
    }
    // From the String itself: its bytes become the URI's, no copy.
    Uri::try_from(uri).map_err(|_| ApiError::BadRequest(BadRequest::InvalidTarget))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn paths_are_encoded_back_to_what_was_matched() {
        assert_eq!(encode_path("/v1/predict"), "/v1/predict");
        assert_eq!(encode_path("/v1/predict;x=1"), "/v1/predict%3Bx=1");
        assert_eq!(encode_path("/v1\\predict"), "/v1%5Cpredict");
        assert_eq!(encode_path("/a b/%70/?#"), "/a%20b/%2570/%3F%23");
        assert_eq!(encode_path("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(encode_path("/\u{1}\u{7f}\u{ff}"), "/%01%7F%C3%BF");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.30.40", "255.255.255.255", "1.0.100.9", "::1", "2001:db8::7"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_alone() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        let mut te = h.clone();
        te.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut te);
        assert_eq!(te, h);
    }

    fn client(origin: String) -> UpstreamClient {
        UpstreamClient::new(Upstream {
            origin,
            base_path: "/base".into(),
            timeout: std::time::Duration::from_secs(5),
            response_timeout: std::time::Duration::from_secs(5),
            concurrency: None,
            capacity: None,
        })
    }

    async fn get(client: &UpstreamClient, path: &str) -> Result<serde_json::Value, ApiError> {
        use http_body_util::BodyExt;
        let parts = Request::get(path).header("host", "gw.example").body(()).unwrap().into_parts().0;
        let answer = client.forward(parts, path, Bytes::new(), "203.0.113.9:1".parse().unwrap(), false).await?;
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        Ok(serde_json::from_slice(&body).unwrap())
    }

    /// Idle connections in the pool, once the last answer's connection is back.
    async fn idle_after_answer(client: &UpstreamClient) -> usize {
        for _ in 0..100 {
            let idle = client.pool.idle.lock().unwrap().len();
            if idle > 0 {
                return idle;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        0
    }

    #[tokio::test]
    async fn one_kept_alive_connection_serves_requests_one_after_another() {
        let origin = crate::test_support::echo_upstream().await;
        let port = origin.rsplit(':').next().unwrap().to_string();
        let client = client(origin);
        for i in 0..3 {
            let seen = get(&client, &format!("/v1/{i}")).await.unwrap();
            assert_eq!(seen["path"], format!("/base/v1/{i}"));
            assert_eq!(seen["headers"]["host"], format!("127.0.0.1:{port}"), "the model's own authority");
            assert_eq!(seen["headers"]["x-forwarded-host"], "gw.example");
            // A new connection per request would leave the earlier ones idle beside it.
            assert_eq!(idle_after_answer(&client).await, 1, "request {i}");
        }
    }

    #[tokio::test]
    async fn a_kept_alive_connection_the_model_closed_is_replaced() {
        use std::io::{Read, Write};
        // A model that answers one request per connection (keep-alive implied), then closes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for mut socket in listener.incoming().flatten() {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
            }
        });
        let upstream = client(origin);
        for _ in 0..3 {
            assert_eq!(get(&upstream, "/a").await.unwrap(), serde_json::json!({}));
            // Let the connection's task see the close.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let dead = client(crate::test_support::dead_upstream());
        assert!(matches!(get(&dead, "/c").await, Err(ApiError::UpstreamUnavailable { .. })));
    }

    #[tokio::test]
    async fn an_answer_that_stalls_is_cut_at_the_response_timeout() {
        use http_body_util::BodyExt;
        use std::io::{Read, Write};
        // A model that sends its headers and the start of a body, then nothing.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf);
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":");
            std::thread::sleep(std::time::Duration::from_secs(5));
        });
        let mut upstream = client(origin);
        upstream.upstream.response_timeout = Duration::from_millis(200);
        let parts = Request::get("/").body(()).unwrap().into_parts().0;
        let started = Instant::now();
        let answer = upstream.forward(parts, "/", Bytes::new(), "203.0.113.9:1".parse().unwrap(), false).await.unwrap();
        let error = answer.into_body().collect().await.unwrap_err();
        assert!(AnswerTimedOut::is_cause_of(&error), "{error}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[test]
    fn the_host_header_is_the_origin_s_authority_without_a_default_port() {
        let host = |origin: &str| client(origin.into()).host_header.map(|h| h.to_str().unwrap().to_string());
        assert_eq!(host("http://127.0.0.1:19000").as_deref(), Some("127.0.0.1:19000"));
        assert_eq!(host("http://model.internal").as_deref(), Some("model.internal"));
        assert_eq!(host("http://model.internal:80").as_deref(), Some("model.internal"));
        let v6 = client("http://[::1]:9000".into());
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9000));
        assert_eq!(v6.host_header.unwrap(), "[::1]:9000");
    }

    #[test]
    fn the_target_is_origin_base_path_encoded_path_and_query() {
        let upstream = |base: &str| {
            UpstreamClient::new(Upstream {
                origin: "http://127.0.0.1:19000".into(),
                base_path: base.into(),
                timeout: std::time::Duration::from_secs(1),
                response_timeout: std::time::Duration::from_secs(1),
                concurrency: None,
                capacity: None,
            })
        };
        let t = upstream("").target("/v1/predict", Some("a=1")).unwrap();
        assert_eq!(t.to_string(), "http://127.0.0.1:19000/v1/predict?a=1");
        let t = upstream("/m").target("/v1/x;y", None).unwrap();
        assert_eq!(t.port_u16(), Some(19000));
        assert_eq!(t.path(), "/m/v1/x%3By");
    }
}
