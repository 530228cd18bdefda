//! Settling an admitted LLM request on the answer's `usage.total_tokens`.
//!
//! The rule, per limit counted in tokens (`reserved` is the estimate charged at admission):
//! - `usage < reserved`: `RL.REFUND` of `reserved - usage`;
//! - `usage > reserved`: `RL.CHECK ... COST (usage - reserved) FORCE` (always charged, even
//!   when the bucket is short: the caller waits that debt off);
//! - a `4xx` answer without usage (the model refused the request: a bad parameter, its own
//!   rate limit, a context too long): the model did no work, so the whole reservation is given
//!   back, as for a usage of 0;
//! - no usage to read otherwise (a body that is not JSON or has no `usage.total_tokens`, a body
//!   over `max_response_bytes`, a `5xx`, a timeout, a stream that breaks off): the model may
//!   have worked, so the reservation is kept as charged.
//!
//! A streamed answer (`text/event-stream`) is settled when it ends ([`super::stream`]).
//!
//! A non-streamed answer is buffered (up to `max_response_bytes`) to read its usage, and is
//! settled before its headers are sent, so its `x-ratelimit-remaining-tokens` and `RateLimit`
//! already show the settled bucket. A failed settlement call is logged and the answer is sent
//! with the reservation-time headers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use rl_protocol::CheckAllReply;

use crate::config::{Llm, Policy, Unit};
use crate::error::ApiError;
use crate::limiter::RateLimiter;
use crate::log_limit::warn_every;
use crate::metrics::metrics;

/// `usage.total_tokens` of a JSON answer, if it has one (read without building the answer's
/// document, which may be megabytes).
pub fn usage_total_tokens(body: &[u8]) -> Option<u64> {
    let [usage] = super::json::fields(body, ["usage"]).ok()?;
    let [total] = super::json::fields(usage?.get().as_bytes(), ["total_tokens"]).ok()?;
    serde_json::from_str::<u64>(total?.get()).ok()
}

/// A body that yields `prefix` first, then the rest of the original body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// The whole body when it fits in `max` bytes (`Ok(Ok(bytes))`), else a body that replays what
/// was read and streams the rest (`Ok(Err(body))`). `Err` when the model broke off.
async fn buffer(mut body: Body, max: u64) -> Result<Result<Bytes, Body>, axum::Error> {
    let mut buffered: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        buffered.extend_from_slice(&data);
        if buffered.len() as u64 > max {
            return Ok(Err(Body::new(Prefixed { prefix: Some(Bytes::from(buffered)), rest: body })));
        }
    }
    Ok(Ok(Bytes::from(buffered)))
}

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

/// What an admitted LLM request must settle, and with whom.
pub struct Settlement<L> {
    pub limiter: L,
    pub policy: Arc<Policy>,
    pub identity_hash: String,
    /// The estimate charged on each limit counted in tokens.
    pub reserved: u64,
    /// The policy's LLM settings (`max_response_bytes`, `max_event_bytes`).
    pub llm: Llm,
    /// Set when the gateway asked for `stream_options.include_usage` on the client's behalf:
    /// the usage-only final chunk is then not forwarded.
    pub strip_usage_chunk: bool,
}

impl<L: RateLimiter> Settlement<L> {
    /// The reservation stands as the request's charge (no usage to settle on): counted as
    /// charged in the metrics.
    pub fn kept(&self) {
        for quota in self.policy.limits.iter().filter(|q| q.unit == Unit::Tokens) {
            metrics().tokens_charged(&self.policy.name, &quota.name, self.reserved);
        }
    }

    /// Settles against the answer's usage (see the module's rule), updating the token rows of
    /// `decision` to the settled buckets (for a streamed answer they stay as reserved: it
    /// settles when the stream ends); returns the answer to send.
    pub async fn settle(self, decision: &mut CheckAllReply, response: Response) -> Response {
        let reserved = self.reserved;
        if is_event_stream(&response) {
            let (parts, body) = response.into_parts();
            return Response::from_parts(parts, super::stream::settled_on_end(body, self));
        }
        let (parts, body) = response.into_parts();
        let bytes = match buffer(body, self.llm.max_response_bytes).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(body)) if parts.status.is_client_error() => {
                tracing::debug!(reserved, status = parts.status.as_u16(), "the model refused: reservation given back");
                settle_usage(&self.limiter, &self.policy, &self.identity_hash, reserved, 0, decision).await;
                return Response::from_parts(parts, body);
            }
            Ok(Err(body)) => {
                tracing::debug!(reserved, "answer over max_response_bytes: reservation kept");
                self.kept();
                return Response::from_parts(parts, body);
            }
            Err(e) if crate::upstream::AnswerTimedOut::is_cause_of(&e) => {
                warn_every!(error = %e, reserved, "the model's answer took too long: reservation kept");
                self.kept();
                return ApiError::UpstreamTimeout { detail: e.to_string() }.into_response();
            }
            Err(e) => {
                warn_every!(error = %e, reserved, "the model broke off its answer: reservation kept");
                self.kept();
                return ApiError::UpstreamUnavailable { detail: e.to_string() }.into_response();
            }
        };
        let used = match usage_total_tokens(&bytes) {
            Some(used) => used,
            None if parts.status.is_client_error() => {
                tracing::debug!(reserved, status = parts.status.as_u16(), "the model refused: reservation given back");
                0
            }
            None => {
                let status = parts.status.as_u16();
                tracing::debug!(reserved, status, "no usage.total_tokens in the answer: reservation kept");
                self.kept();
                return Response::from_parts(parts, Body::from(bytes));
            }
        };
        settle_usage(&self.limiter, &self.policy, &self.identity_hash, reserved, used, decision).await;
        tracing::debug!(reserved, used, "settled");
        Response::from_parts(parts, Body::from(bytes))
    }
}

