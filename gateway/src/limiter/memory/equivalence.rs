//! [`MemoryLimiter`] answers exactly as the module's pure math (`rl::gcra`, `rl::lease`) over
//! random sequences of every operation of [`RateLimiter`], with the clock moved by random
//! amounts (nanoseconds included) between them: the same replies, the same stored TATs, the
//! same whole tokens left in every bucket, the same leases in flight.
//!
//! The reference below uses only the module's pure functions, and spells out on its own what
//! the command bodies add to them (RL.CHECKALL's all or nothing, REFUND's delete, the lease
//! set's purge), so a slip in how the limiter builds a command line or reads a reply fails here.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::time::Duration;

use futures_util::FutureExt;
use proptest::prelude::*;
use rl::gcra::{self, Decision, RefundWrite, RetryAfter, Tat};
use rl_protocol::{AcquireReply, CheckAllReply, CheckReply, RefundReply};

use super::MemoryLimiter;
use crate::config::{Policy, Quota, Unit};
use crate::lease::Slot;
use crate::limiter::RateLimiter;

/// The largest count the gateway sends (`i64::MAX`), as the Redis limiter caps it.
const MAX_AMOUNT: u64 = i64::MAX as u64;

/// One call on the limiter, or a move of its clock.
#[derive(Clone, Debug)]
enum Op {
    Check(Vec<u64>),
    Refund {
        index: usize,
        amount: u64,
    },
    Force {
        index: usize,
        amount: u64,
    },
    Shared {
        cost: u64,
        keep: u64,
    },
    Acquire {
        upstream: bool,
        max: u64,
        lease_ms: u64,
        id: u8,
    },
    Release {
        upstream: bool,
        id: u8,
    },
    Renew {
        upstream: bool,
        id: u8,
        lease_ms: u64,
    },
    /// Nanoseconds.
    Advance(u64),
    /// `n` emission intervals of limit `index`, each cut to whole microseconds: where a clock
    /// or an interval kept in microseconds parts from the exact one.
    AdvanceTruncatedIntervals {
        index: usize,
        n: u64,
    },
}

/// The module's state for the same calls, kept by its pure functions.
struct Reference {
    now: u64,
    tats: HashMap<String, Tat>,
    /// Lease sets: id -> deadline in ms.
    leases: HashMap<String, BTreeMap<String, u64>>,
}

fn module_quota(q: &Quota) -> gcra::Quota {
    let nz = |n: u64| NonZeroU64::new(n).unwrap();
    gcra::Quota::new(nz(q.limit), nz(q.window), nz(q.burst)).unwrap()
}

fn row(decision: &Decision, burst: u64) -> CheckReply {
    CheckReply {
        allowed: decision.allowed,
        remaining: decision.remaining,
        retry_after_ms: match decision.retry_after {
            RetryAfter::Now => Some(0),
            RetryAfter::Millis(ms) => Some(ms),
            RetryAfter::Never => None,
        },
        reset_after_ms: decision.reset_after_ms,
        burst,
    }
}

fn bucket(policy: &Policy, q: &Quota) -> String {
    format!("{{id}}:{}:{}", policy.name, q.name)
}

fn lease_set(policy: &Policy, upstream: bool) -> String {
    if upstream {
        "upstream:concurrent".into()
    } else {
        format!("{{id}}:{}:concurrent", policy.name)
    }
}

