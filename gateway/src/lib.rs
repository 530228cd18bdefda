//! The reference HTTP gateway in front of an ML model API, rate limited by the `ratelimit`
//! Redis module, plus the demo model and the demo client (all one binary, `gateway`).
//!
//! - [`app::app`] builds the gateway's router from [`app::AppState`] (tests drive it too).
//! - [`config`] reads `gateway.toml` and the flags into checked [`config::Settings`].
//! - [`identity`] finds the caller (API key or client IP) and hashes it for the key name.
//! - [`limiter`] makes the one `RL.CHECK` round trip per request.
//! - [`headers`] writes `RateLimit-Policy`, `RateLimit`, `X-RateLimit-*`.
//! - [`proxy`] forwards admitted requests to the model and streams the answer back.
//! - [`model`] is the demo sentiment model; [`client`] the demo client.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod client;
pub mod config;
pub mod error;
pub mod headers;
pub mod identity;
pub mod limiter;
pub mod model;
pub mod proxy;
pub mod serve;
