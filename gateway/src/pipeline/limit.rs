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

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::proxy::read_body;
use super::Caller;
use rl_protocol::CheckAllReply;

use crate::config::{FailureMode, Policy, Settings, Unit};
use crate::error::{ApiError, RefusedLimit};
use crate::headers::{openai_headers, rate_limit_headers, retry_after_secs};
use crate::lease::{append_items, refusal_answer, take_leases, Lease, LeasedBody, Refusal, UpstreamLimits};
use crate::limiter::RateLimiter;
use crate::llm::{ask_for_usage, estimate, Settlement};

pub struct Limit<L> {
    limiter: L,
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
            limiter,
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

pub async fn limit<L: RateLimiter>(
    State(limit): State<Arc<Limit<L>>>,
    caller: Option<Extension<Caller>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(Extension(caller)) = caller else { return next.run(request).await };
    let policy = &caller.policy;
    // An LLM route: the body (bounded, with a timeout), its estimate, and the body put back.
    let (request, tokens) = match &policy.llm {
        None => (request, None),
        Some(llm) => {
            let (parts, body) = request.into_parts();
            let body = match read_body(body, limit.max_body_bytes, limit.body_timeout).await {
                Ok(body) => body,
                Err(e) => return e.into_response(),
            };
            let estimate = match estimate(&body, llm) {
                Ok(estimate) => estimate,
                Err(why) => return ApiError::InvalidLlmRequest(why).into_response(),
            };
            tracing::debug!(?estimate, "estimated");
            // A streamed request also asks the model for its usage (see crate::llm::stream).
            let (body, strip) = ask_for_usage(&body).unwrap_or((body, false));
            (Request::from_parts(parts, Body::from(body)), Some((estimate.total(), strip)))
        }
    };
    let costs: Vec<u64> = policy
        .limits
        .iter()
        .map(|q| match q.unit {
            Unit::Requests => 1,
            Unit::Tokens => tokens.map_or(0, |(reserved, _)| reserved),
        })
        .collect();
    let mut decision = match limit.limiter.check(policy, &caller.identity_hash, &costs).await {
        Ok(decision) => decision,
        Err(e) => match limit.failure_mode {
            FailureMode::Closed => return ApiError::LimiterUnavailable { detail: e.to_string() }.into_response(),
            FailureMode::Open => {
                tracing::warn!(error = %e, "rate limiter unavailable, forwarding unmetered (failure_mode = open)");
                return next.run(request).await;
            }
        },
    };
    tracing::debug!(policy = %policy.name, tier = %caller.tier, identity = caller.kind, id = %caller.identity_hash, ?decision, "checked");
    let mut response =
        if decision.allowed {
            let leases =
                match take_leases(&limit.limiter, policy, &caller.identity_hash, &limit.upstream, caller.keep_percent)
                    .await
                {
                    Ok(leases) => leases,
                    Err(refusal) => match (refusal_answer(policy, &refusal), limit.failure_mode) {
                        (Some((error, items)), _) => {
                            give_back(&limit.limiter, policy, &caller.identity_hash, &costs, &mut decision).await;
                            let mut response = error.into_response();
                            response.headers_mut().extend(rate_limit_headers(policy, &decision));
                            append_items(response.headers_mut(), items);
                            return response;
                        }
                        (None, FailureMode::Closed) => {
                            give_back(&limit.limiter, policy, &caller.identity_hash, &costs, &mut decision).await;
                            let detail = match refusal {
                                Refusal::Unavailable(e) => e.to_string(),
                                other => format!("{other:?}"),
                            };
                            return ApiError::LimiterUnavailable { detail }.into_response();
                        }
                        (None, FailureMode::Open) => {
                            tracing::warn!(?refusal, "lease unavailable, forwarding without it (failure_mode = open)");
                            Vec::new()
                        }
                    },
                };
            let response = with_leases(next.run(request).await, leases);
            match (tokens, &policy.llm) {
                (Some((reserved, strip_usage_chunk)), Some(llm)) => {
                    let settlement = Settlement {
                        limiter: limit.limiter.clone(),
                        policy: policy.clone(),
                        identity_hash: caller.identity_hash.clone(),
                        reserved,
                        max_response_bytes: llm.max_response_bytes,
                        strip_usage_chunk,
                    };
                    settlement.settle(&mut decision, response).await
                }
                _ => response,
            }
        } else {
            let limits = policy
                .limits
                .iter()
                .zip(&decision.limits)
                .filter(|(_, row)| !row.allowed)
                .map(|(q, row)| RefusedLimit {
                    policy: policy.name.clone(),
                    name: q.name.clone(),
                    retry_after_ms: row.retry_after_ms,
                })
                .collect();
            ApiError::RateLimited { retry_after_secs: retry_after_secs(&decision), limits }.into_response()
        };
    response.headers_mut().extend(rate_limit_headers(policy, &decision));
    if policy.llm.is_some() {
        response.headers_mut().extend(openai_headers(policy, &decision));
    }
    response
}

/// Gives back what a request refused after its check was charged: `costs[i]` on each limit.
/// Awaited, so the refusal's headers (updated here) show the bucket as it is again.
async fn give_back<L: RateLimiter>(
    limiter: &L,
    policy: &Policy,
    identity_hash: &str,
    costs: &[u64],
    decision: &mut CheckAllReply,
) {
    for (i, &cost) in costs.iter().enumerate().filter(|(_, &cost)| cost > 0) {
        match limiter.refund(policy, identity_hash, i, cost).await {
            Ok(back) => {
                if let Some(row) = decision.limits.get_mut(i) {
                    row.remaining = back.remaining;
                    row.reset_after_ms = back.reset_after_ms;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, limit = i, cost, "could not give back the tokens of a refused request")
            }
        }
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

    fn settings_mode(mode: FailureMode) -> Settings {
        let mode = match mode {
            FailureMode::Closed => "closed",
            FailureMode::Open => "open",
        };
        settings(&format!("[redis]\nfailure_mode = \"{mode}\"\n"))
    }

    fn caller() -> Caller {
        let policy = Arc::new(Policy::simple("p", &["/"], 2, 2, 2));
        Caller { policy, tier: "default".into(), kind: "api_key", identity_hash: "abc".into(), keep_percent: 0 }
    }

    /// The limit step between a stand-in for the identify step (which hands on `caller`) and
    /// a handler answering `inner`.
    fn router(limiter: &MemoryLimiter, mode: FailureMode, caller: Option<Caller>, inner: StatusCode) -> Router {
        let give_caller = move |mut request: Request, next: Next| {
            if let Some(caller) = caller.clone() {
                request.extensions_mut().insert(caller);
            }
            next.run(request)
        };
        Router::new()
            .fallback(move || async move { inner })
            .layer(from_fn_with_state(
                Arc::new(Limit::new(limiter.clone(), &settings_mode(mode))),
                limit::<MemoryLimiter>,
            ))
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
            r#"{"error":{"type":"rate_limited","message":"Client exceeded sending requests. Please try again after 1 second.","retry_after_seconds":1,"limits":[{"policy":"p","name":"requests","retry_after_ms":1000}]}}"#
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
        let mut policy = Policy::simple("p", &["/"], 10, 60, 10);
        policy.concurrency = Some(Concurrency { max: 1, lease_ms: 30_000 });
        let caller = Caller { policy: Arc::new(policy.clone()), ..caller() };
        let app = router(&limiter, FailureMode::Closed, Some(caller), StatusCode::OK);
        let held = send(&app).await;
        assert_eq!(held.status(), StatusCode::OK);
        let refused = send(&app).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&refused, "retry-after"), Some("30"));
        assert_eq!(header(&refused, "x-ratelimit-remaining"), Some("9"), "the refused request's token is back");
        assert_eq!(limiter.tokens(&policy, "abc", 0), 9);
        assert_eq!(json(refused).await["error"]["limits"][0]["name"], "concurrent");
        drop(held);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(send(&app).await.status(), StatusCode::OK, "the dropped body released the lease");
    }
}
