//! Step 5: one atomic check of all the limits of the [`Caller`]'s policy: all charged, or
//! none. Each request costs 1 on a limit counted in requests; on an LLM policy
//! (`kind = "openai"`) the body is read first and its token estimate ([`crate::llm`]) is the
//! cost on each limit counted in tokens (a body that is not the expected JSON gets `400
//! invalid_request_error` and costs nothing). Refused: `429` with `Retry-After` and the
//! refusing limits in the body. Admitted: on to the proxy, and on an LLM policy the answer's
//! usage settles the reservation ([`crate::llm::settle`]; a streamed answer when it ends,
//! [`crate::llm::stream`]). Either way the rate-limit headers go
//! on the answer (also on a later `408`, `413` or `502`: the request is spent). When the
//! limiter fails, `failure_mode` decides: `503`, or forward unmetered (without headers) and log
//! a warning. A request without a caller (no policy covers its path) passes untouched.
//!
//! After the rate limits admit, the request's concurrency leases ([`crate::lease`]): the
//! caller's (`max_concurrent` of its policy or tier), then the upstream's (`[upstream]
//! max_concurrent`). A full one gives back every token just charged (`RL.REFUND`, the amounts
//! charged) and answers `429` (the caller's) or `503` (the upstream's) with `Retry-After`;
//! held leases live in the response body until it ends or is dropped.
//!
//! The check itself, its deny cache and the refunds are the transport-neutral part the Envoy
//! rate limit service shares ([`crate::admission`]); what is HTTP's is here: the body read
//! for an estimate, the answers and headers, `failure_mode`, shadow policies, the leases.
//!
//! Before asking Redis, the local deny cache ([`crate::deny_cache`]): a caller Redis refused
//! a moment ago (on request limits) gets the same `429` again, aged, without a call. A
//! shadow policy (`shadow = true`) goes through all of this and counts what it would refuse
//! (`outcome="shadow_limited"`), but forwards every request, as sent, and adds no rate-limit
//! headers; a failing limiter never refuses its requests either. Every request under a policy
//! is counted once in `gateway_requests_total` by outcome ([`crate::metrics`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::proxy::read_body;
use super::Caller;
use rl_protocol::CheckAllReply;

use crate::admission::Admission;
use crate::config::{FailureMode, Policy, Settings, Unit};
use crate::error::ApiError;
use crate::headers::{openai_headers, rate_limit_headers, retry_after_secs};
use crate::lease::{
    append_items, refusal_answer, take_leases, Lease, LeasedBody, Refusal, UpstreamLimits, CONCURRENT_NAME,
};
use crate::limiter::RateLimiter;
use crate::llm::{read_off_the_workers, Settlement};
use crate::log_limit::{error_every, warn_every};
use crate::metrics::{metrics, Outcome};

pub struct Limit<L> {
    admission: Admission<L>,
    failure_mode: FailureMode,
    /// For reading an LLM route's body before the check.
    max_body_bytes: u64,
    body_timeout: Duration,
    /// `[upstream] max_concurrent` and `[upstream.capacity]`, asked of every request.
    upstream: UpstreamLimits,
}

impl<L: RateLimiter> Limit<L> {
    pub fn new(limiter: L, settings: &Settings) -> Self {
        Limit {
            admission: Admission::new(limiter, settings.deny_cache),
            failure_mode: settings.redis.failure_mode,
            max_body_bytes: settings.max_body_bytes,
            body_timeout: settings.client_body_timeout,
            upstream: UpstreamLimits {
                concurrency: settings.upstream.concurrency,
                capacity: settings.upstream.capacity.clone(),
            },
        }
    }
}

/// On a response, for the access log ([`super::access_log`]): whose request it was, and what
/// refused it (the limits' names, or why the limiter could not decide).
#[derive(Clone, Debug)]
pub struct Decided {
    pub caller: Caller,
    pub refused_by: Option<String>,
}

/// What refused a request, set on its answer by the step that refused it.
#[derive(Clone, Debug)]
struct RefusedBy(String);

pub async fn limit<L: RateLimiter>(
    State(limit): State<Arc<Limit<L>>>,
    caller: Option<Extension<Caller>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(Extension(caller)) = caller else { return next.run(request).await };
    let mut response = decide(&limit, &caller, request, next).await;
    let refused_by = response.extensions_mut().remove::<RefusedBy>().map(|RefusedBy(why)| why);
    response.extensions_mut().insert(Decided { caller, refused_by });
    response
}

