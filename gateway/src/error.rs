//! Every answer the gateway makes itself (rather than relaying the model's): one variant per
//! failure, each with its status and a JSON body `{"error":{"type":..., "message":...}}` that
//! says what to do, never how the gateway is built. The internal cause is logged once, when
//! the response is made.

use std::fmt::Write;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::identity::BadIdentity;
use crate::llm::BadLlmRequest;
use crate::log_limit::{error_every, warn_every};

/// `x-should-retry`: the header the OpenAI and Anthropic SDKs read before their own retry rule.
pub const SHOULD_RETRY: &str = "x-should-retry";

#[derive(Debug)]
pub enum ApiError {
    /// `429`; `retry_after_secs` (the longest wait) is `None` when the request can never be
    /// admitted; `limits` are the limits that refused it.
    RateLimited {
        retry_after_secs: Option<u64>,
        limits: Vec<RefusedLimit>,
    },
    /// `429`: the caller already has `max_concurrent` requests in flight under the policy (its
    /// rate-limit tokens were given back); `limit` names the policy and `"concurrent"`.
    ConcurrencyLimited {
        retry_after_secs: u64,
        limit: RefusedLimit,
    },
    /// `503`: the upstream is full (`[upstream] max_concurrent` leases all held); the tokens
    /// taken for the request were given back.
    UpstreamBusy {
        retry_after_secs: u64,
        limit: RefusedLimit,
    },
    /// `400`; before any quota is spent, except the two found while forwarding
    /// ([`BadRequest::UnreadableBody`], [`BadRequest::InvalidTarget`]).
    BadRequest(BadRequest),
    /// `400 invalid_request_error`: an LLM route's body is not the JSON it expects (nothing
    /// charged).
    InvalidLlmRequest(BadLlmRequest),
    /// `401`: no API key and `identity.require_api_key = true`.
    Unauthorized,
    /// `408`: the request body did not arrive within `client_body_timeout_ms`.
    RequestTimeout {
        ms: u64,
    },
    PayloadTooLarge {
        limit: u64,
    },
    /// `502`: the model could not be reached (or broke the connection).
    UpstreamUnavailable {
        detail: String,
    },
    /// `504`: the model did not answer within `upstream.timeout_ms`.
    UpstreamTimeout {
        detail: String,
    },
    /// `503`: Redis failed and `failure_mode = "closed"`.
    LimiterUnavailable {
        detail: String,
    },
    /// `500`: the module refused the gateway's command (arguments out of its bounds, or a key
    /// holding other data). A fault on the gateway's side, whatever `failure_mode` says.
    LimiterRejected {
        detail: String,
    },
}

/// One limit that refused a request, in the `429` (or `503 upstream_busy`) body:
/// `{"policy", "name", "unit", "retry_after_ms"}` (`retry_after_ms` is `null` when this limit can
/// never admit the request). `size` is for the message only.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefusedLimit {
    pub policy: String,
    pub name: String,
    /// What the limit counts: `requests`, `tokens` or `concurrent_requests`.
    pub unit: &'static str,
    pub retry_after_ms: Option<u64>,
    #[serde(skip)]
    pub size: LimitSize,
}

/// How large a refusing limit is, for the message that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSize {
    /// `limit` per `window` seconds, a bucket of `burst`.
    Rate { limit: u64, window: u64, burst: u64 },
    /// `max` requests in flight at once.
    Concurrent { max: u64 },
}

impl RefusedLimit {
    /// `"tokens" of policy "chat" (1000 tokens per 60 seconds)`, onto `out`. (Names are
    /// letters, digits, `-`, `_` and `.`, so they are quoted as they are: no escaping.)
    fn describe(&self, out: &mut String) {
        self.name_and_policy(out);
        match self.size {
            LimitSize::Rate { limit, window, .. } => {
                let _ = write!(out, " ({limit} {}{} per {window} second{})", self.unit_word(), s(limit), s(window));
            }
            LimitSize::Concurrent { max } => {
                let _ = write!(out, " ({max} in flight at once)");
            }
        }
    }

