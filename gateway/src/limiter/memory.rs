//! An in-memory [`RateLimiter`] for unit tests: the same GCRA as the module (in whole
//! microseconds), on a clock that moves only when the test says so, and a switch that makes
//! it fail like an unreachable Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rl_protocol::{AcquireReply, CheckAllReply, CheckReply, RefundReply};

use super::{LimiterError, RateLimiter};
use crate::config::{Policy, Quota};
use crate::lease::Slot;

#[derive(Clone, Default)]
pub struct MemoryLimiter(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// The theoretical arrival time of each bucket, in µs on the test clock.
    tats: HashMap<String, u64>,
    now_us: u64,
    down: bool,
    checks: u64,
    /// Lease sets: lease id -> deadline in µs on the test clock.
    leases: HashMap<String, HashMap<String, u64>>,
}

impl MemoryLimiter {
    pub fn new() -> Self {
        MemoryLimiter::default()
    }

    /// The state, or the error an unreachable Redis gives while the test has it `down`.
    fn reachable(&self) -> Result<std::sync::MutexGuard<'_, State>, LimiterError> {
        let state = self.0.lock().unwrap();
        if state.down {
            return Err(LimiterError::Timeout(Duration::from_millis(1)));
        }
        Ok(state)
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

    /// Whole tokens in limit `index` of `policy` for `identity_hash` now, taking nothing.
    pub fn tokens(&self, policy: &Policy, identity_hash: &str, index: usize) -> u64 {
        let state = self.0.lock().unwrap();
        let q = &policy.limits[index];
        decide(q, state.tats.get(&key(policy, q, identity_hash)).copied(), state.now_us, 0).0.remaining
    }

    /// The identity hashes that own a bucket under `policy`.
    pub fn identities(&self, policy: &str) -> Vec<String> {
        let state = self.0.lock().unwrap();
        let infix = format!("}}:{policy}:");
        let mut ids: Vec<String> = state
            .tats
            .keys()
            .filter_map(|k| k.split_once(&infix).map(|(id, _)| id.trim_start_matches('{').to_string()))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

impl MemoryLimiter {
    /// Live leases of `slot` now.
    pub fn in_flight(&self, slot: &Slot) -> usize {
        let state = self.0.lock().unwrap();
        let now = state.now_us;
        state.leases.get(&lease_key(slot)).map_or(0, |set| set.values().filter(|&&d| d > now).count())
    }
}

fn lease_key(slot: &Slot) -> String {
    crate::limiter::redis::lease_key("", slot)
}

fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(1000)
}

/// The GCRA for one bucket at `now`: the decision for `cost` and the new TAT if admitted.
fn decide(quota: &Quota, tat: Option<u64>, now: u64, cost: u64) -> (CheckReply, Option<u64>) {
    let interval = quota.window * 1_000_000 / quota.limit;
    let tolerance = quota.burst * interval;
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(cost.saturating_mul(interval));
    let remaining = |tat: u64| (tolerance.saturating_sub(tat - now)) / interval;
    if new_tat - now <= tolerance {
        let reply = CheckReply {
            allowed: true,
            remaining: remaining(new_tat),
            retry_after_ms: Some(0),
            reset_after_ms: ceil_ms(new_tat - now),
            burst: quota.burst,
        };
        (reply, (cost > 0).then_some(new_tat))
    } else {
        let retry = (cost <= quota.burst).then(|| ceil_ms(new_tat - now - tolerance));
        let reply = CheckReply {
            allowed: false,
            remaining: remaining(tat),
            retry_after_ms: retry,
            reset_after_ms: ceil_ms(tat - now),
            burst: quota.burst,
        };
        (reply, None)
    }
}

/// The bucket of one limit: `{hash}:policy:limit`, like the Redis key without its prefix.
fn key(policy: &Policy, quota: &Quota, identity_hash: &str) -> String {
    format!("{{{identity_hash}}}:{}:{}", policy.name, quota.name)
}

impl RateLimiter for MemoryLimiter {
    async fn check(&self, policy: &Policy, identity_hash: &str, costs: &[u64]) -> Result<CheckAllReply, LimiterError> {
        let mut state = self.reachable()?;
        state.checks += 1;
        let now = state.now_us;
        let decisions: Vec<(String, CheckReply, Option<u64>)> = policy
            .limits
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let key = key(policy, q, identity_hash);
                let (reply, tat) = decide(q, state.tats.get(&key).copied(), now, costs[i]);
                (key, reply, tat)
            })
            .collect();
        let allowed = decisions.iter().all(|(_, r, _)| r.allowed);
        let mut retry_after_ms = Some(0);
        for (key, reply, tat) in &decisions {
            if allowed {
                if let Some(tat) = tat {
                    state.tats.insert(key.clone(), *tat);
                }
            } else if !reply.allowed {
                retry_after_ms = match (retry_after_ms, reply.retry_after_ms) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
        }
        // A refusal reports each bucket untouched (an admitted row says what it would leave).
        let limits = decisions
            .into_iter()
            .zip(&policy.limits)
            .map(|((key, reply, _), q)| match (allowed, reply.allowed) {
                (false, true) => CheckReply { allowed: true, ..decide(q, state.tats.get(&key).copied(), now, 0).0 },
                _ => reply,
            })
            .collect();
        Ok(CheckAllReply { allowed, retry_after_ms, limits })
    }

