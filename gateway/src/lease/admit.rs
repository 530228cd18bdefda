//! Taking a request's leases after its rate limits admitted it, in this order: the caller's
//! (`<prefix>{<hash>}:<policy>:concurrent`, the caller's Cluster slot), then the upstream's
//! (`<prefix>upstream:concurrent`, another slot, so a separate call). A refusal drops the
//! leases already taken (each released once, in the background); the caller gives back the
//! rate-limit tokens ([`crate::pipeline::limit`]).

use axum::http::{HeaderMap, HeaderValue};
use rl_protocol::AcquireReply;

use super::{Concurrency, Lease, Slot, CONCURRENT_NAME};
use crate::config::Policy;
use crate::error::{ApiError, RefusedLimit};
use crate::headers::{ceil_secs, RATELIMIT, RATELIMIT_POLICY};
use crate::limiter::{LimiterError, RateLimiter};

/// Why a request got no leases.
#[derive(Debug)]
pub enum Refusal {
    /// The caller's `max_concurrent` are in flight: `429`.
    Caller(AcquireReply),
    /// `[upstream] max_concurrent` are in flight: `503`.
    Upstream(AcquireReply),
    /// Redis failed: `failure_mode` decides.
    Unavailable(LimiterError),
}

/// The leases `policy` and `upstream` ask for (none, one or two), or why not.
pub async fn take_leases<L: RateLimiter>(
    limiter: &L,
    policy: &Policy,
    identity_hash: &str,
    upstream: Option<Concurrency>,
) -> Result<Vec<Lease<L>>, Refusal> {
    let mut leases = Vec::with_capacity(2);
    if let Some(concurrency) = policy.concurrency {
        let slot = Slot::Caller { policy: policy.name.clone(), identity_hash: identity_hash.to_string() };
        match Lease::acquire(limiter, slot, concurrency).await {
            Ok(Ok(lease)) => leases.push(lease),
            Ok(Err(reply)) => return Err(Refusal::Caller(reply)),
            Err(e) => return Err(Refusal::Unavailable(e)),
        }
    }
    if let Some(concurrency) = upstream {
        // On refusal `leases` is dropped here, which releases the caller's lease.
        match Lease::acquire(limiter, Slot::Upstream, concurrency).await {
            Ok(Ok(lease)) => leases.push(lease),
            Ok(Err(reply)) => return Err(Refusal::Upstream(reply)),
            Err(e) => return Err(Refusal::Unavailable(e)),
        }
    }
    Ok(leases)
}

/// The answer to a refusal by a full lease set (`None` for [`Refusal::Unavailable`]), with the
/// IETF items of the concurrency limit (`qu="concurrent-requests"`) added to `RateLimit-Policy`
/// and `RateLimit`.
pub fn refusal_answer(policy: &Policy, refusal: &Refusal) -> Option<(ApiError, HeaderMap)> {
    let (reply, item, limit_policy) = match refusal {
        Refusal::Caller(reply) => (reply, format!("{}-{CONCURRENT_NAME}", policy.name), policy.name.clone()),
        Refusal::Upstream(reply) => (reply, format!("upstream-{CONCURRENT_NAME}"), "upstream".to_string()),
        Refusal::Unavailable(_) => return None,
    };
    let retry_after_secs = ceil_secs(reply.retry_after_ms).max(1);
    let limit =
        RefusedLimit { policy: limit_policy, name: CONCURRENT_NAME.into(), retry_after_ms: Some(reply.retry_after_ms) };
    let error = match refusal {
        Refusal::Caller(_) => ApiError::ConcurrencyLimited { retry_after_secs, limit },
        _ => ApiError::UpstreamBusy { retry_after_secs, limit },
    };
    let mut headers = HeaderMap::new();
    let items = [
        (RATELIMIT_POLICY, format!("\"{item}\";q={};qu=\"concurrent-requests\"", reply.max)),
        (RATELIMIT, format!("\"{item}\";r={};t={retry_after_secs}", reply.max.saturating_sub(reply.in_flight))),
    ];
    for (name, value) in items {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    Some((error, headers))
}

/// Adds `extra`'s items to the same fields of `headers` (one list per field, comma-separated).
pub fn append_items(headers: &mut HeaderMap, extra: HeaderMap) {
    for (name, value) in extra {
        let Some(name) = name else { continue };
        let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
            Some(existing) => {
                HeaderValue::from_str(&format!("{existing}, {}", value.to_str().unwrap_or_default())).ok()
            }
            None => Some(value),
        };
        if let Some(joined) = joined {
            headers.insert(name, joined);
        }
    }
}