impl Reference {
    fn check(&mut self, policy: &Policy, costs: &[u64]) -> CheckAllReply {
        let decided: Vec<(String, Option<Tat>, Decision)> = policy
            .limits
            .iter()
            .zip(costs)
            .map(|(q, &cost)| {
                let key = bucket(policy, q);
                let stored = self.tats.get(&key).copied();
                (key, stored, gcra::decide(&module_quota(q), stored, self.now, cost.min(MAX_AMOUNT)).unwrap())
            })
            .collect();
        let allowed = decided.iter().all(|(_, _, d)| d.allowed);
        let mut limits = Vec::new();
        for ((key, stored, decision), q) in decided.iter().zip(&policy.limits) {
            if allowed {
                if let Some(tat) = decision.new_tat {
                    self.tats.insert(key.clone(), tat);
                }
                limits.push(row(decision, q.burst));
            } else if decision.allowed {
                // Nothing taken: the untouched bucket.
                limits.push(row(&gcra::decide(&module_quota(q), *stored, self.now, 0).unwrap(), q.burst));
            } else {
                limits.push(row(decision, q.burst));
            }
        }
        let retry_after_ms = if allowed {
            Some(0)
        } else if decided.iter().any(|(_, _, d)| d.retry_after == RetryAfter::Never) {
            None
        } else {
            decided
                .iter()
                .filter_map(|(_, _, d)| match d.retry_after {
                    RetryAfter::Millis(ms) => Some(ms),
                    _ => None,
                })
                .max()
        };
        CheckAllReply { allowed, retry_after_ms, limits }
    }

    fn refund(&mut self, policy: &Policy, index: usize, amount: u64) -> RefundReply {
        let q = &policy.limits[index];
        let key = bucket(policy, q);
        let outcome =
            gcra::refund(&module_quota(q), self.tats.get(&key).copied(), self.now, amount.min(MAX_AMOUNT)).unwrap();
        match outcome.write {
            RefundWrite::Nothing => {}
            RefundWrite::Store(tat) => {
                self.tats.insert(key, tat);
            }
            RefundWrite::Delete => {
                self.tats.remove(&key);
            }
        }
        RefundReply { remaining: outcome.remaining, reset_after_ms: outcome.reset_after_ms }
    }

    fn force(&mut self, policy: &Policy, index: usize, amount: u64) -> CheckReply {
        let q = &policy.limits[index];
        let key = bucket(policy, q);
        let decision =
            gcra::decide_forced(&module_quota(q), self.tats.get(&key).copied(), self.now, amount.min(MAX_AMOUNT))
                .unwrap();
        if let Some(tat) = decision.new_tat {
            self.tats.insert(key, tat);
        }
        row(&decision, q.burst)
    }

    fn shared(&mut self, q: &Quota, cost: u64, keep: u64) -> CheckReply {
        let key = format!("upstream:{}", q.name);
        let stored = self.tats.get(&key).copied();
        let decision =
            gcra::decide_keeping(&module_quota(q), stored, self.now, cost.min(MAX_AMOUNT), keep.min(MAX_AMOUNT))
                .unwrap();
        if let Some(tat) = decision.new_tat {
            self.tats.insert(key, tat);
        }
        row(&decision, q.burst)
    }

    fn tokens(&self, policy: &Policy, index: usize) -> u64 {
        let q = &policy.limits[index];
        gcra::decide(&module_quota(q), self.tats.get(&bucket(policy, q)).copied(), self.now, 0).unwrap().remaining
    }

    fn now_ms(&self) -> u64 {
        self.now / 1_000_000
    }

    /// What the lease set `key` holds at now for `id`.
    fn view(&self, key: &str, id: &str) -> rl::lease::LeaseView {
        let now_ms = self.now_ms();
        let Some(set) = self.leases.get(key) else { return rl::lease::LeaseView::default() };
        rl::lease::LeaseView {
            live: set.values().filter(|&&d| d > now_ms).count() as u64,
            expired: set.values().filter(|&&d| d <= now_ms).count() as u64,
            held: set.get(id).copied(),
            last: set.values().max().copied(),
        }
    }

    /// The purge every lease command starts with, and the delete of a set left empty.
    fn purge(&mut self, key: &str) {
        let now_ms = self.now_ms();
        if let Some(set) = self.leases.get_mut(key) {
            set.retain(|_, d| *d > now_ms);
            if set.is_empty() {
                self.leases.remove(key);
            }
        }
    }

