//! Step 4: for a path a policy covers, who is asking: the API key found by the checks, else
//! the client IP (from `X-Forwarded-For` only behind a trusted proxy; a malformed one is a
//! `400`), hashed with the secret, and its tier (a key by its digest, see [`Tiers`]), which
//! picks the policy's limits for it. Hands the [`Caller`] on; uncovered paths get none.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;

use super::ApiKey;
use crate::config::{IdentitySettings, Policy, Tiers};
use crate::error::ApiError;
use crate::identity::{identify as identify_caller, Hasher, Identity, IpNet};
use crate::routing::Route;

/// Whose bucket a request is charged to, under which policy (as it applies to the caller's
/// tier).
#[derive(Clone, Debug)]
pub struct Caller {
    pub policy: Arc<Policy>,
    /// The caller's tier: its API key's in `[[tier]]`, else `[tiers] default`; `[tiers] ip`
    /// without a key.
    pub tier: String,
    /// `api_key` or `ip`, for logs (the value itself is never logged).
    pub kind: &'static str,
    /// The keyed hash of the identity, as it appears in the Redis key.
    pub identity_hash: String,
    /// The tier's `keep_percent` of `[upstream.capacity]` (0 when not set).
    pub keep_percent: u64,
}

pub struct Identify {
    trusted_proxies: Vec<IpNet>,
    ipv6_prefix: u8,
    hasher: Hasher,
}

impl Identify {
    pub fn new(settings: &IdentitySettings) -> Self {
        Identify {
            trusted_proxies: settings.trusted_proxies.clone(),
            ipv6_prefix: settings.ipv6_prefix,
            hasher: Hasher::new(&settings.secret.0),
        }
    }
}

pub async fn identify(
    State(identify): State<Arc<Identify>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(route): Extension<Route>,
    Extension(ApiKey(key)): Extension<ApiKey>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(policy) = route.policy {
        let identity = identify_caller(key, request.headers(), peer, &identify.trusted_proxies, identify.ipv6_prefix)?;
        let identity_hash = identify.hasher.hash(&identity);
        let tier = match identity {
            Identity::ApiKey(_) => route.tiers.of(Some(&identity_hash)),
            Identity::Ip(_) => route.tiers.of(None),
        };
        let policy = Tiers::policy_for(&policy, tier);
        let keep_percent = route.tiers.keep_percent(tier);
        let caller = Caller { policy, tier: tier.to_string(), kind: identity.kind(), identity_hash, keep_percent };
        request.extensions_mut().insert(caller);
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::middleware::from_fn_with_state;
    use axum::{Json, Router};
    use serde_json::json;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::pipeline::{checks, route, Checks};
    use crate::routing::{LiveRoutes, Routes};
    use crate::test_support::{json, request_from, settings};

    const CONFIG: &str = "[identity]\ntrusted_proxies = [\"10.0.0.0/8\"]\nipv6_prefix = 64\n\
        [[policy]]\nname = \"p\"\npaths = [\"/v1\"]\nlimit = 5\nwindow = 60\n";

    /// Checks, route and identify, in front of a handler that shows the caller it was handed.
    fn router() -> Router {
        let s = settings(CONFIG);
        let show = |caller: Option<Extension<Caller>>| async move {
            Json(match caller {
                Some(Extension(c)) => json!({"policy": c.policy.name, "kind": c.kind, "hash": c.identity_hash}),
                None => json!(null),
            })
        };
        Router::new().fallback(show).layer(
            ServiceBuilder::new()
                .layer(from_fn_with_state(Arc::new(Checks::new(&s)), checks::check_request))
                .layer(from_fn_with_state(Arc::new(LiveRoutes::new(Routes::from_settings(&s))), route::route))
                .layer(from_fn_with_state(Arc::new(Identify::new(&s.identity)), identify)),
        )
    }

    async fn caller(peer: &str, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        let response = router().oneshot(request_from(peer, "GET", path, headers, "")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        json(response).await
    }

    #[tokio::test]
    async fn the_key_else_the_client_ip_is_the_caller() {
        let keyed = caller("203.0.113.9:1", "/v1/x", &[("x-api-key", "k1")]).await;
        assert_eq!((keyed["policy"].as_str(), keyed["kind"].as_str()), (Some("p"), Some("api_key")));
        assert_eq!(keyed["hash"].as_str().unwrap().len(), 32);
        let same_key_elsewhere = caller("198.51.100.1:2", "/v1/y", &[("authorization", "Bearer k1")]).await;
        assert_eq!(keyed["hash"], same_key_elsewhere["hash"], "a key is one caller from anywhere");
        let by_ip = caller("203.0.113.9:1", "/v1/x", &[]).await;
        assert_eq!(by_ip["kind"], "ip");
        assert_ne!(by_ip["hash"], keyed["hash"]);
    }

    #[tokio::test]
    async fn forwarded_for_counts_only_from_a_trusted_proxy_and_ipv6_goes_by_network() {
        let xff = [("x-forwarded-for", "2001:db8:1:2::7")];
        let via_proxy = caller("10.1.1.1:1", "/v1/x", &xff).await;
        let same_network = caller("10.2.2.2:1", "/v1/x", &[("x-forwarded-for", "2001:db8:1:2:ffff::1")]).await;
        assert_eq!(via_proxy["hash"], same_network["hash"]);
        let direct = caller("203.0.113.9:1", "/v1/x", &xff).await;
        assert_eq!(direct["hash"], caller("203.0.113.9:2", "/v1/x", &[]).await["hash"], "ignored from others");
        assert_ne!(direct["hash"], via_proxy["hash"]);
    }

    #[tokio::test]
    async fn uncovered_paths_have_no_caller_and_are_not_identified() {
        // A malformed X-Forwarded-For from a trusted proxy matters only where a limit applies.
        let junk = [("x-forwarded-for", "not-an-ip")];
        assert_eq!(caller("10.1.1.1:1", "/other", &junk).await, json!(null));
        let refused = router().oneshot(request_from("10.1.1.1:1", "GET", "/v1/x", &junk, "")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json(refused).await["error"]["message"], "Malformed X-Forwarded-For header.");
    }
}
