//! The rate-limit headers sent with every response a policy applied to, from the module's
//! answer ([`CheckAllReply`], one row per limit of the policy).
//!
//! - `RateLimit-Policy` and `RateLimit` (IETF httpapi draft-10) list every limit of the
//!   policy, each as an item named by [`Policy::item_name`] (the policy's name when it has one
//!   limit, else `<policy>-<limit>`): `"chat-requests";q=60;w=60, "chat-tokens";q=100000;w=60;qu="tokens"`
//!   and `"chat-requests";r=59;t=1, "chat-tokens";r=98800;t=1`. `t` is the time until that
//!   quota is whole again; on a `429`, for a limit that refused, it is its wait.
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds until the
//!   bucket is full again, rounded up) for the policy's request limit ([`Policy::primary`]).
//! - `q` and `X-RateLimit-Limit` are a limit per window, while `r` and
//!   `X-RateLimit-Remaining` count out of the bucket (`burst`): with a burst above the limit,
//!   remaining can exceed the limit.
//! - On `429` only: `Retry-After`, the longest wait of the limits that refused (seconds,
//!   rounded up, never earlier than the module's answer).

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use rl_protocol::{CheckAllReply, CheckReply};

use crate::config::{Policy, Unit};

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A duration as OpenAI (and Go's `time.Duration`) writes it: `20ms`, `1s`, `1.5s`, `6m0s`,
/// `1h2m3s`; `0s` for zero.
pub fn go_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let secs = match frac {
        0 => format!("{s}s"),
        f => format!("{s}.{}s", format!("{f:03}").trim_end_matches('0')),
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// On LLM routes, OpenAI's headers: `x-ratelimit-{limit,remaining,reset}-requests` for the
/// first limit counted in requests and `...-tokens` for the first counted in tokens (resets
/// as durations, [`go_duration`]).
pub fn openai_headers(policy: &Policy, decision: &CheckAllReply) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (unit, suffix) in [(Unit::Requests, "requests"), (Unit::Tokens, "tokens")] {
        let Some(index) = policy.limits.iter().position(|q| q.unit == unit) else { continue };
        let (Some(quota), Some(row)) = (policy.limits.get(index), decision.limits.get(index)) else { continue };
        for (what, value) in [
            ("limit", quota.limit.to_string()),
            ("remaining", row.remaining.to_string()),
            ("reset", go_duration(row.reset_after_ms)),
        ] {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(format!("x-ratelimit-{what}-{suffix}").as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
    }
    headers
}

/// Whole seconds, rounded up: a client told to wait this long is never early.
pub fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// `Retry-After` in whole seconds for a refused request (at least 1), or `None` when the
/// module says the request can never be admitted.
pub fn retry_after_secs(decision: &CheckAllReply) -> Option<u64> {
    decision.retry_after_ms.map(|ms| ceil_secs(ms).max(1))
}

/// `t` of one limit: its wait when it refused the request, else the time until it is full.
fn t_secs(request_allowed: bool, row: &CheckReply) -> u64 {
    let reset = ceil_secs(row.reset_after_ms);
    match (request_allowed || row.allowed, row.retry_after_ms) {
        (false, Some(ms)) => ceil_secs(ms).max(1),
        _ => reset,
    }
}

/// The headers for a decision of the module under `policy`.
pub fn rate_limit_headers(policy: &Policy, decision: &CheckAllReply) -> HeaderMap {
    // Every answer under a policy carries these: each value is written straight into one
    // buffer (no `format!` per item, no join), which the profile showed as a tenth of a
    // limited request's instructions.
    let mut items_policy = String::with_capacity(32 * policy.limits.len());
    let mut items = String::with_capacity(24 * policy.limits.len());
    // Names are checked at start to be letters, digits, '-', '_' and '.', so they need no
    // escaping inside the structured-field string.
    for (i, (quota, row)) in policy.limits.iter().zip(&decision.limits).enumerate() {
        if i > 0 {
            items_policy.push_str(", ");
            items.push_str(", ");
        }
        let name = policy.item_name(quota);
        items_policy.push('"');
        items_policy.push_str(&name);
        items_policy.push_str("\";q=");
        push_u64(&mut items_policy, quota.limit);
        items_policy.push_str(";w=");
        push_u64(&mut items_policy, quota.window);
        if quota.unit == Unit::Tokens {
            items_policy.push_str(";qu=\"tokens\"");
        }
        items.push('"');
        items.push_str(&name);
        items.push_str("\";r=");
        push_u64(&mut items, row.remaining);
        items.push_str(";t=");
        push_u64(&mut items, t_secs(decision.allowed, row));
    }
    let mut headers = HeaderMap::with_capacity(5);
    for (name, value) in [(RATELIMIT_POLICY, items_policy), (RATELIMIT, items)] {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    let primary = policy.primary();
    if let (Some(quota), Some(row)) = (policy.limits.get(primary), decision.limits.get(primary)) {
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(quota.limit));
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(row.remaining));
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from(ceil_secs(row.reset_after_ms)));
    }
    headers
}

/// Appends the decimal digits of `n`.
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        start -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in digits.get(start..).unwrap_or_default() {
        out.push(char::from(digit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::simple("default", &["/"], 10, 60, 10)
    }

    fn one(row: CheckReply) -> CheckAllReply {
        CheckAllReply { allowed: row.allowed, retry_after_ms: row.retry_after_ms, limits: vec![row] }
    }

    #[test]
    fn allowed() {
        let d = CheckReply { allowed: true, remaining: 7, retry_after_ms: Some(0), reset_after_ms: 41_001, burst: 10 };
        let h = rate_limit_headers(&policy(), &one(d));
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
        let h = rate_limit_headers(&policy(), &one(d));
        assert_eq!(h[RATELIMIT], "\"default\";r=0;t=6");
        assert_eq!(h[X_RATELIMIT_RESET], "60");
        assert_eq!(retry_after_secs(&one(d)), Some(6));
        let tiny = CheckReply { retry_after_ms: Some(1), ..d };
        assert_eq!(retry_after_secs(&one(tiny)), Some(1));
        let never = CheckReply { retry_after_ms: None, ..d };
        assert_eq!(retry_after_secs(&one(never)), None);
    }

    #[test]
    fn every_limit_is_listed_and_the_request_limit_is_the_x_header() {
        let mut policy = Policy::simple("chat", &["/"], 60, 60, 60);
        policy.limits.insert(
            0,
            crate::config::Quota { name: "tokens".into(), unit: Unit::Tokens, limit: 1000, window: 60, burst: 1000 },
        );
        let tokens = CheckReply {
            allowed: false,
            remaining: 10,
            retry_after_ms: Some(2_500),
            reset_after_ms: 59_000,
            burst: 1000,
        };
        let requests =
            CheckReply { allowed: true, remaining: 59, retry_after_ms: Some(0), reset_after_ms: 1_000, burst: 60 };
        let d = CheckAllReply { allowed: false, retry_after_ms: Some(2_500), limits: vec![tokens, requests] };
        let h = rate_limit_headers(&policy, &d);
        assert_eq!(h[RATELIMIT_POLICY], "\"chat-tokens\";q=1000;w=60;qu=\"tokens\", \"chat-requests\";q=60;w=60");
        assert_eq!(h[RATELIMIT], "\"chat-tokens\";r=10;t=3, \"chat-requests\";r=59;t=1");
        assert_eq!(
            (&h[X_RATELIMIT_LIMIT], &h[X_RATELIMIT_REMAINING], &h[X_RATELIMIT_RESET]),
            (
                &"60".parse::<HeaderValue>().unwrap(),
                &"59".parse::<HeaderValue>().unwrap(),
                &"1".parse::<HeaderValue>().unwrap()
            )
        );
        assert_eq!(retry_after_secs(&d), Some(3));
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 59, 1_000_000_000, u64::MAX] {
            let mut out = String::from("x");
            push_u64(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }

    #[test]
    fn durations_read_like_openai_s() {
        let cases = [(0, "0s"), (20, "20ms"), (1000, "1s"), (1500, "1.5s"), (1_020, "1.02s"), (360_000, "6m0s")];
        for (ms, text) in cases.into_iter().chain([(61_500, "1m1.5s"), (3_723_000, "1h2m3s"), (3_600_000, "1h0m0s")]) {
            assert_eq!(go_duration(ms), text, "{ms}");
        }
    }
}