    fn acquire(&mut self, key: &str, max: u64, lease_ms: u64, id: &str) -> AcquireReply {
        let now_ms = self.now_ms();
        let view = self.view(key, id);
        let frees_at = rl::lease::rank_to_wait_for(&view, now_ms, max).and_then(|rank| {
            let mut live: Vec<u64> = self.leases[key].values().copied().filter(|&d| d > now_ms).collect();
            live.sort_unstable();
            live.get(usize::try_from(rank).unwrap() - 1).copied()
        });
        let a = rl::lease::acquire(&view, frees_at, now_ms, max, lease_ms);
        self.purge(key);
        if let Some(deadline) = a.deadline {
            self.leases.entry(key.to_string()).or_default().insert(id.to_string(), deadline);
        }
        AcquireReply { acquired: a.acquired, in_flight: a.in_flight, max, retry_after_ms: a.retry_after_ms }
    }

    fn release(&mut self, key: &str, id: &str) -> bool {
        let released = rl::lease::release(&self.view(key, id), self.now_ms());
        self.purge(key);
        if released {
            self.leases.get_mut(key).unwrap().remove(id);
            self.purge(key);
        }
        released
    }

    fn renew(&mut self, key: &str, id: &str, lease_ms: u64) -> bool {
        let deadline = rl::lease::renew(&self.view(key, id), self.now_ms(), lease_ms);
        self.purge(key);
        if let Some(deadline) = deadline {
            self.leases.get_mut(key).unwrap().insert(id.to_string(), deadline);
        }
        deadline.is_some()
    }

    fn in_flight(&self, key: &str) -> usize {
        let now_ms = self.now_ms();
        self.leases.get(key).map_or(0, |set| set.values().filter(|&&d| d > now_ms).count())
    }
}

fn quota_strategy(name: &'static str) -> impl Strategy<Value = Quota> {
    // Rates whose interval is rarely a whole number of microseconds (3 a second, 7 a
    // minute...), buckets from 1 token up.
    (1u64..=1000, prop_oneof![Just(1u64), Just(60), 1u64..=3600], 1u64..=40)
        .prop_map(move |(limit, window, burst)| Quota { name: name.into(), unit: Unit::Requests, limit, window, burst })
}

fn amount(burst: u64) -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..=3 * burst + 2, 1 => Just(u64::MAX)]
}

fn op_strategy(bursts: Vec<u64>, shared_burst: u64) -> impl Strategy<Value = Op> {
    let limits = bursts.len();
    let max_burst = bursts.iter().copied().max().unwrap_or(1);
    let costs = bursts.iter().map(|&b| 0..=b + 1).collect::<Vec<_>>();
    let id = 0u8..4;
    prop_oneof![
        6 => costs.prop_map(Op::Check),
        2 => (0..limits, amount(max_burst)).prop_map(|(index, amount)| Op::Refund { index, amount }),
        2 => (0..limits, amount(max_burst)).prop_map(|(index, amount)| Op::Force { index, amount }),
        2 => (0..=shared_burst + 1, 0..=shared_burst).prop_map(|(cost, keep)| Op::Shared { cost, keep }),
        2 => (any::<bool>(), 1u64..4, 1u64..3000, id.clone())
            .prop_map(|(upstream, max, lease_ms, id)| Op::Acquire { upstream, max, lease_ms, id }),
        1 => (any::<bool>(), id.clone()).prop_map(|(upstream, id)| Op::Release { upstream, id }),
        1 => (any::<bool>(), id, 1u64..3000).prop_map(|(upstream, id, lease_ms)| Op::Renew { upstream, id, lease_ms }),
        4 => prop_oneof![0u64..1_000, 0u64..1_000_000, 0u64..3_000_000_000].prop_map(Op::Advance),
        2 => (0..limits, 1u64..20).prop_map(|(index, n)| Op::AdvanceTruncatedIntervals { index, n }),
    ]
}

fn case_strategy() -> impl Strategy<Value = (Policy, Quota, Vec<Op>)> {
    (proptest::collection::vec(quota_strategy("a"), 1..=2), quota_strategy("capacity")).prop_flat_map(
        |(mut limits, shared)| {
            if let Some(second) = limits.get_mut(1) {
                second.name = "b".into();
                second.unit = Unit::Tokens;
            }
            let policy = Policy { limits, ..Policy::simple("p", &["/"], 1, 1, 1) };
            let bursts = policy.limits.iter().map(|q| q.burst).collect();
            let ops = proptest::collection::vec(op_strategy(bursts, shared.burst), 1..60);
            (Just(policy), Just(shared), ops)
        },
    )
}

