//! Forwarding an admitted request to the model: same method, path, query, headers (minus
//! hop-by-hop ones) and body; the answer is streamed back as it arrives.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::http::{header, request, HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Upstream;
use crate::error::ApiError;

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Upstream,
}

impl UpstreamClient {
    pub fn new(upstream: Upstream) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(upstream.timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        UpstreamClient { client, upstream }
    }

    /// The upstream URI for a request URI: origin + base path + path + query.
    pub fn target(&self, uri: &Uri) -> Result<Uri, ApiError> {
        let path_and_query = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        format!("{}{}{}", self.upstream.origin, self.upstream.base_path, path_and_query)
            .parse()
            .map_err(|_| ApiError::BadRequest("The request target is not a valid path."))
    }

    pub async fn forward(
        &self,
        parts: request::Parts,
        body: Bytes,
        peer: SocketAddr,
    ) -> Result<Response<Body>, ApiError> {
        let uri = self.target(&parts.uri)?;
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        // The model sees its own authority in Host (the client sets it from the URI), the
        // original one in X-Forwarded-Host, and the hop that reached the gateway appended to
        // X-Forwarded-For. The body is re-framed, so its length is recomputed.
        if let Some(host) = headers.remove(header::HOST) {
            headers.insert("x-forwarded-host", host);
        }
        headers.remove(header::CONTENT_LENGTH);
        let peer_ip = peer.ip().to_string();
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {peer_ip}"),
            None => peer_ip,
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", value);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));

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

/// An error and its causes on one line (`client error (Connect): tcp connect error: Connection refused`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
}
