//! When a full lease set is likely to have a free slot: the `Retry-After` of a concurrency
//! refusal.
//!
//! The module's own answer (`RL.ACQUIRE`'s retry-after) is when the oldest lease would expire
//! if nobody renewed it: a sure bound, but a held lease is renewed until its request ends, so
//! that is usually the whole `lease_ms` (30 s by default) while a slot frees in a few seconds.
//! So the gateway watches how long its leases are held (per policy, and for the upstream's set)
//! and hints `mean hold / max`: with all `max` slots busy and each request holding one for
//! `mean hold` on average, a slot frees that often. The hint is at least 1 s (`Retry-After` is
//! in whole seconds) and never above the module's bound. Before the first lease of a set has
//! ended there is nothing to go on, and the hint is 1 s: a retry that comes too early costs
//! the client one refused request and the limiter nothing (a refusal gives its tokens back).
//!
//! The mean is a moving average (each new hold weighs [`WEIGHT_OF_NEWEST`]), so the hint
//! follows a model that slows down or speeds up within a few dozen requests. Each gateway
//! keeps its own: the hold times of the same model seen from two gateways are alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use super::Slot;

/// How much one newly ended hold moves the mean: 1/8.
pub const WEIGHT_OF_NEWEST: u64 = 8;

/// The mean hold of each lease set seen by this process, in microseconds (0: none ended yet).
#[derive(Default)]
pub struct HoldTimes {
    means: RwLock<HashMap<SetName, Arc<AtomicU64>>>,
}

/// A lease set as the hints know it: a policy's callers share one mean, whoever the caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SetName {
    Policy(String),
    Upstream,
}

impl SetName {
    fn of(slot: &Slot) -> SetName {
        match slot {
            Slot::Caller { policy, .. } => SetName::Policy(policy.clone()),
            Slot::Upstream => SetName::Upstream,
        }
    }
}

/// This process's hold times.
pub fn hold_times() -> &'static HoldTimes {
    static HOLD_TIMES: OnceLock<HoldTimes> = OnceLock::new();
    HOLD_TIMES.get_or_init(HoldTimes::default)
}

impl HoldTimes {
    fn mean_of(&self, name: &SetName) -> Option<Arc<AtomicU64>> {
        self.means.read().ok()?.get(name).cloned()
    }

    /// A lease of `slot` ended after `held`.
    pub fn record(&self, slot: &Slot, held: Duration) {
        let name = SetName::of(slot);
        let mean = match self.mean_of(&name) {
            Some(mean) => mean,
            None => match self.means.write() {
                Ok(mut means) => means.entry(name).or_default().clone(),
                Err(_) => return,
            },
        };
        let held_us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX).max(1);
        // A lost race between two ends only drops one of them from the average.
        let _ = mean.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { held_us } else { moved_mean(old, held_us) })
        });
    }

    /// The mean hold of `slot`'s set, once a lease of it has ended.
    pub fn mean(&self, slot: &Slot) -> Option<Duration> {
        let us = self.mean_of(&SetName::of(slot))?.load(Ordering::Relaxed);
        (us > 0).then(|| Duration::from_micros(us))
    }

    /// The `Retry-After` (ms) of a refusal by `slot`'s full set of `max` slots, whose module
    /// bound is `module_retry_after_ms` (see the module docs above).
    pub fn retry_after_ms(&self, slot: &Slot, max: u64, module_retry_after_ms: u64) -> u64 {
        retry_hint_ms(self.mean(slot), max, module_retry_after_ms)
    }
}

/// The mean after one more hold: `old + (new - old) / WEIGHT_OF_NEWEST`.
fn moved_mean(old: u64, new: u64) -> u64 {
    if new >= old {
        old.saturating_add((new - old) / WEIGHT_OF_NEWEST)
    } else {
        old - (old - new) / WEIGHT_OF_NEWEST
    }
}

/// `mean / max`, at least 1 s and at most the module's bound (which is never raised: past it
/// a slot is free for sure).
pub fn retry_hint_ms(mean: Option<Duration>, max: u64, module_retry_after_ms: u64) -> u64 {
    const FLOOR_MS: u64 = 1000;
    let gap_ms = mean.map_or(FLOOR_MS, |mean| {
        let ms = u64::try_from(mean.as_millis()).unwrap_or(u64::MAX);
        ms.div_ceil(max.max(1)).max(FLOOR_MS)
    });
    gap_ms.min(module_retry_after_ms.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_is_the_mean_hold_over_the_slots_between_1_s_and_the_module_bound() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(retry_hint_ms(secs(4), 1, 30_000), 4_000, "one slot: the mean hold");
        assert_eq!(retry_hint_ms(secs(20), 4, 30_000), 5_000, "four slots free four times as often");
        assert_eq!(retry_hint_ms(Some(Duration::from_millis(300)), 1, 30_000), 1_000, "at least 1 s");
        assert_eq!(retry_hint_ms(secs(120), 1, 30_000), 30_000, "never past the module's bound");
        assert_eq!(retry_hint_ms(None, 1, 30_000), 1_000, "nothing ended yet");
        assert_eq!(retry_hint_ms(None, 1, 400), 400, "a lease about to expire");
    }

    #[test]
    fn the_mean_follows_the_holds_of_its_own_set_only() {
        let times = HoldTimes::default();
        let chat = Slot::Caller { policy: "chat".into(), identity_hash: "a".into() };
        let same_policy = Slot::Caller { policy: "chat".into(), identity_hash: "b".into() };
        assert_eq!(times.mean(&chat), None);
        times.record(&chat, Duration::from_secs(4));
        assert_eq!(times.mean(&same_policy), Some(Duration::from_secs(4)), "one mean per policy");
        assert_eq!(times.mean(&Slot::Upstream), None);
        times.record(&same_policy, Duration::from_secs(12));
        assert_eq!(times.mean(&chat), Some(Duration::from_secs(5)), "4 + (12 - 4) / 8");
        for _ in 0..100 {
            times.record(&chat, Duration::from_secs(1));
        }
        let settled = times.mean(&chat).unwrap();
        assert!(settled < Duration::from_millis(1010), "converges on the new hold time: {settled:?}");
        assert_eq!(times.retry_after_ms(&chat, 2, 30_000), 1_000);
    }
}
