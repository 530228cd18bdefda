//! The HTTP client to the model: it sends a request on with the same method, query, headers
//! (minus hop-by-hop ones, forwarding headers trusted or rewritten) and body, and the
//! normalized path the policy was chosen on; the answer is streamed back as it arrives.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use axum::body::{Body, Bytes};
use axum::http::{header, request, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Upstream;
use crate::error::{error_chain, ApiError, BadRequest};

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

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Upstream,
    /// `origin` + `base_path`, what every target starts with.
    prefix: String,
}

impl UpstreamClient {
    pub fn new(upstream: Upstream) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(upstream.timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let prefix = format!("{}{}", upstream.origin, upstream.base_path);
        UpstreamClient { client, upstream, prefix }
    }

    /// The upstream URI: origin + base path + `path` (a normalized, decoded path, see
    /// [`crate::routing::normalize_path`], encoded again by [`encode_path`]) + the original query.
    pub fn target(&self, path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
        let mut uri = String::with_capacity(self.prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1) + 8);
        uri.push_str(&self.prefix);
        encode_path_into(&mut uri, path);
        if let Some(query) = query {
            uri.push('?');
            uri.push_str(query);
        }
        // From the String itself: its bytes become the URI's, no copy.
        Uri::try_from(uri).map_err(|_| ApiError::BadRequest(BadRequest::InvalidTarget))
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
        let uri = self.target(path, parts.uri.query())?;
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // The model sees its own authority in Host (the client sets it from the URI). From a
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

        let mut request = Request::builder()
            .method(parts.method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| ApiError::UpstreamUnavailable { detail: e.to_string() })?;
        *request.headers_mut() = headers;

        let answer = tokio::time::timeout(self.upstream.timeout, self.client.request(request)).await;
        let response = match answer {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(ApiError::UpstreamUnavailable { detail: error_chain(&e) }),
            Err(_) => {
                return Err(ApiError::UpstreamTimeout {
                    detail: format!("no answer within {} ms", self.upstream.timeout.as_millis()),
                })
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
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

    #[test]
    fn the_target_is_origin_base_path_encoded_path_and_query() {
        let upstream = |base: &str| {
            UpstreamClient::new(Upstream {
                origin: "http://127.0.0.1:19000".into(),
                base_path: base.into(),
                timeout: std::time::Duration::from_secs(1),
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
