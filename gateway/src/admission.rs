//! The admission decision both front ends share, whatever carried the request: the HTTP limit
//! step ([`crate::pipeline`]) and the Envoy rate limit service ([`crate::rls`]) both charge a
//! request through [`Admission::check`] and give a refused request's charge back through
//! [`Admission::give_back`].
//!
//! - **One call, all or nothing**: every limit of the request in one `RL.CHECK`/`RL.CHECKALL`;
//!   a refusal by any limit charges none.
//! - **The deny cache** ([`crate::deny_cache`]) first: a request Redis refused a moment ago
//!   (the same limits, at least the same costs where they refused) is refused again without a
//!   call. The HTTP step names the caller in it by its identity; the Envoy service by the
//!   request's buckets, since all of a domain's buckets share one identity (the hash tag).
//! - **Failures** come back as [`LimiterError`]s, split by [`LimiterError::is_outage`]: what an
//!   outage does is the transport's to say (`failure_mode` for HTTP, Envoy's own
//!   `failure_mode_deny` for gRPC); a refusal by the module itself is never an outage.
//! - **Metrics**: every limiter call is timed by [`crate::limiter::Metered`], which
//!   both front ends wrap their limiter in; deny-cache hits are counted here.

use std::time::Instant;

use rl_protocol::CheckAllReply;

use crate::config::{DenyCacheSettings, Policy, Unit};
use crate::deny_cache::DenyCache;
use crate::limiter::{LimiterError, RateLimiter};
use crate::log_limit::warn_every;
use crate::metrics::metrics;

/// A limiter and the deny cache in front of it.
pub struct Admission<L> {
    limiter: L,
    deny_cache: DenyCache,
}

impl<L: RateLimiter> Admission<L> {
    pub fn new(limiter: L, deny_cache: DenyCacheSettings) -> Self {
        Admission { limiter, deny_cache: DenyCache::new(deny_cache) }
    }

    /// The limiter, for what is not an admission (leases, settlements, refunds).
    pub fn limiter(&self) -> &L {
        &self.limiter
    }

    /// Takes `costs[i]` from limit `i` of `policy` for `identity_hash`, all or none, unless
    /// the deny cache remembers a refusal for `cache_as` that answers this request.
    pub async fn check(
        &self,
        policy: &Policy,
        identity_hash: &str,
        cache_as: &str,
        costs: &[u64],
    ) -> Result<CheckAllReply, LimiterError> {
        let asked_at = Instant::now();
        if let Some(refusal) = self.deny_cache.refusal(policy, cache_as, costs, asked_at) {
            metrics().deny_cache_hit(&policy.name);
            return Ok(refusal);
        }
        let decision = self.limiter.check(policy, identity_hash, costs).await?;
        // The refusal's moment is counted from before the call: never later than Redis's.
        self.deny_cache.remember(policy, cache_as, costs, &decision, asked_at);
        Ok(decision)
    }

    /// Tokens were given back to limit `limit` of the policy named `policy` by a call of its
    /// own (not [`Admission::give_back`]): refusals remembered there no longer hold.
    pub fn refunded(&self, policy: &str, limit: &str) {
        self.deny_cache.forget_limit(policy, limit);
    }

    /// Gives back what a request refused after its check was charged: `costs[i]` on each
    /// limit. Awaited, so the refusal's headers (`decision`, updated here) show the bucket as
    /// it is again; a refund that fails is logged (the bucket keeps the charge).
    pub async fn give_back(&self, policy: &Policy, identity_hash: &str, costs: &[u64], decision: &mut CheckAllReply) {
        for (i, &cost) in costs.iter().enumerate().filter(|(_, &cost)| cost > 0) {
            match self.limiter.refund(policy, identity_hash, i, cost).await {
                Ok(back) => {
                    if let Some(quota) = policy.limits.get(i).filter(|q| q.unit == Unit::Tokens) {
                        metrics().tokens_refunded(&policy.name, &quota.name, cost);
                    }
                    if let Some(row) = decision.limits.get_mut(i) {
                        row.remaining = back.remaining;
                        row.reset_after_ms = back.reset_after_ms;
                    }
                }
                Err(e) => {
                    warn_every!(error = %e, limit = i, cost, "could not give back the tokens of a refused request")
                }
            }
        }
    }
}
