//! Taking a request's leases after its rate limits admitted it, in this order: the caller's
//! (`<prefix>{<hash>}:<policy>:concurrent`, the caller's Cluster slot), then the upstream's
//! (`<prefix>upstream:concurrent`, another slot, so a separate call), then one token of the
//! shared `[upstream.capacity]` bucket (`<prefix>upstream:capacity`, `KEEP` the tier's
//! `keep_percent` of its burst). A refusal drops the leases already taken (each released
//! once, in the background); the caller gives back the rate-limit tokens
//! ([`crate::pipeline::limit`]). The capacity token comes last, so nothing after it can refuse.

use axum::http::{HeaderMap, HeaderValue};
use rl_protocol::{AcquireReply, CheckReply};

use super::{hold_times, Concurrency, Lease, Slot, CONCURRENT_NAME};
use crate::config::{Policy, Quota};
use crate::error::{ApiError, LimitSize, RefusedLimit};
use crate::headers::{ceil_secs, RATELIMIT, RATELIMIT_POLICY};
use crate::limiter::{LimiterError, RateLimiter};

/// Why a request got no leases.
#[derive(Debug)]
pub enum Refusal {
    /// The caller's `max_concurrent` are in flight: `429`.
    Caller(AcquireReply),
    /// `[upstream] max_concurrent` are in flight: `503`.
    Upstream(AcquireReply),
    /// `[upstream.capacity]` is too low for the caller's tier (its `keep` share must remain): `503`.
    Capacity { reply: CheckReply, quota: Quota },
    /// Redis failed: `failure_mode` decides.
    Unavailable(LimiterError),
}

impl Refusal {
    /// Redis answered, but the module refused the command: never answered as an outage.
    pub fn is_module_error(&self) -> bool {
        matches!(self, Refusal::Unavailable(e) if !e.is_outage())
    }
}

/// What `[upstream]` asks of every request: a lease, a capacity token, both or neither.
#[derive(Clone, Debug, Default)]
pub struct UpstreamLimits {
    pub concurrency: Option<Concurrency>,
    pub capacity: Option<Quota>,
}

/// The leases `policy` and `upstream` ask for (none, one or two) and the capacity token, or
/// why not. `keep_percent` is the caller's tier's share of the capacity burst to leave.
pub async fn take_leases<L: RateLimiter>(
    limiter: &L,
    policy: &Policy,
    identity_hash: &str,
    upstream: &UpstreamLimits,
    keep_percent: u64,
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
    if let Some(concurrency) = upstream.concurrency {
        // On refusal `leases` is dropped here, which releases the caller's lease.
        match Lease::acquire(limiter, Slot::Upstream, concurrency).await {
            Ok(Ok(lease)) => leases.push(lease),
            Ok(Err(reply)) => return Err(Refusal::Upstream(reply)),
            Err(e) => return Err(Refusal::Unavailable(e)),
        }
    }
    if let Some(quota) = &upstream.capacity {
        let keep = keep_percent.min(100).saturating_mul(quota.burst) / 100;
        match limiter.check_shared(quota, 1, keep).await {
            Ok(reply) if reply.allowed => {}
            Ok(reply) => return Err(Refusal::Capacity { reply, quota: quota.clone() }),
            Err(e) => return Err(Refusal::Unavailable(e)),
        }
    }
    Ok(leases)
}

/// The answer to a refusal by a full lease set (`None` for [`Refusal::Unavailable`]), with the
/// IETF items of the concurrency limit (`qu="concurrent-requests"`) added to `RateLimit-Policy`
/// and `RateLimit`. Its `Retry-After` is when a slot is likely to free, from the hold times
/// this gateway has seen (see [`super::HoldTimes`]), never later than the module's bound.
pub fn refusal_answer(policy: &Policy, refusal: &Refusal) -> Option<(ApiError, HeaderMap)> {
    let (reply, item, limit_policy, slot) = match refusal {
        Refusal::Caller(reply) => {
            // The hold times are per policy: the caller's hash plays no part in the hint.
            let slot = Slot::Caller { policy: policy.name.clone(), identity_hash: String::new() };
            (reply, format!("{}-{CONCURRENT_NAME}", policy.name), policy.name.clone(), slot)
        }
        Refusal::Upstream(reply) => {
            (reply, format!("upstream-{CONCURRENT_NAME}"), "upstream".to_string(), Slot::Upstream)
        }
        Refusal::Capacity { reply, quota } => return Some(capacity_answer(reply, quota)),
        Refusal::Unavailable(_) => return None,
    };
    let retry_after_ms = hold_times().retry_after_ms(&slot, reply.max, reply.retry_after_ms);
    let retry_after_secs = ceil_secs(retry_after_ms).max(1);
    let limit = RefusedLimit {
        policy: limit_policy,
        name: CONCURRENT_NAME.into(),
        unit: "concurrent_requests",
        retry_after_ms: Some(retry_after_ms),
        size: LimitSize::Concurrent { max: reply.max },
    };
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

/// `503 upstream_busy` for a capacity refusal, with the bucket's IETF items. A tier whose
/// `keep` share alone exceeds the burst never passes: Retry-After is then the whole window.
fn capacity_answer(reply: &CheckReply, quota: &Quota) -> (ApiError, HeaderMap) {
    let retry_after_ms = reply.retry_after_ms;
    let retry_after_secs = ceil_secs(retry_after_ms.unwrap_or(quota.window.saturating_mul(1000))).max(1);
    let limit = quota.refused("upstream", retry_after_ms);
    let mut headers = HeaderMap::new();
    let items = [
        (RATELIMIT_POLICY, format!("\"upstream-{}\";q={};w={}", quota.name, quota.limit, quota.window)),
        (RATELIMIT, format!("\"upstream-{}\";r={};t={retry_after_secs}", quota.name, reply.remaining)),
    ];
    for (name, value) in items {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    (ApiError::UpstreamBusy { retry_after_secs, limit }, headers)
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
