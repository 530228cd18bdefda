//! The limit behind each request, reached through [`RateLimiter`]: one `RL.CHECK` on Redis
//! ([`RedisLimiter`]), or in unit tests an in-memory stand-in (`memory::MemoryLimiter`).

#[cfg(test)]
pub mod memory;
mod redis;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use rl_protocol::CheckReply;

use crate::config::Policy;

pub use self::redis::{ClientError, RedisLimiter, CLUSTER_COMMAND_RETRIES};

/// Where the buckets live. The gateway picks one implementation at start and uses it for
/// every request, so the trait is used through generics (static dispatch, no boxed future per
/// request) and need not be object safe.
pub trait RateLimiter: Clone + Send + Sync + 'static {
    /// Takes one token from the bucket of `identity_hash` under `policy`, and says what is
    /// left. A refused request takes nothing.
    fn check(
        &self,
        policy: &Policy,
        identity_hash: &str,
    ) -> impl Future<Output = Result<CheckReply, LimiterError>> + Send;

    /// Whether the limiter answers (for `/readyz` and the start-up probe); takes nothing.
    fn ready(&self) -> impl Future<Output = Result<(), LimiterError>> + Send;
}

/// The limiter did not answer in time, or answered something other than a decision.
#[derive(Debug)]
pub enum LimiterError {
    Timeout(Duration),
    Redis(::redis::RedisError),
    /// The answer is not the shape of an `RL.CHECK` reply.
    Reply(::redis::ParsingError),
}

impl fmt::Display for LimiterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimiterError::Timeout(d) => write!(f, "redis did not answer within {} ms", d.as_millis()),
            LimiterError::Redis(e) => write!(f, "redis error: {e}"),
            LimiterError::Reply(r) => write!(f, "unexpected reply from RL.CHECK: {r}"),
        }
    }
}

impl std::error::Error for LimiterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LimiterError::Timeout(_) => None,
            LimiterError::Redis(e) => Some(e),
            LimiterError::Reply(e) => Some(e),
        }
    }
}