/// Settles `reserved` against `used` on every limit counted in tokens (refund or forced
/// charge), updating those rows of `decision` to the settled buckets.
pub async fn settle_usage<L: RateLimiter>(
    limiter: &L,
    policy: &Policy,
    identity_hash: &str,
    reserved: u64,
    used: u64,
    decision: &mut CheckAllReply,
) {
    for (index, quota) in policy.limits.iter().enumerate().filter(|(_, q)| q.unit == Unit::Tokens) {
        let settled = if used < reserved {
            limiter.refund(policy, identity_hash, index, reserved - used).await.map(|r| (r.remaining, r.reset_after_ms))
        } else if used > reserved {
            limiter.force(policy, identity_hash, index, used - reserved).await.map(|c| (c.remaining, c.reset_after_ms))
        } else {
            metrics().tokens_charged(&policy.name, &quota.name, used);
            continue;
        };
        let m = metrics();
        match (settled, decision.limits.get_mut(index)) {
            (Ok(settled), row) => {
                m.tokens_charged(&policy.name, &quota.name, used);
                m.tokens_refunded(&policy.name, &quota.name, reserved.saturating_sub(used));
                if let (Some(row), (remaining, reset_after_ms)) = (row, settled) {
                    row.remaining = remaining;
                    row.reset_after_ms = reset_after_ms;
                }
            }
            (Err(e), _) => {
                m.tokens_charged(&policy.name, &quota.name, reserved);
                warn_every!(error = %e, limit = %quota.name, reserved, used, "settlement failed: reservation kept")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Quota;
    use crate::limiter::memory::MemoryLimiter;
    use crate::test_support::header;
    use axum::http::StatusCode;

    fn chat() -> Arc<Policy> {
        let mut policy = Policy::simple("chat", &["/"], 10, 60, 10);
        policy.limits.push(Quota { name: "tokens".into(), unit: Unit::Tokens, limit: 1000, window: 60, burst: 1000 });
        Arc::new(policy)
    }

    async fn settle_answer(limiter: &MemoryLimiter, reserved: u64, body: &str) -> (CheckAllReply, Response) {
        settle_answer_with(limiter, reserved, StatusCode::OK, body).await
    }

    async fn settle_answer_with(
        limiter: &MemoryLimiter,
        reserved: u64,
        status: StatusCode,
        body: &str,
    ) -> (CheckAllReply, Response) {
        let policy = chat();
        let mut decision = limiter.check(&policy, "id", &[1, reserved]).await.unwrap();
        let settlement = Settlement {
            limiter: limiter.clone(),
            policy,
            identity_hash: "id".into(),
            reserved,
            llm: Llm { chars_per_token: 4, default_max_tokens: 10, max_response_bytes: 64, max_event_bytes: 64 },
            strip_usage_chunk: false,
        };
        let answer =
            Response::builder().status(status).header("x-model", "m").body(Body::from(body.to_string())).unwrap();
        let response = settlement.settle(&mut decision, answer).await;
        (decision, response)
    }

    #[test]
    fn the_usage_is_read_from_the_top_level_usage_object_only() {
        assert_eq!(usage_total_tokens(br#"{"id":"x","usage":{"prompt_tokens":1,"total_tokens":42}}"#), Some(42));
        assert_eq!(usage_total_tokens(br#"{"usage":{"total_tokens":1},"usage":{"total_tokens":2}}"#), Some(2));
        for none in [
            &br#"{"choices":[{"usage":{"total_tokens":5}}]}"#[..],
            br#"{"usage":{"total_tokens":-1}}"#,
            br#"{"usage":{"total_tokens":"5"}}"#,
            br#"{"usage":null}"#,
            br#"{"usage":{"total_tokens":5}"#,
            b"[1]",
        ] {
            assert_eq!(usage_total_tokens(none), None, "{}", String::from_utf8_lossy(none));
        }
    }

    #[tokio::test]
    async fn the_bucket_ends_at_exactly_the_usage() {
        let limiter = MemoryLimiter::new();
        let (decision, response) = settle_answer(&limiter, 100, r#"{"usage":{"total_tokens":30}}"#).await;
        assert_eq!(decision.limits[1].remaining, 970, "the refund shows in the headers' row");
        assert_eq!(limiter.tokens(&chat(), "id", 1), 970);
        assert_eq!(header(&response, "x-model"), Some("m"));
        let (decision, _) = settle_answer(&limiter, 10, r#"{"usage":{"total_tokens":70}}"#).await;
        assert_eq!((decision.limits[1].remaining, limiter.tokens(&chat(), "id", 1)), (900, 900), "overage forced");
    }

    #[tokio::test]
    async fn without_a_readable_usage_the_reservation_stays() {
        let limiter = MemoryLimiter::new();
        for body in
            ["not json", r#"{"usage":{}}"#, &format!(r#"{{"usage":{{"total_tokens":1}},"pad":"{}"}}"#, "x".repeat(64))]
        {
            let before = limiter.tokens(&chat(), "id", 1);
            let (_, response) = settle_answer(&limiter, 50, body).await;
            let sent = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            assert_eq!(sent, body.as_bytes(), "the answer is relayed whole");
            assert_eq!(limiter.tokens(&chat(), "id", 1), before - 50, "{body}");
        }
    }

    #[tokio::test]
    async fn a_model_that_refused_without_usage_gives_the_whole_reservation_back() {
        let limiter = MemoryLimiter::new();
        let refused = r#"{"error":{"message":"max_tokens is too large"}}"#;
        for status in [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND, StatusCode::TOO_MANY_REQUESTS] {
            let before = limiter.tokens(&chat(), "id", 1);
            let (decision, response) = settle_answer_with(&limiter, 84, status, refused).await;
            assert_eq!(response.status(), status, "relayed as the model sent it");
            assert_eq!(limiter.tokens(&chat(), "id", 1), before, "{status}: nothing charged");
            assert_eq!(decision.limits[1].remaining, before, "the headers show the bucket as it was");
        }
        // Also when the refusal is longer than max_response_bytes (64 here): it is not read.
        let before = limiter.tokens(&chat(), "id", 1);
        settle_answer_with(&limiter, 84, StatusCode::BAD_REQUEST, &"x".repeat(100)).await;
        assert_eq!(limiter.tokens(&chat(), "id", 1), before);
        // A 4xx that reports usage is charged its usage; a 5xx keeps the reservation.
        let before = limiter.tokens(&chat(), "id", 1);
        settle_answer_with(&limiter, 84, StatusCode::BAD_REQUEST, r#"{"usage":{"total_tokens":4}}"#).await;
        assert_eq!(limiter.tokens(&chat(), "id", 1), before - 4);
        settle_answer_with(&limiter, 84, StatusCode::INTERNAL_SERVER_ERROR, refused).await;
        assert_eq!(limiter.tokens(&chat(), "id", 1), before - 4 - 84);
    }

    /// Redis gone between the check and the end of the answer: the client gets the answer as
    /// the model sent it, the reservation stands as the charge (a refund is lost, an overage
    /// is not charged), and the metrics count the reservation as charged.
    #[tokio::test]
    async fn a_settlement_that_fails_keeps_the_reservation_and_relays_the_answer() {
        use crate::limiter::faulty::{Faulty, Op};
        use crate::test_support::series;
        let limiter = Faulty::new(MemoryLimiter::new());
        let mut policy = Policy::simple("settle-fails", &["/"], 10, 60, 10);
        policy.limits.push(Quota { name: "tokens".into(), unit: Unit::Tokens, limit: 1000, window: 60, burst: 1000 });
        let policy = Arc::new(policy);
        let llm = Llm { chars_per_token: 4, default_max_tokens: 10, max_response_bytes: 1024, max_event_bytes: 1024 };
        for (op, usage) in [(Op::Refund, 30), (Op::Force, 170)] {
            limiter.fail(op, true);
            let before = limiter.inner.tokens(&policy, "id", 1);
            let mut decision = limiter.check(&policy, "id", &[1, 100]).await.unwrap();
            let settlement = Settlement {
                limiter: limiter.clone(),
                policy: policy.clone(),
                identity_hash: "id".into(),
                reserved: 100,
                llm,
                strip_usage_chunk: false,
            };
            let body = format!(r#"{{"usage":{{"total_tokens":{usage}}}}}"#);
            let answer = Response::builder().body(Body::from(body.clone())).unwrap();
            let response = settlement.settle(&mut decision, answer).await;
            assert_eq!(response.status(), StatusCode::OK);
            let sent = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            assert_eq!(sent, body.as_bytes(), "{op:?}: relayed whole");
            assert_eq!(limiter.calls(op), 1, "{op:?}: tried once");
            assert_eq!(limiter.inner.tokens(&policy, "id", 1), before - 100, "{op:?}: the reservation stands");
            assert_eq!(decision.limits[1].remaining, before - 100, "{op:?}: the headers say so");
            limiter.fail(op, false);
        }
        assert_eq!(series(r#"gateway_tokens_charged_total{policy="settle-fails",limit="tokens"}"#), 200);
        assert_eq!(series(r#"gateway_tokens_refunded_total{policy="settle-fails",limit="tokens"}"#), 0);
    }
}