    /// `"tokens" of policy "chat" holds at most 1000 tokens`: why a request above its burst
    /// never fits.
    fn describe_burst(&self, out: &mut String) {
        match self.size {
            LimitSize::Rate { burst, .. } => {
                self.name_and_policy(out);
                let _ = write!(out, " holds at most {burst} {}{}", self.unit_word(), s(burst));
            }
            LimitSize::Concurrent { .. } => self.describe(out),
        }
    }

    fn name_and_policy(&self, out: &mut String) {
        for part in ["\"", &self.name, "\" of policy \"", &self.policy, "\""] {
            out.push_str(part);
        }
    }

    /// `request` or `token`: one of what the limit counts.
    fn unit_word(&self) -> &'static str {
        self.unit.strip_suffix('s').unwrap_or(self.unit)
    }
}

/// The plural `s` of `n` things.
fn s(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `prefix`, the limits of a refusal (`; `-separated, each as `describe` says), then `suffix`:
/// a refusal's message, built in one string (it is made for every refused request).
fn refusal_message(
    prefix: &str,
    limits: &[RefusedLimit],
    describe: fn(&RefusedLimit, &mut String),
    suffix: std::fmt::Arguments,
) -> String {
    let mut out = String::with_capacity(160);
    out.push_str(prefix);
    for (i, limit) in limits.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        describe(limit, &mut out);
    }
    let _ = out.write_fmt(suffix);
    out
}

/// Why a request is refused with `400`.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// `OPTIONS *`, `CONNECT host:port`: nothing to forward to the model.
    NotAPath,
    /// The API-key headers, or `X-Forwarded-For` from a trusted proxy.
    Identity(BadIdentity),
    /// A `Content-Length` that is not a number (hyper refuses most of those itself).
    ContentLength,
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 section 6.1): the shape of
    /// request smuggling, where the gateway and the model could read different bodies.
    LengthAndTransferEncoding,
    /// The connection failed while the body was being read.
    UnreadableBody,
    /// The normalized path does not make a valid upstream URI.
    InvalidTarget,
    /// The path's percent-escapes decode to bytes that are not UTF-8.
    PathNotUtf8,
    /// More than one `Host` header (RFC 9112 section 3.2: answer `400`).
    DuplicateHost,
    /// No `Host` in an HTTP/1.1 request, or one that is not a host and port.
    BadHost,
}

impl BadRequest {
    pub fn message(&self) -> &'static str {
        match self {
            BadRequest::NotAPath => "The request target must be a path starting with '/'.",
            BadRequest::Identity(why) => why.message(),
            BadRequest::ContentLength => "Malformed Content-Length header.",
            BadRequest::LengthAndTransferEncoding => {
                "A request may not carry both Content-Length and Transfer-Encoding."
            }
            BadRequest::UnreadableBody => "The request body could not be read.",
            BadRequest::InvalidTarget => "The request target is not a valid path.",
            BadRequest::PathNotUtf8 => "The request path's percent-escapes must decode to UTF-8.",
            BadRequest::DuplicateHost => "The request has more than one Host header.",
            BadRequest::BadHost => "An HTTP/1.1 request needs one Host header naming a host (and port).",
        }
    }
}

impl From<BadRequest> for ApiError {
    fn from(why: BadRequest) -> Self {
        ApiError::BadRequest(why)
    }
}