/// Runs a future of the in-memory limiter, which never waits.
fn now<T>(future: impl std::future::Future<Output = T>) -> T {
    future.now_or_never().expect("the in-memory limiter never waits")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn the_memory_limiter_answers_as_the_modules_math((policy, shared, ops) in case_strategy()) {
        let limiter = MemoryLimiter::new();
        let mut reference = Reference { now: limiter.now_nanos(), tats: HashMap::new(), leases: HashMap::new() };
        let slot = |upstream: bool| {
            if upstream {
                Slot::Upstream
            } else {
                Slot::Caller { policy: policy.name.clone(), identity_hash: "id".into() }
            }
        };
        for (step, op) in ops.iter().enumerate() {
            let at = format!("step {step}: {op:?}");
            match op {
                Op::Check(costs) => {
                    prop_assert_eq!(now(limiter.check(&policy, "id", costs)).unwrap(), reference.check(&policy, costs), "{}", at);
                }
                &Op::Refund { index, amount } => {
                    let got = now(limiter.refund(&policy, "id", index, amount)).unwrap();
                    prop_assert_eq!(got, reference.refund(&policy, index, amount), "{}", at);
                }
                &Op::Force { index, amount } => {
                    let got = now(limiter.force(&policy, "id", index, amount)).unwrap();
                    prop_assert_eq!(got, reference.force(&policy, index, amount), "{}", at);
                }
                &Op::Shared { cost, keep } => {
                    let got = now(limiter.check_shared(&shared, cost, keep)).unwrap();
                    prop_assert_eq!(got, reference.shared(&shared, cost, keep), "{}", at);
                }
                &Op::Acquire { upstream, max, lease_ms, id } => {
                    let got = now(limiter.acquire(&slot(upstream), max, lease_ms, &id.to_string())).unwrap();
                    let want = reference.acquire(&lease_set(&policy, upstream), max, lease_ms, &id.to_string());
                    prop_assert_eq!(got, want, "{}", at);
                }
                &Op::Release { upstream, id } => {
                    let got = now(limiter.release(&slot(upstream), &id.to_string())).unwrap();
                    prop_assert_eq!(got, reference.release(&lease_set(&policy, upstream), &id.to_string()), "{}", at);
                }
                &Op::Renew { upstream, id, lease_ms } => {
                    let got = now(limiter.renew(&slot(upstream), &id.to_string(), lease_ms)).unwrap();
                    let want = reference.renew(&lease_set(&policy, upstream), &id.to_string(), lease_ms);
                    prop_assert_eq!(got, want, "{}", at);
                }
                &Op::Advance(nanos) => {
                    limiter.advance(Duration::from_nanos(nanos));
                    reference.now += nanos;
                }
                &Op::AdvanceTruncatedIntervals { index, n } => {
                    let q = &policy.limits[index];
                    let micros = q.window * 1_000_000 / q.limit;
                    limiter.advance(Duration::from_micros(micros * n));
                    reference.now += micros * 1_000 * n;
                }
            }
            // The state after each step: every bucket's TAT as stored, and what it holds.
            for (i, q) in policy.limits.iter().enumerate() {
                let key = bucket(&policy, q);
                prop_assert_eq!(limiter.stored(&key), reference.tats.get(&key).copied(), "{} ({})", at, key);
                prop_assert_eq!(limiter.tokens(&policy, "id", i), reference.tokens(&policy, i), "{} ({})", at, key);
            }
            let capacity = format!("upstream:{}", shared.name);
            prop_assert_eq!(limiter.stored(&capacity), reference.tats.get(&capacity).copied(), "{}", at);
            for upstream in [false, true] {
                let key = lease_set(&policy, upstream);
                prop_assert_eq!(limiter.in_flight(&slot(upstream)), reference.in_flight(&key), "{} ({})", at, key);
            }
        }
    }
}