    async fn refund(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        amount: u64,
    ) -> Result<RefundReply, LimiterError> {
        let mut state = self.reachable()?;
        let q = &policy.limits[index];
        let key = key(policy, q, identity_hash);
        let now = state.now_us;
        let interval = q.window * 1_000_000 / q.limit;
        if let Some(tat) = state.tats.get(&key).copied() {
            let back = tat.saturating_sub(amount * interval).max(now);
            state.tats.insert(key.clone(), back);
        }
        let (peek, _) = decide(q, state.tats.get(&key).copied(), now, 0);
        Ok(RefundReply { remaining: peek.remaining, reset_after_ms: peek.reset_after_ms })
    }

    async fn force(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        amount: u64,
    ) -> Result<CheckReply, LimiterError> {
        let mut state = self.reachable()?;
        let q = &policy.limits[index];
        let key = key(policy, q, identity_hash);
        let now = state.now_us;
        let interval = q.window * 1_000_000 / q.limit;
        let tat = state.tats.get(&key).copied().unwrap_or(now).max(now) + amount * interval;
        state.tats.insert(key, tat);
        let (peek, _) = decide(q, Some(tat), now, 0);
        Ok(CheckReply { allowed: true, ..peek })
    }

    async fn check_shared(&self, quota: &Quota, cost: u64, keep: u64) -> Result<CheckReply, LimiterError> {
        let mut state = self.reachable()?;
        let key = format!("upstream:{}", quota.name);
        let now = state.now_us;
        let tat = state.tats.get(&key).copied();
        // Decided as one of cost + keep, charged cost (the module's KEEP).
        let (decision, _) = decide(quota, tat, now, cost + keep);
        if !decision.allowed {
            return Ok(decision);
        }
        let (reply, new_tat) = decide(quota, tat, now, cost);
        if let Some(new_tat) = new_tat {
            state.tats.insert(key, new_tat);
        }
        Ok(reply)
    }

    async fn acquire(&self, slot: &Slot, max: u64, lease_ms: u64, id: &str) -> Result<AcquireReply, LimiterError> {
        let mut state = self.reachable()?;
        let now = state.now_us;
        let set = state.leases.entry(lease_key(slot)).or_default();
        set.retain(|_, &mut deadline| deadline > now);
        let live = u64::try_from(set.len()).unwrap();
        if set.contains_key(id) || live < max {
            set.insert(id.to_string(), now + lease_ms * 1000);
            let in_flight = u64::try_from(set.len()).unwrap();
            return Ok(AcquireReply { acquired: true, in_flight, max, retry_after_ms: 0 });
        }
        let earliest = set.values().min().copied().unwrap_or(now);
        Ok(AcquireReply { acquired: false, in_flight: live, max, retry_after_ms: ceil_ms(earliest - now) })
    }

    async fn release(&self, slot: &Slot, id: &str) -> Result<bool, LimiterError> {
        let mut state = self.reachable()?;
        let now = state.now_us;
        let set = state.leases.entry(lease_key(slot)).or_default();
        Ok(set.remove(id).is_some_and(|deadline| deadline > now))
    }

    async fn renew(&self, slot: &Slot, id: &str, lease_ms: u64) -> Result<bool, LimiterError> {
        let mut state = self.reachable()?;
        let now = state.now_us;
        let set = state.leases.entry(lease_key(slot)).or_default();
        match set.get_mut(id) {
            Some(deadline) if *deadline > now => {
                *deadline = now + lease_ms * 1000;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn ready(&self) -> Result<(), LimiterError> {
        self.reachable().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_answers_like_the_module() {
        // 3 per minute: a token every 20 s, a bucket of 3 (the e2e tests' numbers).
        let policy = Policy::simple("p", &["/"], 3, 60, 3);
        let limiter = MemoryLimiter::new();
        let mut replies = Vec::new();
        for _ in 0..4 {
            let r = limiter.check(&policy, "id", &[1]).await.unwrap().limits[0];
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
        assert!(limiter.check(&policy, "id", &[1]).await.unwrap().allowed);
        assert!(limiter.check(&policy, "other", &[1]).await.unwrap().allowed, "buckets are per identity");
        assert_eq!(limiter.checks(), 6);
    }

    #[tokio::test]
    async fn several_limits_are_charged_all_or_none() {
        let mut policy = Policy::simple("p", &["/"], 10, 60, 10);
        policy.limits.push(Quota {
            name: "hourly".into(),
            unit: crate::config::Unit::Requests,
            limit: 2,
            window: 3600,
            burst: 2,
        });
        let limiter = MemoryLimiter::new();
        assert!(limiter.check(&policy, "id", &[1, 1]).await.unwrap().allowed);
        assert!(limiter.check(&policy, "id", &[1, 1]).await.unwrap().allowed);
        let refused = limiter.check(&policy, "id", &[1, 1]).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ms, Some(1_800_000));
        assert_eq!((refused.limits[0].allowed, refused.limits[0].remaining), (true, 8), "untouched by the refusal");
        assert!(!refused.limits[1].allowed);
        let never = limiter.check(&policy, "id", &[11, 0]).await.unwrap();
        assert_eq!(never.retry_after_ms, None);
        assert_eq!(limiter.identities("p"), ["id"]);
    }
}