/// `response`, noted as refused by `why`.
fn noted_refused(mut response: Response, why: impl Into<String>) -> Response {
    response.extensions_mut().insert(RefusedBy(why.into()));
    response
}

async fn decide<L: RateLimiter>(limit: &Limit<L>, caller: &Caller, request: Request, next: Next) -> Response {
    let policy = &caller.policy;
    let m = metrics();
    // What a shadow policy (or a failing limiter in "open" mode) forwards unmetered: the
    // request as the client sent it, since nothing is reserved to settle.
    let mut unmetered_body: Option<Bytes> = None;
    // An LLM route: the body (bounded, with a timeout), its estimate, and the body put back.
    let (request, tokens) = match &policy.llm {
        None => (request, None),
        Some(llm) => {
            let (mut parts, body) = request.into_parts();
            // The answer's usage is read from its bytes: a compressed answer would keep every
            // reservation, and charge nothing beyond it.
            parts.headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            let body = match read_body(body, limit.max_body_bytes, limit.body_timeout).await {
                Ok(body) => body,
                Err(e) => return e.into_response(),
            };
            let read = match read_off_the_workers(body.clone(), *llm).await {
                Ok(read) => read,
                Err(why) => return ApiError::InvalidLlmRequest(why).into_response(),
            };
            tracing::debug!(estimate = ?read.estimate, "estimated");
            // A streamed request also asks the model for its usage (see crate::llm::stream).
            let strip = read.asking_for_usage.is_some();
            let sent = read.asking_for_usage.unwrap_or_else(|| body.clone());
            // Kept only where a request may be forwarded unmetered: a streamed body the usage
            // option was spliced into would otherwise stay in memory twice until it ends.
            if policy.shadow || limit.failure_mode == FailureMode::Open {
                unmetered_body = Some(body);
            }
            (Request::from_parts(parts, Body::from(sent)), Some((read.estimate.reserved(), strip)))
        }
    };
    let unmetered = move |request: Request| match unmetered_body {
        None => request,
        Some(body) => Request::from_parts(request.into_parts().0, Body::from(body)),
    };
    let costs: Vec<u64> = policy
        .limits
        .iter()
        .map(|q| match q.unit {
            Unit::Requests => 1,
            Unit::Tokens => tokens.map_or(0, |(reserved, _)| reserved),
        })
        .collect();
    let mut decision = match limit.admission.check(policy, &caller.identity_hash, &caller.identity_hash, &costs).await {
        Ok(decision) => decision,
        // Redis answered: nothing to fail open on (a client must not get past its limits
        // by making the module refuse the command).
        Err(e) if !e.is_outage() => {
            m.request(&policy.name, Outcome::ModuleError);
            if policy.shadow {
                error_every!(error = %e, policy = %policy.name, "the ratelimit module refused the command; shadow policy, forwarding");
                return next.run(unmetered(request)).await;
            }
            return noted_refused(ApiError::LimiterRejected { detail: e.to_string() }.into_response(), "module_error");
        }
        Err(e) if policy.shadow || limit.failure_mode == FailureMode::Open => {
            m.request(&policy.name, Outcome::FailOpen);
            warn_every!(error = %e, policy = %policy.name, shadow = policy.shadow, "rate limiter unavailable, forwarding unmetered");
            return next.run(unmetered(request)).await;
        }
        Err(e) => {
            m.request(&policy.name, Outcome::Error);
            return noted_refused(
                ApiError::LimiterUnavailable { detail: e.to_string() }.into_response(),
                "unavailable",
            );
        }
    };
    tracing::debug!(policy = %policy.name, tier = %caller.tier, identity = caller.kind, id = %caller.identity_hash, ?decision, "checked");
    let refused = if policy.shadow { Outcome::ShadowLimited } else { Outcome::Limited };
    if !decision.allowed {
        for (quota, _) in policy.limits.iter().zip(&decision.limits).filter(|(_, row)| !row.allowed) {
            m.limit_decision(&policy.name, &quota.name, refused);
        }
        m.request(&policy.name, refused);
        if policy.shadow {
            tracing::info!(policy = %policy.name, id = %caller.identity_hash, retry_after_ms = ?decision.retry_after_ms, "shadow policy would have refused");
            return next.run(unmetered(request)).await;
        }
        let limits: Vec<_> = policy
            .limits
            .iter()
            .zip(&decision.limits)
            .filter(|(_, row)| !row.allowed)
            .map(|(q, row)| q.refused(&policy.name, row.retry_after_ms))
            .collect();
        let names: Vec<&str> = limits.iter().map(|l| l.name.as_str()).collect();
        let why = names.join(",");
        let mut response =
            ApiError::RateLimited { retry_after_secs: retry_after_secs(&decision), limits }.into_response();
        add_headers(&mut response, policy, &decision);
        return noted_refused(response, why);
    }
    for (quota, &cost) in policy.limits.iter().zip(&costs) {
        m.limit_decision(&policy.name, &quota.name, Outcome::Allowed);
        if quota.unit == Unit::Tokens {
            m.tokens_reserved(&policy.name, &quota.name, cost);
        }
    }
    let leases = match take_leases(
        limit.admission.limiter(),
        policy,
        &caller.identity_hash,
        &limit.upstream,
        caller.keep_percent,
    )
    .await
    {
        Ok(leases) => {
            for limit in admitted_by_leases(policy, &limit.upstream) {
                m.limit_decision(&policy.name, limit, Outcome::Allowed);
            }
            m.request(&policy.name, Outcome::Allowed);
            leases
        }
        Err(refusal) => match (refusal_answer(policy, &refusal), limit.failure_mode) {
            (Some((error, items)), _) => {
                limit.admission.give_back(policy, &caller.identity_hash, &costs, &mut decision).await;
                m.limit_decision(&policy.name, refused_by(&refusal), refused);
                m.request(&policy.name, refused);
                if policy.shadow {
                    tracing::info!(policy = %policy.name, id = %caller.identity_hash, limit = refused_by(&refusal), "shadow policy would have refused");
                    return next.run(unmetered(request)).await;
                }
                let mut response = error.into_response();
                response.headers_mut().extend(rate_limit_headers(policy, &decision));
                append_items(response.headers_mut(), items);
                return noted_refused(response, refused_by(&refusal));
            }
            (None, _) if !policy.shadow && refusal.is_module_error() => {
                limit.admission.give_back(policy, &caller.identity_hash, &costs, &mut decision).await;
                m.request(&policy.name, Outcome::ModuleError);
                let answer = ApiError::LimiterRejected { detail: format!("{refusal:?}") }.into_response();
                return noted_refused(answer, "module_error");
            }
            (None, FailureMode::Closed) if !policy.shadow => {
                limit.admission.give_back(policy, &caller.identity_hash, &costs, &mut decision).await;
                m.request(&policy.name, Outcome::Error);
                let detail = match refusal {
                    Refusal::Unavailable(e) => e.to_string(),
                    other => format!("{other:?}"),
                };
                return noted_refused(ApiError::LimiterUnavailable { detail }.into_response(), "unavailable");
            }
            (None, _) => {
                m.request(
                    &policy.name,
                    if refusal.is_module_error() { Outcome::ModuleError } else { Outcome::FailOpen },
                );
                warn_every!(?refusal, policy = %policy.name, shadow = policy.shadow, "lease unavailable, forwarding without it");
                Vec::new()
            }
        },
    };
    let response = with_leases(next.run(request).await, leases);
    let mut response = match (tokens, &policy.llm) {
        (Some((reserved, strip_usage_chunk)), Some(llm)) => {
            let settlement = Settlement {
                limiter: limit.admission.limiter().clone(),
                policy: policy.clone(),
                identity_hash: caller.identity_hash.clone(),
                reserved,
                llm: *llm,
                strip_usage_chunk,
            };
            settlement.settle(&mut decision, response).await
        }
        _ => response,
    };
    add_headers(&mut response, policy, &decision);
    response
}

