//! The local deny cache: once Redis refused a caller under a policy, its next requests under
//! that policy are refused here, without a Redis call, until the refusal's `retry_after`
//! moment. A client hammering while limited then costs the gateway a map lookup per request
//! instead of a round trip.
//!
//! Only refusals that hold for every next request are remembered: those where each refusing
//! limit counts requests (every request costs 1 there, so nothing is admitted before
//! `retry_after`). A tokens limit refuses by the request's size, and a smaller request might
//! pass: such refusals always go to Redis. A remembered refusal answers only a request that
//! costs at least as much on every limit that refused (the Envoy service's descriptors carry
//! their own `hits_addend`: a refusal of 5 says nothing of a request of 1, nor of a look).
//!
//! It can be stricter than Redis, never looser: a refund or an `RL.RESET` made elsewhere (or
//! another gateway's refund) is not seen until the remembered moment passes; a refund made
//! through this cache's own service forgets the refusals of its limit ([`DenyCache::forget_limit`]). A refusal is
//! remembered with the limits it was decided under: once a reload (or a caller's new tier)
//! changes them, it no longer answers, and the next request asks Redis. Memory is
//! bounded by `max_entries`; when full, expired entries are dropped, and a refusal that still
//! finds no room is simply not remembered (the next request asks Redis, as without a cache).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rl_protocol::CheckAllReply;

use crate::config::{DenyCacheSettings, Policy, Unit};
use crate::metrics::metrics;

/// How often a full cache may be swept for expired entries: a sweep walks every entry, so a
/// cache full of live refusals is not walked on every new refusal.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

pub struct DenyCache {
    enabled: bool,
    max_entries: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By identity hash (so a lookup borrows the caller's `&str`, no key is built), then by
    /// policy name: a caller is rarely refused under more than one policy at once.
    by_identity: HashMap<String, Vec<Entry>>,
    entries: usize,
    last_sweep: Option<Instant>,
}

struct Entry {
    policy: String,
    /// `(name, limit, window, burst)` of each of the policy's limits when Redis refused.
    limits: Vec<(String, u64, u64, u64)>,
    /// What the refused request asked of each limit.
    costs: Vec<u64>,
    /// Until when every request is refused.
    until: Instant,
    /// When Redis refused, and what it said then.
    at: Instant,
    decision: CheckAllReply,
}

impl DenyCache {
    pub fn new(settings: DenyCacheSettings) -> DenyCache {
        DenyCache { enabled: settings.enabled, max_entries: settings.max_entries, inner: Mutex::default() }
    }

    /// The refusal remembered for `identity_hash` under `policy`, as Redis would give it now:
    /// the waits shortened by the time since. `None` when nothing live is remembered, or when
    /// this request (`costs`, one per limit) asks less of a limit that refused.
    pub fn refusal(&self, policy: &Policy, identity_hash: &str, costs: &[u64], now: Instant) -> Option<CheckAllReply> {
        if !self.enabled {
            return None;
        }
        let inner = self.inner.lock().ok()?;
        let entry = inner.by_identity.get(identity_hash)?.iter().find(|e| e.policy == policy.name)?;
        if now >= entry.until || !same_limits(&entry.limits, policy) || !asks_as_much(entry, costs) {
            return None;
        }
        Some(aged(&entry.decision, now.saturating_duration_since(entry.at)))
    }

