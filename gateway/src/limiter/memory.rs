//! An in-memory [`RateLimiter`] for unit tests: the same GCRA as the module (in whole
//! microseconds), on a clock that moves only when the test says so, and a switch that makes
//! it fail like an unreachable Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rl_protocol::CheckReply;

use super::{LimiterError, RateLimiter};
use crate::config::Policy;

#[derive(Clone, Default)]
pub struct MemoryLimiter(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// The theoretical arrival time of each bucket, in µs on the test clock.
    tats: HashMap<String, u64>,
    now_us: u64,
    down: bool,
    checks: u64,
}

impl MemoryLimiter {
    pub fn new() -> Self {
        MemoryLimiter::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.lock().unwrap().now_us += u64::try_from(by.as_micros()).unwrap();
    }

    /// `true`: every call fails, as if Redis did not answer.
    pub fn set_down(&self, down: bool) {
        self.0.lock().unwrap().down = down;
    }

    /// How many checks were made (admitted or not): a request refused earlier made none.
    pub fn checks(&self) -> u64 {
        self.0.lock().unwrap().checks
    }

    /// The identity hashes that own a bucket under `policy`.
    pub fn identities(&self, policy: &str) -> Vec<String> {
        let state = self.0.lock().unwrap();
        let prefix = format!("{policy}:");
        state.tats.keys().filter_map(|k| k.strip_prefix(&prefix)).map(str::to_string).collect()
    }
}

fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

impl RateLimiter for MemoryLimiter {
    async fn check(&self, policy: &Policy, identity_hash: &str) -> Result<CheckReply, LimiterError> {
        let mut state = self.0.lock().unwrap();
        if state.down {
            return Err(LimiterError::Timeout(Duration::from_millis(1)));
        }
        state.checks += 1;
        let now = state.now_us;
        let interval = policy.window * 1_000_000 / policy.limit;
        let tolerance = policy.burst * interval;
        let key = format!("{}:{identity_hash}", policy.name);
        let tat = state.tats.get(&key).copied().unwrap_or(now).max(now);
        let new_tat = tat + interval;
        let reply = if new_tat - now <= tolerance {
            state.tats.insert(key, new_tat);
            CheckReply {
                allowed: true,
                remaining: (tolerance - (new_tat - now)) / interval,
                retry_after_ms: Some(0),
                reset_after_ms: ceil_ms(new_tat - now),
                burst: policy.burst,
            }
        } else {
            CheckReply {
                allowed: false,
                remaining: (tolerance - (tat - now)) / interval,
                retry_after_ms: Some(ceil_ms(new_tat - now - tolerance)),
                reset_after_ms: ceil_ms(tat - now),
                burst: policy.burst,
            }
        };
        Ok(reply)
    }

    async fn ready(&self) -> Result<(), LimiterError> {
        match self.0.lock().unwrap().down {
            true => Err(LimiterError::Timeout(Duration::from_millis(1))),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_answers_like_the_module() {
        // 3 per minute: a token every 20 s, a bucket of 3 (the e2e tests' numbers).
        let policy = Policy { name: "p".into(), paths: vec!["/".into()], limit: 3, window: 60, burst: 3 };
        let limiter = MemoryLimiter::new();
        let mut replies = Vec::new();
        for _ in 0..4 {
            let r = limiter.check(&policy, "id").await.unwrap();
            replies.push((r.allowed, r.remaining, r.retry_after_ms, r.reset_after_ms));
        }
        #[rustfmt::skip]
        assert_eq!(replies, [
            (true, 2, Some(0), 20_000),
            (true, 1, Some(0), 40_000),
            (true, 0, Some(0), 60_000),
            (false, 0, Some(20_000), 60_000),
        ]);
        limiter.advance(Duration::from_secs(20));
        assert!(limiter.check(&policy, "id").await.unwrap().allowed);
        assert!(limiter.check(&policy, "other").await.unwrap().allowed, "buckets are per identity");
        assert_eq!(limiter.checks(), 6);
    }
}
