//! A rate limit service for Envoy (`envoy.service.ratelimit.v3.RateLimitService`) on the same
//! limiter as the HTTP gateway. [`config`]: envoyproxy/ratelimit's YAML configuration, read as
//! it is, and the lookup of a request's descriptors in it; [`plan`]: what one request asks of
//! the limiter, per descriptor, before any call.

pub mod config;
pub mod decide;
pub mod grpc;
pub mod listener;
pub mod plan;