/// The rate-limit headers of `decision`, unless `policy` is a shadow policy (its clients see
/// no trace of it).
fn add_headers(response: &mut Response, policy: &Policy, decision: &CheckAllReply) {
    if policy.shadow {
        return;
    }
    response.headers_mut().extend(rate_limit_headers(policy, decision));
    if policy.llm.is_some() {
        response.headers_mut().extend(openai_headers(policy, decision));
    }
}

/// The `limit` labels of what [`take_leases`] granted: the caller's lease, the upstream's,
/// the capacity token (each asked only when configured).
fn admitted_by_leases(policy: &Policy, upstream: &UpstreamLimits) -> impl Iterator<Item = &'static str> {
    [
        policy.concurrency.map(|_| CONCURRENT_NAME),
        upstream.concurrency.map(|_| "upstream-concurrent"),
        upstream.capacity.as_ref().map(|_| "upstream-capacity"),
    ]
    .into_iter()
    .flatten()
}

/// The `limit` label of a lease refusal in `gateway_limit_decisions_total`.
fn refused_by(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::Caller(_) => CONCURRENT_NAME,
        Refusal::Upstream(_) => "upstream-concurrent",
        Refusal::Capacity { .. } => "upstream-capacity",
        Refusal::Unavailable(_) => "unavailable",
    }
}

