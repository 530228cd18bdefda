//! An in-memory [`RateLimiter`] for unit tests, built on the module itself: each call sends
//! the command line [`RedisLimiter`](super::RedisLimiter) sends (`RL.CHECK key limit window
//! COST cost BURST burst`, `RL.CHECKALL`, `RL.REFUND`, `... FORCE`, `... KEEP keep`, the lease
//! commands) to the module's own command bodies (`rl::commands`, the code that runs inside
//! Redis), on a keyspace in memory ([`keyspace`]), and reads the reply with the same decoders
//! (`rl_protocol`). So its GCRA, refunds, forced charges and leases are the module's, to the
//! nanosecond: it cannot drift from it. Its clock moves only when the test says so (in
//! nanoseconds, from 2025-12-01), and a switch makes it fail like an unreachable Redis.
//!
//! `equivalence` checks it against the module's pure math (`rl::gcra`, `rl::lease`) over
//! random operations, which also catches a command line spelled wrong here.
//!
//! The module crate is a dev-dependency of the gateway (it declares a global allocator, as
//! the `gateway` binary does), so this file is compiled only for the unit tests.

mod keyspace;

#[cfg(test)]
mod equivalence;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::FromRedisValue;
use rl::commands;
use rl::reply::Reply;
use rl_protocol::{AcquireReply, CheckAllReply, CheckReply, RefundReply};

use self::keyspace::{Keyspace, Line};
use super::{LimiterError, RateLimiter};
use crate::config::{Policy, Quota};
use crate::lease::Slot;

/// Where the clock starts: 2025-12-01T00:00:00Z, in ns since the Unix epoch (a server's clock
/// reading, so lease deadlines are real millisecond timestamps).
const START_NANOS: u64 = 1_764_547_200_000_000_000;

#[derive(Clone)]
pub struct MemoryLimiter(Arc<Mutex<State>>);

struct State {
    keyspace: Keyspace,
    /// The clock, in ns since the Unix epoch.
    now_nanos: u64,
    down: bool,
    /// Calls answered before the limiter goes `down` by itself (`None`: never).
    down_after: Option<u64>,
    checks: u64,
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        MemoryLimiter(Arc::new(Mutex::new(State {
            keyspace: Keyspace::default(),
            now_nanos: START_NANOS,
            down: false,
            down_after: None,
            checks: 0,
        })))
    }
}

impl MemoryLimiter {
    pub fn new() -> Self {
        MemoryLimiter::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// The state, or the error an unreachable Redis gives while the test has it `down`.
    fn reachable(&self) -> Result<MutexGuard<'_, State>, LimiterError> {
        let mut state = self.state();
        match state.down_after {
            Some(0) => state.down = true,
            Some(n) => state.down_after = Some(n - 1),
            None => {}
        }
        if state.down {
            return Err(LimiterError::Timeout(Duration::from_millis(1)));
        }
        Ok(state)
    }

    /// Moves the clock forward (to the nanosecond).
    pub fn advance(&self, by: Duration) {
        let mut state = self.state();
        state.now_nanos += u64::try_from(by.as_nanos()).unwrap();
    }

    /// `true`: every call fails, as if Redis did not answer.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Answers `calls` more calls, then goes down (a Redis lost in the middle of a request).
    pub fn set_down_after(&self, calls: u64) {
        self.state().down_after = Some(calls);
    }

    /// How many checks were made (admitted or not): a request refused earlier made none.
    pub fn checks(&self) -> u64 {
        self.state().checks
    }

    /// Whole tokens in limit `index` of `policy` for `identity_hash` now, taking nothing
    /// (`RL.PEEK`, read as the tests read it from Redis), also while the limiter is down.
    pub fn tokens(&self, policy: &Policy, identity_hash: &str, index: usize) -> u64 {
        let q = &policy.limits[index];
        let line = Line::new("RL.PEEK").arg(key(policy, q, identity_hash)).arg(q.limit).arg(q.window);
        let peek: CheckReply = self.state().run(&line.arg("BURST").arg(q.burst)).unwrap();
        peek.tokens()
    }

