//! [`Metered`]: any [`RateLimiter`] with each call timed into
//! `gateway_redis_duration_seconds{command, result}` ([`crate::metrics`]), the result being
//! `ok`, `timeout`, `rejected` (the module refused the command) or `error`. The app wraps the
//! limiter it is given, so every call the pipeline, the leases and the settlements make is
//! counted, whatever the backend.

use std::future::Future;
use std::time::Instant;

use rl_protocol::{AcquireReply, CheckAllReply, CheckReply, RefundReply};

use super::{LimiterError, RateLimiter};
use crate::config::{Policy, Quota};
use crate::lease::Slot;
use crate::metrics::metrics;

#[derive(Clone)]
pub struct Metered<L>(pub L);

/// Runs `call`, recording its time and whether it answered under `command`.
async fn timed<T>(
    command: &'static str,
    call: impl Future<Output = Result<T, LimiterError>>,
) -> Result<T, LimiterError> {
    let started = Instant::now();
    let result = call.await;
    let label = match &result {
        Ok(_) => "ok",
        Err(LimiterError::Timeout(_)) => "timeout",
        Err(LimiterError::Rejected(_)) => "rejected",
        Err(_) => "error",
    };
    metrics().redis_call(command, label, started.elapsed());
    result
}

impl<L: RateLimiter> RateLimiter for Metered<L> {
    async fn check(&self, policy: &Policy, identity_hash: &str, costs: &[u64]) -> Result<CheckAllReply, LimiterError> {
        let command = if policy.limits.len() == 1 { "check" } else { "checkall" };
        timed(command, self.0.check(policy, identity_hash, costs)).await
    }

    async fn refund(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        amount: u64,
    ) -> Result<RefundReply, LimiterError> {
        timed("refund", self.0.refund(policy, identity_hash, index, amount)).await
    }

    async fn force(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        amount: u64,
    ) -> Result<CheckReply, LimiterError> {
        timed("force", self.0.force(policy, identity_hash, index, amount)).await
    }

    async fn check_shared(&self, quota: &Quota, cost: u64, keep: u64) -> Result<CheckReply, LimiterError> {
        timed("check_shared", self.0.check_shared(quota, cost, keep)).await
    }

    async fn acquire(&self, slot: &Slot, max: u64, lease_ms: u64, id: &str) -> Result<AcquireReply, LimiterError> {
        timed("acquire", self.0.acquire(slot, max, lease_ms, id)).await
    }

    async fn release(&self, slot: &Slot, id: &str) -> Result<bool, LimiterError> {
        timed("release", self.0.release(slot, id)).await
    }

    async fn renew(&self, slot: &Slot, id: &str, lease_ms: u64) -> Result<bool, LimiterError> {
        timed("renew", self.0.renew(slot, id, lease_ms)).await
    }

    async fn ready(&self) -> Result<(), LimiterError> {
        timed("ready", self.0.ready()).await
    }

    fn backend(&self) -> Option<&'static str> {
        self.0.backend()
    }
}