impl From<BadIdentity> for ApiError {
    fn from(why: BadIdentity) -> Self {
        ApiError::BadRequest(BadRequest::Identity(why))
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::RateLimited { .. } | ApiError::ConcurrencyLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpstreamBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadRequest(_) | ApiError::InvalidLlmRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::LimiterUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::LimiterRejected { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> serde_json::Value {
        match self {
            ApiError::RateLimited { retry_after_secs: Some(secs), limits } => json!({"error": {
                "type": "rate_limited",
                "message": refusal_message(
                    "Rate limit exceeded: ",
                    limits,
                    RefusedLimit::describe,
                    format_args!(". Please try again after {secs} second{}.", s(*secs)),
                ),
                "retry_after_seconds": secs,
                "limits": limits,
            }}),
            ApiError::RateLimited { retry_after_secs: None, limits } => json!({"error": {
                "type": "rate_limited",
                "message": refusal_message(
                    "This request is larger than its rate limit allows and can never be admitted: ",
                    limits,
                    RefusedLimit::describe_burst,
                    format_args!(". Retrying will not help; ask for less."),
                ),
                "limits": limits,
            }}),
            ApiError::ConcurrencyLimited { retry_after_secs: secs, limit } => json!({"error": {
                "type": "rate_limited",
                "message": refusal_message(
                    "Too many concurrent requests: ",
                    std::slice::from_ref(limit),
                    RefusedLimit::describe,
                    format_args!(". Please try again after {secs} second{}.", s(*secs)),
                ),
                "retry_after_seconds": secs,
                "limits": [limit],
            }}),
            ApiError::UpstreamBusy { retry_after_secs: secs, limit } => json!({"error": {
                "type": "upstream_busy",
                "message": refusal_message(
                    "The model service is at capacity: ",
                    std::slice::from_ref(limit),
                    RefusedLimit::describe,
                    format_args!(". Please try again after {secs} second{}.", s(*secs)),
                ),
                "retry_after_seconds": secs,
                "limits": [limit],
            }}),
            ApiError::BadRequest(why) => json!({"error": {"type": "bad_request", "message": why.message()}}),
            ApiError::InvalidLlmRequest(why) => json!({"error": {
                "type": "invalid_request_error",
                "message": why.message(),
                "param": why.param(),
            }}),
            ApiError::Unauthorized => json!({"error": {
                "type": "unauthorized",
                "message": "An API key is required.",
            }}),
            ApiError::RequestTimeout { ms } => json!({"error": {
                "type": "request_timeout",
                "message": format!("The request body did not arrive within {ms} ms."),
            }}),
            ApiError::PayloadTooLarge { limit } => json!({"error": {
                "type": "payload_too_large",
                "message": format!("The request body is larger than {limit} bytes."),
            }}),
            ApiError::UpstreamUnavailable { .. } => json!({"error": {
                "type": "upstream_unavailable",
                "message": "The model service is unreachable. Please try again later.",
            }}),
            ApiError::UpstreamTimeout { .. } => json!({"error": {
                "type": "upstream_timeout",
                "message": "The model service did not answer in time.",
            }}),
            ApiError::LimiterUnavailable { .. } => json!({"error": {
                "type": "rate_limiter_unavailable",
                "message": "The rate limiter is unavailable. Please try again later.",
            }}),
            ApiError::LimiterRejected { .. } => json!({"error": {
                "type": "internal_error",
                "message": "The rate limiter could not evaluate this request; the gateway's operator can see why in its log.",
            }}),
        }
    }

    fn log(&self) {
        match self {
            ApiError::UpstreamUnavailable { detail } => warn_every!(%detail, "upstream unreachable"),
            ApiError::UpstreamTimeout { detail } => warn_every!(%detail, "upstream timed out"),
            ApiError::LimiterUnavailable { detail } => error_every!(%detail, "rate limiter unavailable, refusing"),
            ApiError::LimiterRejected { detail } => {
                error_every!(%detail, "the ratelimit module refused the gateway's command, refusing with 500")
            }
            ApiError::BadRequest(why) => tracing::debug!(why = why.message(), "bad request"),
            ApiError::InvalidLlmRequest(why) => tracing::debug!(why = %why.message(), "invalid LLM request"),
            ApiError::RequestTimeout { ms } => tracing::debug!(ms, "request body timed out"),
            ApiError::UpstreamBusy { .. } => tracing::debug!("upstream full, shedding"),
            ApiError::PayloadTooLarge { .. }
            | ApiError::RateLimited { .. }
            | ApiError::ConcurrencyLimited { .. }
            | ApiError::Unauthorized => {}
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        match self {
            ApiError::RateLimited { retry_after_secs: Some(secs), .. }
            | ApiError::ConcurrencyLimited { retry_after_secs: secs, .. }
            | ApiError::UpstreamBusy { retry_after_secs: secs, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            // Never admitted however long the client waits: the OpenAI SDKs (and others that
            // read it) then do not retry, where a bare 429 would be retried with backoff.
            ApiError::RateLimited { retry_after_secs: None, .. } => {
                response.headers_mut().insert(SHOULD_RETRY, HeaderValue::from_static("false"));
            }
            ApiError::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body is still on the wire: this connection cannot carry another request.
            ApiError::RequestTimeout { .. } => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
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