    /// The identity hashes that own a bucket under `policy`.
    pub fn identities(&self, policy: &str) -> Vec<String> {
        let state = self.state();
        let infix = format!("}}:{policy}:");
        let mut ids: Vec<String> = state
            .keyspace
            .buckets()
            .filter_map(|k| k.split_once(&infix).map(|(id, _)| id.trim_start_matches('{').to_string()))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Live leases of `slot` now.
    pub fn in_flight(&self, slot: &Slot) -> usize {
        let state = self.state();
        state.keyspace.live_leases(&lease_key(slot), state.now_nanos / 1_000_000)
    }

    /// The TAT stored under `key` (a bucket's key without prefix), for the equivalence tests.
    #[cfg(test)]
    fn stored(&self, key: &str) -> Option<rl::gcra::Tat> {
        self.state().keyspace.bucket(key)
    }

    #[cfg(test)]
    fn now_nanos(&self) -> u64 {
        self.state().now_nanos
    }
}

impl State {
    /// Runs `line` through the module's command body, as Redis would at `now_nanos`, and
    /// decodes its reply as the Redis limiter does; the module's refusals are
    /// [`LimiterError::Rejected`], with the error text Redis would send.
    fn run<T: FromRedisValue>(&mut self, line: &Line) -> Result<T, LimiterError> {
        let (store, now) = (&mut self.keyspace, self.now_nanos);
        let outcome = match line.command() {
            b"RL.CHECK" => commands::check::run(store, line, now),
            b"RL.CHECKALL" => commands::checkall::run(store, line, now),
            b"RL.PEEK" => commands::peek::run(store, line, now),
            b"RL.REFUND" => commands::refund::run(store, line, now),
            b"RL.ACQUIRE" => commands::acquire::run(store, line, now),
            b"RL.RELEASE" => commands::release::run(store, line, now),
            b"RL.RENEW" => commands::renew::run(store, line, now),
            other => panic!("the in-memory limiter has no command {}", String::from_utf8_lossy(other)),
        };
        match outcome {
            Ok(reply) => T::from_redis_value(wire(reply)).map_err(LimiterError::Reply),
            Err(error) => {
                let sent = redis::parse_redis_value(format!("-{error}\r\n").as_bytes()).unwrap();
                Err(LimiterError::Rejected(sent.extract_error().unwrap_err()))
            }
        }
    }
}

/// A reply as Redis sends it (the module's `ffi::write_reply`).
fn wire(reply: Reply) -> redis::Value {
    use redis::Value::{Array, Int};
    let ints = |values: &[i64]| Array(values.iter().map(|&v| Int(v)).collect());
    match reply {
        Reply::Check(check) => ints(&check.to_array()),
        Reply::CheckAll { allowed, retry_after_ms, rows } => Array(vec![
            Int(i64::from(allowed)),
            Int(retry_after_ms),
            Array(rows.iter().map(|row| ints(&row.to_array())).collect()),
        ]),
        Reply::Refund { remaining, reset_after_ms } => ints(&[remaining, reset_after_ms]),
        Reply::Throttle(throttle) => ints(&throttle.to_array()),
        Reply::Acquire(acquire) => ints(&acquire.to_array()),
        Reply::Int(value) => Int(value),
    }
}

/// The bucket of one limit: the Redis key without its prefix, `{hash}:policy:limit`.
fn key(policy: &Policy, quota: &Quota, identity_hash: &str) -> String {
    crate::limiter::redis::key("", policy, quota, identity_hash)
}

/// The lease set of `slot`, without prefix.
fn lease_key(slot: &Slot) -> String {
    crate::limiter::redis::lease_key("", slot)
}

/// A count as the Redis limiter sends it: at most `i64::MAX`, which the module answers as it
/// would any larger amount.
fn amount(tokens: u64) -> u64 {
    tokens.min(i64::MAX.unsigned_abs())
}

impl RateLimiter for MemoryLimiter {
    async fn check(&self, policy: &Policy, identity_hash: &str, costs: &[u64]) -> Result<CheckAllReply, LimiterError> {
        let mut state = self.reachable()?;
        state.checks += 1;
        let keys: Vec<String> = policy.limits.iter().map(|q| key(policy, q, identity_hash)).collect();
        let cost = |i: usize| amount(costs.get(i).copied().unwrap_or(1));
        match policy.limits.as_slice() {
            [q] => {
                let line = Line::new("RL.CHECK").arg(&keys[0]).arg(q.limit).arg(q.window);
                let reply: CheckReply = state.run(&line.arg("COST").arg(cost(0)).arg("BURST").arg(q.burst))?;
                Ok(CheckAllReply { allowed: reply.allowed, retry_after_ms: reply.retry_after_ms, limits: vec![reply] })
            }
            limits => {
                let mut line = Line::new("RL.CHECKALL").arg(keys.len());
                for key in &keys {
                    line = line.arg(key);
                }
                for (i, q) in limits.iter().enumerate() {
                    line = line.arg(q.limit).arg(q.window).arg(cost(i)).arg(q.burst);
                }
                state.run(&line)
            }
        }
    }

