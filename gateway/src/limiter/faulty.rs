//! A limiter whose chosen operations fail (as a Redis timeout would), for the failure paths
//! that otherwise only log: a settlement, a give-back, a renewal or a release that cannot
//! reach Redis. Everything else goes to the limiter inside, so what was charged can be read
//! from it afterwards.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rl_protocol::{AcquireReply, CheckAllReply, CheckReply, RefundReply};

use super::{LimiterError, RateLimiter};
use crate::config::{Policy, Quota};
use crate::lease::Slot;

/// One operation of [`RateLimiter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Check,
    Refund,
    Force,
    CheckShared,
    Acquire,
    Release,
    Renew,
}

#[derive(Clone)]
pub struct Faulty<L> {
    pub inner: L,
    failing: Arc<Mutex<HashSet<Op>>>,
    /// How many calls of each operation were made (failed ones included).
    calls: Arc<Mutex<Vec<Op>>>,
}

impl<L: RateLimiter> Faulty<L> {
    pub fn new(inner: L) -> Self {
        Faulty { inner, failing: Arc::default(), calls: Arc::default() }
    }

    /// From now on `op` fails (`true`) or works again (`false`).
    pub fn fail(&self, op: Op, failing: bool) {
        let mut set = self.failing.lock().unwrap();
        if failing {
            set.insert(op);
        } else {
            set.remove(&op);
        }
    }

    /// How many times `op` was called.
    pub fn calls(&self, op: Op) -> usize {
        self.calls.lock().unwrap().iter().filter(|&&o| o == op).count()
    }

    fn call(&self, op: Op) -> Result<(), LimiterError> {
        self.calls.lock().unwrap().push(op);
        match self.failing.lock().unwrap().contains(&op) {
            true => Err(LimiterError::Timeout(Duration::from_millis(250))),
            false => Ok(()),
        }
    }
}

impl<L: RateLimiter> RateLimiter for Faulty<L> {
    async fn check(&self, policy: &Policy, identity_hash: &str, costs: &[u64]) -> Result<CheckAllReply, LimiterError> {
        self.call(Op::Check)?;
        self.inner.check(policy, identity_hash, costs).await
    }

    async fn refund(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        amount: u64,
    ) -> Result<RefundReply, LimiterError> {
        self.call(Op::Refund)?;
        self.inner.refund(policy, identity_hash, index, amount).await
    }

    async fn force(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        amount: u64,
    ) -> Result<CheckReply, LimiterError> {
        self.call(Op::Force)?;
        self.inner.force(policy, identity_hash, index, amount).await
    }

    async fn check_shared(&self, quota: &Quota, cost: u64, keep: u64) -> Result<CheckReply, LimiterError> {
        self.call(Op::CheckShared)?;
        self.inner.check_shared(quota, cost, keep).await
    }

    async fn acquire(&self, slot: &Slot, max: u64, lease_ms: u64, id: &str) -> Result<AcquireReply, LimiterError> {
        self.call(Op::Acquire)?;
        self.inner.acquire(slot, max, lease_ms, id).await
    }

    async fn release(&self, slot: &Slot, id: &str) -> Result<bool, LimiterError> {
        self.call(Op::Release)?;
        self.inner.release(slot, id).await
    }

    async fn renew(&self, slot: &Slot, id: &str, lease_ms: u64) -> Result<bool, LimiterError> {
        self.call(Op::Renew)?;
        self.inner.renew(slot, id, lease_ms).await
    }

    async fn ready(&self) -> Result<(), LimiterError> {
        self.inner.ready().await
    }
}