    /// Remembers `decision`, just had from Redis for `identity_hash` under `policy` for a
    /// request of `costs`, when it is a refusal that holds for every request until its
    /// `retry_after`.
    pub fn remember(
        &self,
        policy: &Policy,
        identity_hash: &str,
        costs: &[u64],
        decision: &CheckAllReply,
        now: Instant,
    ) {
        if !self.enabled || decision.allowed {
            return;
        }
        let Some(wait_ms) = decision.retry_after_ms.filter(|&ms| ms > 0) else { return };
        let refused_by_requests_only = policy
            .limits
            .iter()
            .zip(&decision.limits)
            .filter(|(_, row)| !row.allowed)
            .all(|(quota, _)| quota.unit == Unit::Requests);
        if !refused_by_requests_only
            || decision.limits.len() != policy.limits.len()
            || costs.len() != policy.limits.len()
        {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        let entry = Entry {
            policy: policy.name.clone(),
            limits: policy.limits.iter().map(|q| (q.name.clone(), q.limit, q.window, q.burst)).collect(),
            costs: costs.to_vec(),
            until: now + Duration::from_millis(wait_ms),
            at: now,
            decision: decision.clone(),
        };
        if let Some(old) =
            inner.by_identity.get_mut(identity_hash).and_then(|v| v.iter_mut().find(|e| e.policy == policy.name))
        {
            *old = entry;
            return;
        }
        if inner.entries >= self.max_entries {
            inner.sweep(now);
            if inner.entries >= self.max_entries {
                return;
            }
        }
        inner.by_identity.entry(identity_hash.to_string()).or_default().push(entry);
        let entries = inner.entries + 1;
        inner.count(entries);
    }

    /// Forgets every refusal under the policy named `policy` that involved its limit named
    /// `limit`: tokens were just given back there (a settled LLM answer), so a request the
    /// cache would refuse may fit now. Walks the entries: called once per refund, and the
    /// cache holds only live refusals.
    pub fn forget_limit(&self, policy: &str, limit: &str) {
        if !self.enabled {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        let mut forgotten = 0;
        inner.by_identity.retain(|_, entries| {
            let before = entries.len();
            entries.retain(|e| e.policy != policy || !e.limits.iter().any(|(name, ..)| name == limit));
            forgotten += before - entries.len();
            !entries.is_empty()
        });
        if forgotten > 0 {
            let entries = inner.entries - forgotten;
            inner.count(entries);
        }
    }

    /// How many refusals are remembered (expired ones included until a sweep).
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.entries)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Drops expired entries, at most every [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|last| now.saturating_duration_since(last) < SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        self.by_identity.retain(|_, entries| {
            entries.retain(|e| e.until > now);
            !entries.is_empty()
        });
        let entries = self.by_identity.values().map(Vec::len).sum();
        self.count(entries);
    }

    /// Sets the count of entries, and moves the metric (every cache of the process adds its
    /// own: a gateway serving Envoy has two) by the difference.
    fn count(&mut self, entries: usize) {
        let delta = i64::try_from(entries).unwrap_or(i64::MAX) - i64::try_from(self.entries).unwrap_or(i64::MAX);
        self.entries = entries;
        metrics().deny_cache_entries_moved(delta);
    }
}

/// Whether `policy` has the limits a refusal was decided under.
fn same_limits(limits: &[(String, u64, u64, u64)], policy: &Policy) -> bool {
    limits.len() == policy.limits.len()
        && limits.iter().zip(&policy.limits).all(|((name, limit, window, burst), q)| {
            (*limit, *window, *burst) == (q.limit, q.window, q.burst) && *name == q.name
        })
}

/// Whether a request of `costs` asks at least as much as the refused one of every limit that
/// refused it (GCRA refuses a larger cost at least as long as a smaller one).
fn asks_as_much(entry: &Entry, costs: &[u64]) -> bool {
    costs.len() == entry.costs.len()
        && entry
            .decision
            .limits
            .iter()
            .zip(entry.costs.iter().zip(costs))
            .all(|(row, (&then, &now))| row.allowed || now >= then)
}

/// `decision` as it stands `elapsed` later: every wait and reset shorter by that much.
fn aged(decision: &CheckAllReply, elapsed: Duration) -> CheckAllReply {
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let mut now = decision.clone();
    now.retry_after_ms = now.retry_after_ms.map(|w| w.saturating_sub(ms));
    for row in &mut now.limits {
        row.reset_after_ms = row.reset_after_ms.saturating_sub(ms);
        if !row.allowed {
            row.retry_after_ms = row.retry_after_ms.map(|w| w.saturating_sub(ms));
        }
    }
    now
}

#[cfg(test)]
mod tests {
    use rl_protocol::CheckReply;

    use super::*;
    use crate::config::Quota;

    fn row(allowed: bool, retry_after_ms: u64) -> CheckReply {
        CheckReply { allowed, remaining: 0, retry_after_ms: Some(retry_after_ms), reset_after_ms: 5_000, burst: 5 }
    }

    fn refused(retry_after_ms: u64) -> CheckAllReply {
        CheckAllReply { allowed: false, retry_after_ms: Some(retry_after_ms), limits: vec![row(false, retry_after_ms)] }
    }

    /// A request's costs on a policy of one limit.
    const ONE: [u64; 1] = [1];

    fn cache(max_entries: usize) -> DenyCache {
        DenyCache::new(DenyCacheSettings { enabled: true, max_entries })
    }

    #[test]
    fn a_refusal_is_answered_locally_until_its_retry_time_with_the_waits_aged() {
        let (cache, policy, t0) = (cache(10), Policy::simple("p", &["/"], 5, 5, 5), Instant::now());
        assert!(cache.refusal(&policy, "a", &ONE, t0).is_none());
        cache.remember(&policy, "a", &ONE, &refused(1_000), t0);
        let later = cache.refusal(&policy, "a", &ONE, t0 + Duration::from_millis(400)).unwrap();
        assert!(!later.allowed);
        assert_eq!(later.retry_after_ms, Some(600));
        assert_eq!((later.limits[0].retry_after_ms, later.limits[0].reset_after_ms), (Some(600), 4_600));
        assert!(cache.refusal(&policy, "a", &ONE, t0 + Duration::from_millis(1_000)).is_none(), "the moment passed");
        assert!(cache.refusal(&policy, "b", &ONE, t0).is_none(), "another caller");
        assert!(cache.refusal(&Policy::simple("q", &["/"], 5, 5, 5), "a", &ONE, t0).is_none(), "another policy");
    }