    async fn refund(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        tokens: u64,
    ) -> Result<RefundReply, LimiterError> {
        let mut state = self.reachable()?;
        let q = policy.limits.get(index).ok_or(LimiterError::NoSuchLimit(index))?;
        let line = Line::new("RL.REFUND").arg(key(policy, q, identity_hash)).arg(q.limit).arg(q.window);
        state.run(&line.arg(amount(tokens)).arg("BURST").arg(q.burst))
    }

    async fn force(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        tokens: u64,
    ) -> Result<CheckReply, LimiterError> {
        let mut state = self.reachable()?;
        let q = policy.limits.get(index).ok_or(LimiterError::NoSuchLimit(index))?;
        let line = Line::new("RL.CHECK").arg(key(policy, q, identity_hash)).arg(q.limit).arg(q.window);
        state.run(&line.arg("COST").arg(amount(tokens)).arg("BURST").arg(q.burst).arg("FORCE"))
    }

    async fn check_shared(&self, quota: &Quota, cost: u64, keep: u64) -> Result<CheckReply, LimiterError> {
        let mut state = self.reachable()?;
        let line = Line::new("RL.CHECK").arg(format!("upstream:{}", quota.name)).arg(quota.limit).arg(quota.window);
        let line = line.arg("COST").arg(amount(cost)).arg("BURST").arg(quota.burst);
        state.run(&line.arg("KEEP").arg(amount(keep)))
    }

    async fn acquire(&self, slot: &Slot, max: u64, lease_ms: u64, id: &str) -> Result<AcquireReply, LimiterError> {
        let mut state = self.reachable()?;
        state.run(&Line::new("RL.ACQUIRE").arg(lease_key(slot)).arg(max).arg(lease_ms).arg("ID").arg(id))
    }

    async fn release(&self, slot: &Slot, id: &str) -> Result<bool, LimiterError> {
        let mut state = self.reachable()?;
        state.run::<i64>(&Line::new("RL.RELEASE").arg(lease_key(slot)).arg(id)).map(|n| n == 1)
    }

    async fn renew(&self, slot: &Slot, id: &str, lease_ms: u64) -> Result<bool, LimiterError> {
        let mut state = self.reachable()?;
        state.run::<i64>(&Line::new("RL.RENEW").arg(lease_key(slot)).arg(id).arg(lease_ms)).map(|n| n == 1)
    }

