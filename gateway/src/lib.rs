//! The reference HTTP gateway in front of an ML model API, rate limited by the `ratelimit`
//! Redis module: one `RL.CHECK` (or `RL.CHECKALL`, for several limits) per request, and on
//! LLM routes a settlement after the answer. (The demo model and client that share its binary
//! live in `src/bin/gateway/`, not here.)
//!
//! - [`config`]: `gateway.toml` and the `serve` flags, checked once into [`config::Settings`].
//! - [`startup`]: `gateway serve` with resolved settings; [`serve`] runs a router on a socket.
//! - [`app`]: the router: `/healthz`, `/readyz`, and the [`pipeline`] for everything else
//!   (access log -> checks -> route -> identify -> limit -> proxy, one module per step).
//! - [`routing`]: path normalization and the policy covering a path.
//! - [`hash_key`]: `gateway hash-key`, the digest of an API key for `[[tier]] keys`.
//! - [`identity`]: the caller (API key or client IP) and its keyed hash.
//! - [`limiter`]: the [`limiter::RateLimiter`] trait and its Redis implementation (key names).
//! - [`lease`]: concurrency leases (`max_concurrent`), held until the response body ends.
//! - [`llm`]: OpenAI-compatible routes: the token estimate, and settlement on `usage`.
//! - [`headers`]: `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*` from the module's answer.
//! - [`upstream`]: the HTTP client that forwards to the model.
//! - [`metrics`]: the Prometheus counters and histograms served at `/metrics`.
//! - [`deny_cache`]: callers Redis just refused, answered locally until their retry time.
//! - [`error`]: every answer the gateway makes itself.
//! - [`log_limit`]: log lines that may repeat per request, at most one a second.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admission;
pub mod app;
pub mod config;
pub mod deny_cache;
pub mod error;
/// The fuzz targets' bodies (see `fuzz/`); not part of the gateway's API.
#[doc(hidden)]
pub mod fuzz_targets;
pub mod hash_key;
pub mod headers;
pub mod identity;
pub mod lease;
pub mod limiter;
pub mod llm;
pub mod load_functions;
pub mod log_limit;
pub mod metrics;
pub mod pipeline;
pub mod rls;
pub mod routing;
pub mod serve;
pub mod startup;
pub mod upstream;

#[cfg(test)]
mod test_support;