    #[test]
    fn a_refusal_answers_only_requests_that_ask_as_much_of_the_limits_that_refused() {
        let (cache, t0) = (cache(10), Instant::now());
        let mut two = Policy::simple("envoy", &[], 5, 60, 5);
        two.limits.push(Quota { name: "other".into(), unit: Unit::Requests, limit: 9, window: 9, burst: 9 });
        let by_first =
            CheckAllReply { allowed: false, retry_after_ms: Some(900), limits: vec![row(false, 900), row(true, 0)] };
        cache.remember(&two, "d", &[3, 1], &by_first, t0);
        assert!(cache.refusal(&two, "d", &[3, 0], t0).is_some(), "as much where it refused");
        assert!(cache.refusal(&two, "d", &[4, 9], t0).is_some(), "more");
        assert!(cache.refusal(&two, "d", &[2, 1], t0).is_none(), "less might fit: Redis decides");
        assert!(cache.refusal(&two, "d", &[0, 1], t0).is_none(), "a look is never refused");
        let mut renamed = two.clone();
        renamed.limits[1].name = "another".into();
        assert!(cache.refusal(&renamed, "d", &[3, 1], t0).is_none(), "other buckets, same rates");
    }

    #[test]
    fn a_refusal_no_longer_answers_once_its_limits_changed() {
        let (cache, t0) = (cache(10), Instant::now());
        let free = Policy::simple("p", &["/"], 1, 60, 1);
        cache.remember(&free, "a", &ONE, &refused(59_000), t0);
        assert!(cache.refusal(&free, "a", &ONE, t0).is_some());
        // A reload raised the limit (or the caller's key joined a tier with its own limits).
        let raised = Policy::simple("p", &["/"], 100, 60, 100);
        assert!(cache.refusal(&raised, "a", &ONE, t0).is_none(), "Redis decides under the new limits");
        assert!(cache.refusal(&Policy::simple("p", &["/"], 1, 60, 2), "a", &ONE, t0).is_none(), "a new burst too");
    }

    #[test]
    fn refusals_by_a_tokens_limit_and_admissions_are_not_remembered() {
        let (cache, t0) = (cache(10), Instant::now());
        let mut llm = Policy::simple("chat", &["/"], 5, 5, 5);
        llm.limits.push(Quota { name: "tokens".into(), unit: Unit::Tokens, limit: 9, window: 9, burst: 9 });
        let by_tokens =
            CheckAllReply { allowed: false, retry_after_ms: Some(900), limits: vec![row(true, 0), row(false, 900)] };
        cache.remember(&llm, "a", &[1, 100], &by_tokens, t0);
        let by_requests =
            CheckAllReply { allowed: false, retry_after_ms: Some(900), limits: vec![row(false, 900), row(true, 0)] };
        cache.remember(&llm, "b", &[1, 100], &by_requests, t0);
        let simple = Policy::simple("p", &["/"], 5, 5, 5);
        cache.remember(&simple, "c", &ONE, &CheckAllReply { allowed: true, ..refused(0) }, t0);
        cache.remember(&simple, "d", &ONE, &refused(0), t0);
        assert_eq!(cache.len(), 1);
        assert!(cache.refusal(&llm, "b", &[1, 7], t0).is_some(), "any token cost: the requests limit refused");
    }

    #[test]
    fn memory_is_bounded_and_expired_entries_make_room() {
        let (cache, policy, t0) = (cache(2), Policy::simple("p", &["/"], 5, 5, 5), Instant::now());
        cache.remember(&policy, "a", &ONE, &refused(100), t0);
        cache.remember(&policy, "b", &ONE, &refused(10_000), t0);
        cache.remember(&policy, "c", &ONE, &refused(10_000), t0);
        assert_eq!(cache.len(), 2, "full of live refusals: c is not remembered");
        assert!(cache.refusal(&policy, "c", &ONE, t0).is_none());
        let later = t0 + Duration::from_millis(200);
        cache.remember(&policy, "c", &ONE, &refused(10_000), later);
        assert_eq!(cache.len(), 2, "a expired and made room");
        assert!(cache.refusal(&policy, "c", &ONE, later).is_some());
        cache.remember(&policy, "c", &ONE, &refused(50), later);
        assert_eq!(cache.len(), 2, "a caller's newer refusal replaces its older one");
        assert!(cache.refusal(&policy, "c", &ONE, later + Duration::from_millis(60)).is_none());
    }

    #[test]
    fn a_disabled_cache_remembers_nothing() {
        let cache = DenyCache::new(DenyCacheSettings { enabled: false, max_entries: 10 });
        let (policy, t0) = (Policy::simple("p", &["/"], 5, 5, 5), Instant::now());
        cache.remember(&policy, "a", &ONE, &refused(1_000), t0);
        assert!(cache.refusal(&policy, "a", &ONE, t0).is_none());
        assert!(cache.is_empty());
    }
}