    /// The Redis limiter's probe: a read-only `RL.PEEK`.
    async fn ready(&self) -> Result<(), LimiterError> {
        let mut state = self.reachable()?;
        state.run::<CheckReply>(&Line::new("RL.PEEK").arg("__readyz__").arg(1).arg(1)).map(drop)
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

    /// 3 a second is a token every 333 333 333.3 ns: kept to the microsecond (333 333 µs),
    /// a bucket would admit its next request a third of a microsecond early, and each token
    /// would come back that much sooner.
    #[tokio::test]
    async fn an_interval_of_a_fraction_of_a_microsecond_is_kept_exact() {
        let policy = Policy::simple("p", &["/"], 3, 1, 1);
        let limiter = MemoryLimiter::new();
        assert!(limiter.check(&policy, "id", &[1]).await.unwrap().allowed);
        limiter.advance(Duration::from_micros(333_333));
        let early = limiter.check(&policy, "id", &[1]).await.unwrap();
        assert!(!early.allowed, "{early:?}");
        assert_eq!(early.retry_after_ms, Some(1), "a third of a µs, rounded up");
        limiter.advance(Duration::from_nanos(333));
        assert!(!limiter.check(&policy, "id", &[1]).await.unwrap().allowed, "still a third of a ns short");
        limiter.advance(Duration::from_nanos(1));
        assert!(limiter.check(&policy, "id", &[1]).await.unwrap().allowed);
    }

    /// RL.CHECK ... FORCE owes at most one burst: the TAT never passes now + 2 x tolerance.
    #[tokio::test]
    async fn a_forced_charge_owes_at_most_one_burst_and_reports_no_wait() {
        // 10 per 10 s: a token a second, a bucket of 10 (10 s of tolerance).
        let policy = Policy::simple("p", &["/"], 10, 10, 10);
        let limiter = MemoryLimiter::new();
        let forced = limiter.force(&policy, "id", 0, 100).await.unwrap();
        let want =
            CheckReply { allowed: true, remaining: 0, retry_after_ms: Some(0), reset_after_ms: 20_000, burst: 10 };
        assert_eq!(forced, want, "100 tokens charged as 20: the bucket and one burst of debt");
        let refused = limiter.check(&policy, "id", &[1]).await.unwrap();
        assert_eq!(refused.retry_after_ms, Some(11_000), "the debt (10 s), then its own token (1 s)");
        let again = limiter.force(&policy, "id", 0, u64::MAX).await.unwrap();
        assert_eq!((again.allowed, again.reset_after_ms), (true, 20_000), "already at the cap: nothing more owed");
        // A refund of everything there is fills the bucket, and no more.
        let refunded = limiter.refund(&policy, "id", 0, u64::MAX).await.unwrap();
        assert_eq!(refunded, RefundReply { remaining: 10, reset_after_ms: 0 });
        assert_eq!(limiter.tokens(&policy, "id", 0), 10);
    }

    /// The lease commands' clock is the server's in whole milliseconds; a refusal waits for
    /// the lease whose end frees a slot, the second one when `max` was lowered to 1 under two.
    #[tokio::test]
    async fn leases_are_the_modules() {
        let limiter = MemoryLimiter::new();
        let slot = Slot::Upstream;
        assert!(limiter.acquire(&slot, 2, 100, "a").await.unwrap().acquired);
        limiter.advance(Duration::from_millis(10));
        assert!(limiter.acquire(&slot, 2, 100, "b").await.unwrap().acquired);
        let refused = limiter.acquire(&slot, 1, 100, "c").await.unwrap();
        assert_eq!(refused, AcquireReply { acquired: false, in_flight: 2, max: 1, retry_after_ms: 100 });
        limiter.advance(Duration::from_micros(99_999));
        assert_eq!(limiter.in_flight(&slot), 1, "a ended at 100 ms, b lives until 110 ms");
        limiter.advance(Duration::from_micros(10_001));
        assert_eq!(limiter.in_flight(&slot), 0);
        assert!(!limiter.release(&slot, "b").await.unwrap(), "ended by itself");
    }

    #[tokio::test]
    async fn the_modules_refusals_are_rejections_not_outages() {
        // A limit the module refuses (a tolerance over 100 years) gets its error text.
        let policy = Policy::simple("p", &["/"], 1, u64::MAX / 4, 1_000_000);
        let e = MemoryLimiter::new().check(&policy, "id", &[1]).await.unwrap_err();
        assert!(matches!(e, LimiterError::Rejected(_)) && !e.is_outage(), "{e}");
        assert!(e.to_string().contains("must not exceed 100 years"), "{e}");
    }
}
