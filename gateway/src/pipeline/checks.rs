//! Step 2: what is wrong with a request whatever its path, refused before any quota is spent:
//! a target that is not a path (`400`), two `Host` headers (`400`), two different API keys or a `Connection` header
//! naming a key header (`400`), no key when one is required (`401`), a declared
//! `Content-Length` over `max_body_bytes` (`413`). Hands the request's [`ApiKey`] on.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Uri, Version};
use axum::middleware::Next;
use axum::response::Response;

use crate::config::Settings;
use crate::error::{ApiError, BadRequest};
use crate::identity::api_key;

/// The API key the request carries (`None`: it carries none), for [`super::identify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey(pub Option<Vec<u8>>);

pub struct Checks {
    api_key_headers: Vec<String>,
    require_api_key: bool,
    max_body_bytes: u64,
}

impl Checks {
    pub fn new(settings: &Settings) -> Self {
        Checks {
            api_key_headers: settings.identity.api_key_headers.clone(),
            require_api_key: settings.identity.require_api_key,
            max_body_bytes: settings.max_body_bytes,
        }
    }

    /// The request's API key, or why the request is refused.
    pub fn check(&self, uri: &Uri, version: Version, headers: &HeaderMap) -> Result<ApiKey, ApiError> {
        target_is_path(uri)?;
        host_is_one_authority(version, headers)?;
        let key = api_key(headers, &self.api_key_headers)?;
        if key.is_none() && self.require_api_key {
            return Err(ApiError::Unauthorized);
        }
        if headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING) {
            return Err(BadRequest::LengthAndTransferEncoding.into());
        }
        if declared_length(headers)?.is_some_and(|len| len > self.max_body_bytes) {
            return Err(ApiError::PayloadTooLarge { limit: self.max_body_bytes });
        }
        Ok(ApiKey(key))
    }
}

pub async fn check_request(
    State(checks): State<Arc<Checks>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = checks.check(request.uri(), request.version(), request.headers())?;
    request.extensions_mut().insert(key);
    Ok(next.run(request).await)
}

/// `OPTIONS *`, `CONNECT host:port`: nothing to forward to the model.
fn target_is_path(uri: &Uri) -> Result<(), BadRequest> {
    match uri.path().starts_with('/') {
        true => Ok(()),
        false => Err(BadRequest::NotAPath),
    }
}

/// RFC 9112 section 3.2: an HTTP/1.1 request has exactly one `Host`, and its value is a host
/// and an optional port (empty is allowed); anything else gets `400`. (Several, or a list,
/// would let the gateway and the model read different hosts.)
fn host_is_one_authority(version: Version, headers: &HeaderMap) -> Result<(), BadRequest> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(BadRequest::DuplicateHost),
        (None, _) if version == Version::HTTP_11 => return Err(BadRequest::BadHost),
        (None, _) => return Ok(()),
        (Some(host), None) => host.as_bytes(),
    };
    let authority = host.is_empty()
        || (!host.contains(&b'@') && std::str::from_utf8(host).is_ok_and(|h| h.parse::<Authority>().is_ok()));
    match authority {
        true => Ok(()),
        false => Err(BadRequest::BadHost),
    }
}

/// The `Content-Length` the client declared, if any.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, BadRequest> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(value) => {
            value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).map(Some).ok_or(BadRequest::ContentLength)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::BadIdentity;
    use crate::test_support::{headers, settings};

    fn checks(extra: &str) -> Checks {
        Checks::new(&settings(&format!("max_body_bytes = 10\n{extra}")))
    }

    fn check(checks: &Checks, uri: &str, pairs: &[(&'static str, &str)]) -> Result<ApiKey, ApiError> {
        let mut with_host = headers(pairs);
        if !with_host.contains_key("host") {
            with_host.insert("host", "gw.example".parse().unwrap());
        }
        checks.check(&uri.parse().unwrap(), Version::HTTP_11, &with_host)
    }

    #[test]
    fn the_target_must_be_a_path() {
        let c = checks("");
        assert!(matches!(check(&c, "*", &[]), Err(ApiError::BadRequest(BadRequest::NotAPath))));
        assert!(matches!(check(&c, "127.0.0.1:80", &[]), Err(ApiError::BadRequest(BadRequest::NotAPath))));
        assert_eq!(check(&c, "/v1/x?q=1", &[]).unwrap(), ApiKey(None));
    }

    #[test]
    fn the_key_headers_are_read_once_and_must_agree() {
        let c = checks("");
        assert_eq!(check(&c, "/", &[("authorization", "Bearer k")]).unwrap(), ApiKey(Some(b"k".to_vec())));
        let two = check(&c, "/", &[("authorization", "Bearer a"), ("x-api-key", "b")]);
        assert!(matches!(two, Err(ApiError::BadRequest(BadRequest::Identity(BadIdentity::ConflictingKeys)))));
        let hop = check(&c, "/", &[("x-api-key", "a"), ("connection", "x-api-key")]);
        assert!(matches!(hop, Err(ApiError::BadRequest(BadRequest::Identity(BadIdentity::KeyHeaderIsHopByHop)))));
    }

    #[test]
    fn an_http_1_1_request_needs_one_host_naming_a_host() {
        let c = checks("");
        let two = check(&c, "/", &[("host", "a.example"), ("host", "b.example")]);
        assert!(matches!(two, Err(ApiError::BadRequest(BadRequest::DuplicateHost))));
        for fine in ["a.example", "a.example:8080", "127.0.0.1:1", "[::1]:80", ""] {
            assert!(check(&c, "/", &[("host", fine)]).is_ok(), "{fine:?}");
        }
        for bad in ["a.example, b.example", "a b", "user@a.example", "a.example/x"] {
            assert!(
                matches!(check(&c, "/", &[("host", bad)]), Err(ApiError::BadRequest(BadRequest::BadHost))),
                "{bad}"
            );
        }
        let none = c.check(&"/".parse().unwrap(), Version::HTTP_11, &HeaderMap::new());
        assert!(matches!(none, Err(ApiError::BadRequest(BadRequest::BadHost))));
        assert!(c.check(&"/".parse().unwrap(), Version::HTTP_10, &HeaderMap::new()).is_ok(), "HTTP/1.0 needs none");
    }

    #[test]
    fn a_key_is_required_only_when_configured() {
        let required = checks("[identity]\nrequire_api_key = true\n");
        assert!(matches!(check(&required, "/", &[]), Err(ApiError::Unauthorized)));
        assert!(check(&required, "/", &[("x-api-key", "k")]).is_ok());
        assert!(check(&checks(""), "/", &[]).is_ok());
    }

    #[test]
    fn a_length_with_a_transfer_encoding_is_refused() {
        let c = checks("");
        let both = check(&c, "/", &[("host", "x"), ("content-length", "4"), ("transfer-encoding", "chunked")]);
        assert!(matches!(both, Err(ApiError::BadRequest(BadRequest::LengthAndTransferEncoding))));
        assert!(check(&c, "/", &[("host", "x"), ("transfer-encoding", "chunked")]).is_ok());
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused() {
        let c = checks("");
        assert!(check(&c, "/", &[("content-length", "10")]).is_ok());
        assert!(matches!(check(&c, "/", &[("content-length", "11")]), Err(ApiError::PayloadTooLarge { limit: 10 })));
        let bad = check(&c, "/", &[("content-length", "ten")]);
        assert!(matches!(bad, Err(ApiError::BadRequest(BadRequest::ContentLength))));
    }
}
