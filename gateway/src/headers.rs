//! The rate-limit headers sent with every response a policy applied to, from the module's
//! answer ([`CheckReply`]).
//!
//! - `RateLimit-Policy: "<policy>";q=<limit>;w=<window>` and `RateLimit: "<policy>";r=<remaining>;t=<seconds>`
//!   (IETF httpapi draft-10). `t` is the time until the quota is whole again; on a `429` it is
//!   the `Retry-After` value, so the two never disagree.
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds until the
//!   bucket is full again, rounded up), the form most clients already read.
//! - `q` and `X-RateLimit-Limit` are the policy's limit per window, while `r` and
//!   `X-RateLimit-Remaining` count out of the bucket (`burst`): with a burst above the limit,
//!   remaining can exceed the limit.
//! - On `429` only: `Retry-After` (seconds, rounded up, never earlier than the module's answer).

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use rl_protocol::CheckReply;

use crate::config::Policy;

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up: a client told to wait this long is never early.
pub fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// `Retry-After` in whole seconds for a refused request (at least 1), or `None` when the
/// module says the request can never be admitted.
pub fn retry_after_secs(decision: &CheckReply) -> Option<u64> {
    decision.retry_after_ms.map(|ms| ceil_secs(ms).max(1))
}

/// The headers for a decision of the module under `policy`.
pub fn rate_limit_headers(policy: &Policy, decision: &CheckReply) -> HeaderMap {
    let reset = ceil_secs(decision.reset_after_ms);
    let t = if decision.allowed { reset } else { retry_after_secs(decision).unwrap_or(reset) };
    // Policy names are checked at start to be letters, digits, '-', '_' and '.', so they
    // need no escaping inside the structured-field string.
    let values = [
        (RATELIMIT_POLICY, format!("\"{}\";q={};w={}", policy.name, policy.limit, policy.window)),
        (RATELIMIT, format!("\"{}\";r={};t={}", policy.name, decision.remaining, t)),
        (X_RATELIMIT_LIMIT, policy.limit.to_string()),
        (X_RATELIMIT_REMAINING, decision.remaining.to_string()),
        (X_RATELIMIT_RESET, reset.to_string()),
    ];
    let mut headers = HeaderMap::with_capacity(values.len());
    for (name, value) in values {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy { name: "default".into(), paths: vec!["/".into()], limit: 10, window: 60, burst: 10 }
    }

    #[test]
    fn allowed() {
        let d = CheckReply { allowed: true, remaining: 7, retry_after_ms: Some(0), reset_after_ms: 41_001, burst: 10 };
        let h = rate_limit_headers(&policy(), &d);
        assert_eq!(h[RATELIMIT_POLICY], "\"default\";q=10;w=60");
        assert_eq!(h[RATELIMIT], "\"default\";r=7;t=42");
        assert_eq!(h[X_RATELIMIT_LIMIT], "10");
        assert_eq!(h[X_RATELIMIT_REMAINING], "7");
        assert_eq!(h[X_RATELIMIT_RESET], "42");
    }

    #[test]
    fn refused() {
        let d =
            CheckReply { allowed: false, remaining: 0, retry_after_ms: Some(5_001), reset_after_ms: 59_999, burst: 10 };
        let h = rate_limit_headers(&policy(), &d);
        assert_eq!(h[RATELIMIT], "\"default\";r=0;t=6");
        assert_eq!(h[X_RATELIMIT_RESET], "60");
        assert_eq!(retry_after_secs(&d), Some(6));
        let tiny = CheckReply { retry_after_ms: Some(1), ..d };
        assert_eq!(retry_after_secs(&tiny), Some(1));
        let never = CheckReply { retry_after_ms: None, ..d };
        assert_eq!(retry_after_secs(&never), None);
    }
}