/// The response with its body holding `leases` until it ends (or is dropped).
fn with_leases<L: RateLimiter>(response: Response, leases: Vec<Lease<L>>) -> Response {
    if leases.is_empty() {
        return response;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::new(LeasedBody::new(body, leases)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use axum::middleware::{from_fn, from_fn_with_state};
    use axum::Router;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Concurrency;
    use crate::limiter::memory::MemoryLimiter;
    use crate::test_support::{header, json, request, settings};

    /// The deny cache keeps real time and the in-memory limiter a clock of its own (moved by
    /// `advance`), so these tests turn the cache off unless they test it.
    fn settings_mode(mode: FailureMode) -> Settings {
        let mode = match mode {
            FailureMode::Closed => "closed",
            FailureMode::Open => "open",
        };
        settings(&format!("[redis]\nfailure_mode = \"{mode}\"\n[deny_cache]\nenabled = false\n"))
    }

    fn caller() -> Caller {
        let policy = Arc::new(Policy::simple("p", &["/"], 2, 2, 2));
        Caller { policy, tier: "default".into(), kind: "api_key", identity_hash: "abc".into(), keep_percent: 0 }
    }

    /// The limit step between a stand-in for the identify step (which hands on `caller`) and
    /// a handler answering `inner`.
    fn router(limiter: &MemoryLimiter, mode: FailureMode, caller: Option<Caller>, inner: StatusCode) -> Router {
        router_with(limiter, &settings_mode(mode), caller, inner)
    }

    fn router_with<L: RateLimiter>(
        limiter: &L,
        settings: &Settings,
        caller: Option<Caller>,
        inner: StatusCode,
    ) -> Router {
        let give_caller = move |mut request: Request, next: Next| {
            if let Some(caller) = caller.clone() {
                request.extensions_mut().insert(caller);
            }
            next.run(request)
        };
        Router::new()
            .fallback(move || async move { inner })
            .layer(from_fn_with_state(Arc::new(Limit::new(limiter.clone(), settings)), limit::<L>))
            .layer(from_fn(give_caller))
    }

    async fn send(router: &Router) -> Response {
        router.clone().oneshot(request("POST", "/v1/x", &[], "")).await.unwrap()
    }

    #[tokio::test]
    async fn admitted_requests_pass_and_every_answer_carries_the_headers() {
        let limiter = MemoryLimiter::new();
        let ok = router(&limiter, FailureMode::Closed, Some(caller()), StatusCode::OK);
        let first = send(&ok).await;
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(header(&first, "ratelimit-policy"), Some("\"p\";q=2;w=2"));
        assert_eq!(header(&first, "ratelimit"), Some("\"p\";r=1;t=1"));
        assert_eq!(header(&first, "x-ratelimit-remaining"), Some("1"));
        assert_eq!(header(&first, "retry-after"), None);
        // What comes after the check (here a 502) still says what the request cost.
        let failing = router(&limiter, FailureMode::Closed, Some(caller()), StatusCode::BAD_GATEWAY);
        let second = send(&failing).await;
        assert_eq!(second.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(header(&second, "x-ratelimit-remaining"), Some("0"));
    }

    #[tokio::test]
    async fn a_refused_request_gets_429_and_never_reaches_the_inner_service() {
        let limiter = MemoryLimiter::new();
        let teapot = router(&limiter, FailureMode::Closed, Some(caller()), StatusCode::IM_A_TEAPOT);
        assert_eq!(send(&teapot).await.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(send(&teapot).await.status(), StatusCode::IM_A_TEAPOT);
        let refused = send(&teapot).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&refused, "retry-after"), Some("1"));
        assert_eq!(header(&refused, "ratelimit"), Some("\"p\";r=0;t=1"));
        assert_eq!(header(&refused, "x-ratelimit-reset"), Some("2"));
        assert_eq!(
            json(refused).await.to_string(),
            r#"{"error":{"type":"rate_limited","message":"Rate limit exceeded: \"requests\" of policy \"p\" (2 requests per 2 seconds). Please try again after 1 second.","retry_after_seconds":1,"limits":[{"policy":"p","name":"requests","unit":"requests","retry_after_ms":1000}]}}"#
        );
        limiter.advance(Duration::from_secs(1));
        assert_eq!(send(&teapot).await.status(), StatusCode::IM_A_TEAPOT, "Retry-After was enough");
    }

    #[tokio::test]
    async fn a_failing_limiter_refuses_or_forwards_unmetered_per_failure_mode() {
        let limiter = MemoryLimiter::new();
        limiter.set_down(true);
        let closed = send(&router(&limiter, FailureMode::Closed, Some(caller()), StatusCode::OK)).await;
        assert_eq!(closed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&closed, "ratelimit"), None);
        assert_eq!(json(closed).await["error"]["type"], "rate_limiter_unavailable");
        let open = send(&router(&limiter, FailureMode::Open, Some(caller()), StatusCode::OK)).await;
        assert_eq!(open.status(), StatusCode::OK);
        assert_eq!(header(&open, "ratelimit"), None);
    }

    #[tokio::test]
    async fn without_a_caller_nothing_is_checked() {
        let limiter = MemoryLimiter::new();
        let answer = send(&router(&limiter, FailureMode::Closed, None, StatusCode::OK)).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(header(&answer, "ratelimit"), None);
        assert_eq!(limiter.checks(), 0);
    }

    #[tokio::test]
    async fn a_full_lease_answers_429_and_gives_the_tokens_back_until_the_first_body_ends() {
        let limiter = MemoryLimiter::new();
        // A policy of its own: the hold times behind the retry hint are per policy and process.
        let mut policy = Policy::simple("lease-refusal", &["/"], 10, 60, 10);
        policy.concurrency = Some(Concurrency { max: 1, lease_ms: 30_000 });
        let caller = Caller { policy: Arc::new(policy.clone()), ..caller() };
        let app = router(&limiter, FailureMode::Closed, Some(caller), StatusCode::OK);
        let held = send(&app).await;
        assert_eq!(held.status(), StatusCode::OK);
        let refused = send(&app).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&refused, "retry-after"), Some("1"), "no hold ended yet: 1 s, not the 30 s lease");
        assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("9"), "the refused request's token is back");
        assert_eq!(limiter.tokens(&policy, "abc", 0), 9);
        let body = json(refused).await;
        assert_eq!(body["error"]["limits"][0]["name"], "concurrent");
        assert_eq!(body["error"]["limits"][0]["unit"], "concurrent_requests");
        assert_eq!(body["error"]["limits"][0]["retry_after_ms"], 1000);
        let slot = crate::lease::Slot::Caller { policy: policy.name.clone(), identity_hash: "abc".into() };
        assert_eq!(crate::lease::hold_times().mean(&slot), None, "the refused request's lease counts no hold");
        drop(held);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(crate::lease::hold_times().mean(&slot).is_some(), "a served lease's hold is counted");
        assert_eq!(send(&app).await.status(), StatusCode::OK, "the dropped body released the lease");
        let decisions = r#"gateway_limit_decisions_total{policy="lease-refusal",limit="concurrent",outcome="#;
        assert_eq!(series(&format!(r#"{decisions}"allowed"}}"#)), 2, "each lease granted is counted");
        assert_eq!(series(&format!(r#"{decisions}"limited"}}"#)), 1);
    }

    #[tokio::test]
    async fn a_request_that_can_never_fit_is_told_not_to_retry() {
        let limiter = MemoryLimiter::new();
        let mut policy = Policy::simple("never-fits", &["/"], 10, 60, 10);
        policy.limits[0].unit = Unit::Tokens;
        policy.limits[0].name = "tokens".into();
        policy.llm = Some(crate::config::Llm {
            chars_per_token: 4,
            default_max_tokens: 100,
            max_response_bytes: 1 << 20,
            max_event_bytes: 1 << 20,
        });
        let app = router(&limiter, FailureMode::Closed, Some(caller_of(policy)), StatusCode::OK);
        let answer = app
            .clone()
            .oneshot(request("POST", "/v1/chat/completions", &[], r#"{"messages":[],"max_tokens":11}"#))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&answer, "x-should-retry"), Some("false"));
        assert_eq!(header(&answer, "retry-after"), None);
        assert_eq!(
            json(answer).await["error"]["message"],
            "This request is larger than its rate limit allows and can never be admitted: \"tokens\" of policy \"never-fits\" holds at most 10 tokens. Retrying will not help; ask for less."
        );
        // One that fits but must wait is retried as usual: no such header.
        let fits = r#"{"messages":[],"max_tokens":6}"#;
        assert_eq!(app.clone().oneshot(request("POST", "/v1/x", &[], fits)).await.unwrap().status(), StatusCode::OK);
        let later = app.clone().oneshot(request("POST", "/v1/x", &[], fits)).await.unwrap();
        assert_eq!(later.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&later, "x-should-retry"), None);
        assert!(header(&later, "retry-after").is_some());
    }

    /// A caller of its own (metrics are per process: each test counts under its own policy).
    fn caller_of(policy: Policy) -> Caller {
        Caller { policy: Arc::new(policy), ..caller() }
    }

    use crate::test_support::series;

    #[tokio::test]
    async fn a_shadow_policy_counts_what_it_would_refuse_but_forwards_everything_without_headers() {
        let limiter = MemoryLimiter::new();
        let mut policy = Policy::simple("shadowed", &["/"], 2, 60, 2);
        policy.shadow = true;
        let app = router(&limiter, FailureMode::Closed, Some(caller_of(policy.clone())), StatusCode::OK);
        for _ in 0..5 {
            let answer = send(&app).await;
            assert_eq!(answer.status(), StatusCode::OK);
            for name in ["ratelimit", "ratelimit-policy", "x-ratelimit-remaining", "retry-after"] {
                assert_eq!(header(&answer, name), None, "{name}");
            }
        }
        assert_eq!(limiter.tokens(&policy, "abc", 0), 0, "evaluated: the bucket is spent as if enforced");
        assert_eq!(series(r#"gateway_requests_total{policy="shadowed",outcome="allowed"}"#), 2);
        assert_eq!(series(r#"gateway_requests_total{policy="shadowed",outcome="shadow_limited"}"#), 3);
        assert_eq!(
            series(r#"gateway_limit_decisions_total{policy="shadowed",limit="requests",outcome="shadow_limited"}"#),
            3
        );
        assert_eq!(series(r#"gateway_requests_total{policy="shadowed",outcome="limited"}"#), 0);
        // Redis down: a shadow policy never refuses, whatever failure_mode says.
        limiter.set_down(true);
        assert_eq!(send(&app).await.status(), StatusCode::OK);
        assert_eq!(series(r#"gateway_requests_total{policy="shadowed",outcome="fail_open"}"#), 1);
    }

    #[tokio::test]
    async fn a_shadow_policy_forwards_past_a_full_lease_and_gives_its_tokens_back() {
        let limiter = MemoryLimiter::new();
        let mut policy = Policy::simple("shadow-lease", &["/"], 10, 60, 10);
        policy.concurrency = Some(Concurrency { max: 1, lease_ms: 30_000 });
        policy.shadow = true;
        let app = router(&limiter, FailureMode::Closed, Some(caller_of(policy.clone())), StatusCode::OK);
        let held = send(&app).await;
        let second = send(&app).await;
        assert_eq!(second.status(), StatusCode::OK, "a shadow lease refuses nothing");
        assert_eq!(header(&second, "ratelimit"), None);
        assert_eq!(limiter.tokens(&policy, "abc", 0), 9, "the second request's token is back");
        assert_eq!(
            series(
                r#"gateway_limit_decisions_total{policy="shadow-lease",limit="concurrent",outcome="shadow_limited"}"#
            ),
            1
        );
        drop(held);
    }

    #[tokio::test]
    async fn the_deny_cache_answers_a_refused_caller_without_asking_again_until_retry_after() {
        let limiter = MemoryLimiter::new();
        // 1 request per 200 ms: the refusal says retry after 200 ms.
        let policy = Policy::simple("denied", &["/"], 5, 1, 1);
        let on = settings("[redis]\nfailure_mode = \"closed\"\n");
        let app = router_with(&limiter, &on, Some(caller_of(policy.clone())), StatusCode::OK);
        assert_eq!(send(&app).await.status(), StatusCode::OK);
        let first = send(&app).await;
        assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limiter.checks(), 2);
        for _ in 0..20 {
            let cached = send(&app).await;
            assert_eq!(cached.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(header(&cached, "retry-after"), Some("1"), "the headers of a Redis refusal");
            assert_eq!(header(&cached, "x-ratelimit-remaining"), Some("0"));
        }
        assert_eq!(limiter.checks(), 2, "answered locally");
        assert_eq!(series(r#"gateway_deny_cache_hits_total{policy="denied"}"#), 20);
        assert_eq!(series(r#"gateway_requests_total{policy="denied",outcome="limited"}"#), 21);
        // Past the refusal's moment the next request asks Redis again (whose clock is its own).
        tokio::time::sleep(Duration::from_millis(250)).await;
        limiter.advance(Duration::from_millis(250));
        assert_eq!(send(&app).await.status(), StatusCode::OK);
        assert_eq!(limiter.checks(), 3);
    }

    /// A request refused by its lease after its check was charged, whose give-back fails
    /// (Redis gone between the two): still `429`, the token stays spent (nothing is owed the
    /// other way), it is counted as limited, and nothing is retried.
    #[tokio::test]
    async fn a_give_back_that_fails_after_a_refused_lease_still_answers_429_and_the_token_stays_spent() {
        use crate::limiter::faulty::{Faulty, Op};
        let limiter = Faulty::new(MemoryLimiter::new());
        let mut policy = Policy::simple("refund-fails", &["/"], 10, 60, 10);
        policy.concurrency = Some(Concurrency { max: 1, lease_ms: 30_000 });
        let app =
            router_with(&limiter, &settings_mode(FailureMode::Closed), Some(caller_of(policy.clone())), StatusCode::OK);
        let held = send(&app).await;
        assert_eq!(held.status(), StatusCode::OK);
        limiter.fail(Op::Refund, true);
        let refused = send(&app).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(json(refused).await["error"]["limits"][0]["name"], "concurrent");
        assert_eq!(limiter.calls(Op::Refund), 1, "tried once, not retried");
        assert_eq!(limiter.inner.tokens(&policy, "abc", 0), 8, "both tokens spent: the give-back never arrived");
        assert_eq!(series(r#"gateway_requests_total{policy="refund-fails",outcome="limited"}"#), 1);
        drop(held);
    }

    /// A Redis failure at the check refuses (closed) or forwards (open) without a lease or a
    /// charge; a failure at the lease after the check gives the check's token back.
    #[tokio::test]
    async fn a_lease_that_cannot_be_taken_gives_the_checked_token_back_per_failure_mode() {
        use crate::limiter::faulty::{Faulty, Op};
        let limiter = Faulty::new(MemoryLimiter::new());
        let mut policy = Policy::simple("acquire-fails", &["/"], 10, 60, 10);
        policy.concurrency = Some(Concurrency { max: 1, lease_ms: 30_000 });
        limiter.fail(Op::Acquire, true);
        let closed =
            router_with(&limiter, &settings_mode(FailureMode::Closed), Some(caller_of(policy.clone())), StatusCode::OK);
        let refused = send(&closed).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(refused).await["error"]["type"], "rate_limiter_unavailable");
        assert_eq!(limiter.inner.tokens(&policy, "abc", 0), 10, "the check's token was given back");
        let open =
            router_with(&limiter, &settings_mode(FailureMode::Open), Some(caller_of(policy.clone())), StatusCode::OK);
        let forwarded = send(&open).await;
        assert_eq!(forwarded.status(), StatusCode::OK, "open: forwarded without the lease");
        assert_eq!(limiter.inner.tokens(&policy, "abc", 0), 9, "and charged its token");
        assert_eq!(series(r#"gateway_requests_total{policy="acquire-fails",outcome="error"}"#), 1);
        assert_eq!(series(r#"gateway_requests_total{policy="acquire-fails",outcome="fail_open"}"#), 1);
    }
}
