//! The decision on one rate limit request, independent of the transport: the [`Step`]s of its
//! descriptors run on the limiter, and the statuses Envoy reads back.
//!
//! - Every enforced bucket is charged in **one** call (`RL.CHECK`, or `RL.CHECKALL` for
//!   several): all of them or, when any refuses, none. The call goes through the admission
//!   part the HTTP step shares ([`crate::admission`]), deny cache included: a request of the
//!   same buckets Redis refused a moment ago is refused again without a call. A bucket of `requests_per_unit: 0`
//!   refuses the request before anything is charged (the others are only looked at).
//! - Shadow buckets are charged in a call of their own (never refusing the request), refunds
//!   (`is_negative_hits`) by `RL.REFUND` each, forced charges (an LLM answer's overage) by
//!   `RL.CHECK ... FORCE` each: neither ever refuses the request.
//! - Redis keys are `<prefix>{<domain>}:envoy:<bucket>`: the domain is the Cluster hash tag, so
//!   all of a request's buckets share a slot and the one call stays all-or-nothing there too.
//! - `quota_mode` limits are applied as ordinary limits (stricter than the reference, which
//!   lets a request through unless every quota descriptor refuses).

use rl_protocol::CheckAllReply;

use super::config::Unit;
use super::plan::{Bucket, Step};
use crate::admission::Admission;
use crate::config::{Policy, Quota};
use crate::limiter::{LimiterError, RateLimiter};
use crate::log_limit::warn_every;

/// The policy name in the Redis keys of the service's buckets.
pub const KEY_POLICY: &str = "envoy";

/// `OK` or `OVER_LIMIT`, per descriptor and for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok,
    OverLimit,
}

/// The limit a status reports (`current_limit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentLimit {
    pub requests_per_unit: u64,
    pub unit: Unit,
    pub name: Option<String>,
}

/// One descriptor's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub current_limit: Option<CurrentLimit>,
    /// Whole tokens left (`u64::MAX` for an unlimited descriptor).
    pub remaining: u64,
    /// Until the request would fit when refused, else until the bucket is full again.
    pub until_reset_ms: u64,
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub overall: Code,
    pub statuses: Vec<Status>,
    /// When refused: the longest wait of the refusing buckets (`None`: it can never fit).
    pub retry_after_ms: Option<u64>,
    /// Per descriptor, the hits this request took from its bucket (0: looked at, refused,
    /// given back or not limited). Envoy's filters read it back (see [`super::grpc`]) to
    /// settle against what was charged, not what was asked.
    pub hits_charged: Vec<u64>,
}

/// The status of a descriptor without a limit, or unlimited.
fn open_status(remaining: u64) -> Status {
    Status { code: Code::Ok, current_limit: None, remaining, until_reset_ms: 0 }
}

fn current(bucket: &Bucket) -> CurrentLimit {
    CurrentLimit { requests_per_unit: bucket.requests_per_unit, unit: bucket.unit, name: bucket.limit_name.clone() }
}

/// A policy whose limits are `buckets`, for the limiter's calls (see the module's comment).
fn policy_of<'a>(buckets: impl Iterator<Item = &'a Bucket>) -> Policy {
    let mut policy = Policy::simple(KEY_POLICY, &[], 1, 1, 1);
    policy.limits = buckets
        .map(|b| Quota {
            name: b.name.clone(),
            unit: crate::config::Unit::Requests,
            limit: b.requests_per_unit.max(1),
            window: b.unit.seconds(),
            burst: b.burst.max(1),
        })
        .collect();
    policy
}

/// The buckets of the steps `pick` takes, each once, with the indexes of their descriptors.
/// Envoy may send one descriptor twice (a virtual host's action and a route's): its bucket is
/// charged once with the costs added up (the reference increments its counter twice), since
/// one call cannot name a key twice.
fn buckets<'a>(steps: &'a [Step], pick: impl Fn(&'a Step) -> Option<&'a Bucket>) -> Vec<(Vec<usize>, Bucket)> {
    let mut merged: Vec<(Vec<usize>, Bucket)> = Vec::new();
    for (i, bucket) in steps.iter().enumerate().filter_map(|(i, s)| pick(s).map(|b| (i, b))) {
        match merged.iter_mut().find(|(_, b)| b.name == bucket.name) {
            Some((indexes, b)) => {
                indexes.push(i);
                b.cost = b.cost.saturating_add(bucket.cost);
            }
            None => merged.push((vec![i], bucket.clone())),
        }
    }
    merged
}

/// How the deny cache names a request of `buckets` in `domain`: all of a domain's buckets
/// share one identity (the domain, their hash tag), so the buckets tell requests apart.
fn cache_name(domain: &str, buckets: &[(Vec<usize>, Bucket)]) -> String {
    let mut name = domain.to_string();
    for (_, bucket) in buckets {
        name.push('\0');
        name.push_str(&bucket.name);
    }
    name
}

/// Runs `steps` (one per descriptor of a request of `domain`) through `admission`.
///
/// The enforced call decides; what follows it (shadow buckets, refunds, forced charges) is
/// best effort once that call has answered: a failure there is logged and leaves the decision
/// (and the charge already made) as it is, rather than turning an admitted and charged request
/// into an error Envoy would refuse under `failure_mode_deny`. Without an enforced call, the
/// first failure is the answer (`UNAVAILABLE`: nothing was decided).
pub async fn decide<L: RateLimiter>(
    admission: &Admission<L>,
    domain: &str,
    steps: &[Step],
) -> Result<Decision, LimiterError> {
    let limiter = admission.limiter();
    let mut statuses: Vec<Option<Status>> = vec![None; steps.len()];
    let mut hits_charged = vec![0u64; steps.len()];
    let banned = steps.iter().any(|s| matches!(s, Step::Banned(_)));
    let charged = buckets(steps, |s| match s {
        Step::Charge(b) => Some(b),
        _ => None,
    });
    let mut overall = Code::Ok;
    let mut retry_after_ms = Some(0);
    if banned {
        overall = Code::OverLimit;
        retry_after_ms = None;
    }
    let decided = !charged.is_empty();
    if decided {
        let policy = policy_of(charged.iter().map(|(_, b)| b));
        // A banned descriptor refuses the request: the others are looked at, not charged.
        let costs: Vec<u64> = charged.iter().map(|(_, b)| if banned { 0 } else { b.cost }).collect();
        let reply = admission.check(&policy, domain, &cache_name(domain, &charged), &costs).await?;
        if reply.allowed && !banned {
            record_charges(&mut hits_charged, steps, &charged);
        }
        if !reply.allowed {
            overall = Code::OverLimit;
            retry_after_ms = if banned { None } else { reply.retry_after_ms };
        }
        fill(&mut statuses, &charged, &reply, true);
    }
    // After the decision: failures are logged, the statuses say only what is known.
    let settle = |result: Result<(), LimiterError>| -> Result<(), LimiterError> {
        match result {
            Err(e) if decided => {
                warn_every!(error = %e, domain, "a shadow, refund or forced charge failed after the decision; the decision stands");
                Ok(())
            }
            other => other,
        }
    };
    let shadow = buckets(steps, |s| match s {
        Step::Shadow(b) => Some(b),
        _ => None,
    });
    if !shadow.is_empty() {
        let policy = policy_of(shadow.iter().map(|(_, b)| b));
        let costs: Vec<u64> = shadow.iter().map(|(_, b)| b.cost).collect();
        settle(match limiter.check(&policy, domain, &costs).await {
            Ok(reply) => {
                if reply.allowed {
                    record_charges(&mut hits_charged, steps, &shadow);
                }
                fill(&mut statuses, &shadow, &reply, false);
                Ok(())
            }
            Err(e) => Err(e),
        })?;
    }
    for (i, step) in steps.iter().enumerate() {
        let status = match step {
            Step::NoLimit => open_status(0),
            Step::Unlimited => open_status(u64::MAX),
            Step::Banned(b) => Status {
                code: Code::OverLimit,
                current_limit: Some(current(b)),
                remaining: 0,
                until_reset_ms: b.unit.seconds() * 1000,
            },
            Step::Refund(b) => {
                let policy = policy_of(std::iter::once(b));
                match limiter.refund(&policy, domain, 0, b.cost).await {
                    Ok(back) => {
                        admission.refunded(KEY_POLICY, &b.name);
                        Status {
                            code: Code::Ok,
                            current_limit: Some(current(b)),
                            remaining: back.remaining,
                            until_reset_ms: back.reset_after_ms,
                        }
                    }
                    Err(e) => {
                        settle(Err(e))?;
                        unknown_status(b)
                    }
                }
            }
            Step::Force(b) => {
                let policy = policy_of(std::iter::once(b));
                match limiter.force(&policy, domain, 0, b.cost).await {
                    Ok(forced) => {
                        if let Some(slot) = hits_charged.get_mut(i) {
                            *slot = b.cost;
                        }
                        Status {
                            code: Code::Ok,
                            current_limit: Some(current(b)),
                            remaining: forced.remaining,
                            until_reset_ms: forced.reset_after_ms,
                        }
                    }
                    Err(e) => {
                        settle(Err(e))?;
                        unknown_status(b)
                    }
                }
            }
            Step::Charge(_) | Step::Shadow(_) => continue,
        };
        if let Some(slot) = statuses.get_mut(i) {
            *slot = Some(status);
        }
    }
    let statuses = statuses.into_iter().map(|s| s.unwrap_or_else(|| open_status(0))).collect();
    if overall == Code::Ok {
        retry_after_ms = Some(0);
    }
    Ok(Decision { overall, statuses, retry_after_ms, hits_charged })
}

/// The status of a bucket whose call failed after the decision: `OK`, nothing known left.
fn unknown_status(bucket: &Bucket) -> Status {
    Status { code: Code::Ok, current_limit: Some(current(bucket)), remaining: 0, until_reset_ms: 0 }
}

/// Notes, for every descriptor of `buckets`, its own cost as charged (a bucket named by
/// several descriptors was charged their sum, once).
fn record_charges(hits_charged: &mut [u64], steps: &[Step], buckets: &[(Vec<usize>, Bucket)]) {
    for &i in buckets.iter().flat_map(|(indexes, _)| indexes) {
        if let (Some(slot), Some(Step::Charge(b) | Step::Shadow(b))) = (hits_charged.get_mut(i), steps.get(i)) {
            *slot = b.cost;
        }
    }
}

/// The statuses of `buckets` from the rows of their one call; `enforced`: a refusing row
/// says `OVER_LIMIT` (a shadow row never does).
fn fill(statuses: &mut [Option<Status>], buckets: &[(Vec<usize>, Bucket)], reply: &CheckAllReply, enforced: bool) {
    for ((indexes, bucket), row) in buckets.iter().zip(&reply.limits) {
        let refused = !row.allowed && enforced;
        let until_reset_ms =
            if refused { row.retry_after_ms.unwrap_or(row.reset_after_ms) } else { row.reset_after_ms };
        for i in indexes {
            if let Some(slot) = statuses.get_mut(*i) {
                *slot = Some(Status {
                    code: if refused { Code::OverLimit } else { Code::Ok },
                    current_limit: Some(current(bucket)),
                    remaining: row.remaining,
                    until_reset_ms,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::config::DenyCacheSettings;
    use crate::limiter::memory::MemoryLimiter;
    use crate::rls::config::RlsConfig;
    use crate::rls::plan::{plan, Descriptor};

    const CONFIG: &str = "\
domain: api
descriptors:
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: path
    rate_limit: {unit: minute, requests_per_unit: 1}
    shadow_mode: true
  - key: bot
    rate_limit: {unit: hour, requests_per_unit: 0}
  - key: health
    rate_limit: {unlimited: true}
";

    fn d(key: &str, value: &str) -> Descriptor {
        Descriptor { entries: vec![(key.into(), value.into())], ..Descriptor::default() }
    }

    /// The deny cache keeps real time and the in-memory limiter a clock of its own (moved by
    /// `advance`): off, unless a test is about it.
    fn admission(limiter: &MemoryLimiter, deny_cache: bool) -> Admission<MemoryLimiter> {
        Admission::new(limiter.clone(), DenyCacheSettings { enabled: deny_cache, max_entries: 100 })
    }

    async fn ask(limiter: &MemoryLimiter, descriptors: &[Descriptor], hits: u32) -> Decision {
        let config = RlsConfig::parse([("api.yaml", CONFIG)]).unwrap();
        decide(&admission(limiter, false), "api", &plan(&config, "api", descriptors, hits)).await.unwrap()
    }

    /// Tokens left in a bucket of the service, taking nothing.
    async fn left(limiter: &MemoryLimiter, key: &str, value: &str) -> u64 {
        let mut look = d(key, value);
        look.hits_addend = Some(0);
        ask(limiter, &[look], 1).await.statuses[0].remaining
    }

    #[tokio::test]
    async fn a_request_refused_by_the_narrow_descriptor_leaves_the_broad_one_uncharged() {
        let limiter = MemoryLimiter::new();
        let both = [d("tenant", "t"), d("user", "u")];
        for left_after in [1, 0] {
            let decision = ask(&limiter, &both, 1).await;
            assert_eq!(decision.overall, Code::Ok);
            assert_eq!(decision.statuses[1].remaining, left_after);
        }
        let refused = ask(&limiter, &both, 1).await;
        assert_eq!(refused.overall, Code::OverLimit);
        assert_eq!(refused.statuses[0].code, Code::Ok, "the broad one would have admitted");
        assert_eq!(refused.statuses[1].code, Code::OverLimit);
        assert_eq!(refused.retry_after_ms, Some(30_000), "2 per minute: a token every 30 s");
        assert_eq!(refused.statuses[1].until_reset_ms, 30_000);
        assert_eq!(left(&limiter, "tenant", "t").await, 8, "charged twice, not three times");
        limiter.advance(Duration::from_secs(30));
        assert_eq!(ask(&limiter, &both, 1).await.overall, Code::Ok);
    }

    #[tokio::test]
    async fn hits_are_the_cost_zero_looks_and_negative_hits_give_back() {
        let limiter = MemoryLimiter::new();
        assert_eq!(ask(&limiter, &[d("tenant", "t")], 4).await.statuses[0].remaining, 6);
        assert_eq!(left(&limiter, "tenant", "t").await, 6);
        let mut back = d("tenant", "t");
        back.hits_addend = Some(3);
        back.negative = true;
        let decision = ask(&limiter, &[back], 1).await;
        assert_eq!((decision.overall, decision.statuses[0].remaining), (Code::Ok, 9));
        let mut over = d("tenant", "t");
        over.hits_addend = Some(11);
        let never = ask(&limiter, &[over], 1).await;
        assert_eq!((never.overall, never.retry_after_ms), (Code::OverLimit, None), "above the burst: never fits");
        assert_eq!(left(&limiter, "tenant", "t").await, 9);
    }

    #[tokio::test]
    async fn a_forced_charge_goes_into_debt_and_never_refuses() {
        let limiter = MemoryLimiter::new();
        let mut force = Descriptor {
            entries: vec![("user".into(), "u".into()), ("ml_api_rate_limiter".into(), "force".into())],
            ..Descriptor::default()
        };
        force.hits_addend = Some(3);
        let decision = ask(&limiter, &[force], 1).await;
        assert_eq!((decision.overall, decision.statuses[0].remaining), (Code::Ok, 0), "2 per minute, 3 charged");
        assert_eq!(decision.statuses[0].until_reset_ms, 90_000, "a debt of one token: 30 s more than a full wait");
        let refused = ask(&limiter, &[d("user", "u")], 1).await;
        assert_eq!((refused.overall, refused.retry_after_ms), (Code::OverLimit, Some(60_000)));
    }

    #[tokio::test]
    async fn shadow_unlimited_banned_and_unknown_descriptors() {
        let limiter = MemoryLimiter::new();
        for _ in 0..3 {
            let decision = ask(&limiter, &[d("path", "/x"), d("health", "h"), d("nothing", "n")], 1).await;
            assert_eq!(decision.overall, Code::Ok, "a shadow limit never refuses");
            assert_eq!(decision.statuses[1].remaining, u64::MAX);
            assert_eq!(decision.statuses[2], open_status(0));
        }
        assert_eq!(left(&limiter, "path", "/x").await, 0, "but it is charged");
        let banned = ask(&limiter, &[d("tenant", "t"), d("bot", "b")], 1).await;
        assert_eq!((banned.overall, banned.retry_after_ms), (Code::OverLimit, None));
        assert_eq!(banned.statuses[0].code, Code::Ok);
        assert_eq!(banned.statuses[1].code, Code::OverLimit);
        assert_eq!(left(&limiter, "tenant", "t").await, 10, "a banned request costs nothing elsewhere");
    }

    #[tokio::test]
    async fn a_limiter_that_does_not_answer_is_an_error_for_the_transport_to_report() {
        let limiter = MemoryLimiter::new();
        limiter.set_down(true);
        let config = RlsConfig::parse([("api.yaml", CONFIG)]).unwrap();
        let steps = plan(&config, "api", &[d("tenant", "t")], 1);
        assert!(decide(&admission(&limiter, false), "api", &steps).await.unwrap_err().is_outage());
        let none = plan(&config, "api", &[d("nothing", "n")], 1);
        assert_eq!(
            decide(&admission(&limiter, false), "api", &none).await.unwrap().overall,
            Code::Ok,
            "no limit: no call"
        );
    }

    #[tokio::test]
    async fn a_descriptor_sent_twice_charges_its_bucket_once_with_both_costs() {
        let limiter = MemoryLimiter::new();
        let twice = ask(&limiter, &[d("tenant", "t"), d("user", "u"), d("tenant", "t")], 1).await;
        assert_eq!(twice.overall, Code::Ok);
        assert_eq!((twice.statuses[0].remaining, twice.statuses[2].remaining), (8, 8), "10 - 2, on both");
        let shadowed = ask(&limiter, &[d("path", "/x"), d("path", "/x")], 1).await;
        // 2 asked of a bucket of 1: the shadow limit would refuse (charging nothing), the request passes.
        assert_eq!((shadowed.overall, shadowed.statuses[1].remaining), (Code::Ok, 1));
    }

    #[tokio::test]
    async fn each_descriptor_reports_the_hits_it_was_really_charged() {
        let limiter = MemoryLimiter::new();
        let mut look = d("tenant", "t");
        look.hits_addend = Some(0);
        let mut back = d("user", "v");
        back.negative = true;
        let force = Descriptor {
            entries: vec![("user".into(), "w".into()), ("ml_api_rate_limiter".into(), "force".into())],
            hits_addend: Some(5),
            ..Descriptor::default()
        };
        let mut three = d("tenant", "t");
        three.hits_addend = Some(3);
        let asked = [three, d("user", "u"), look, d("nothing", "n"), back, force, d("path", "/p"), d("tenant", "t")];
        let admitted = ask(&limiter, &asked, 1).await;
        assert_eq!(admitted.overall, Code::Ok);
        assert_eq!(admitted.hits_charged, [3, 1, 0, 0, 0, 5, 1, 1], "own shares of a bucket named twice");
        assert_eq!(left(&limiter, "tenant", "t").await, 6);
        ask(&limiter, &[d("user", "u")], 1).await;
        let refused = ask(&limiter, &[d("tenant", "t"), d("user", "u"), d("path", "/p")], 1).await;
        assert_eq!(refused.overall, Code::OverLimit);
        assert_eq!(refused.hits_charged, [0, 0, 0], "refused: nothing, and the shadow bucket was empty");
        let banned = ask(&limiter, &[d("tenant", "t"), d("bot", "b")], 1).await;
        assert_eq!(banned.hits_charged, [0, 0]);
    }

    #[tokio::test]
    async fn a_call_failing_after_the_decision_leaves_the_decision_and_its_charge() {
        let limiter = MemoryLimiter::new();
        let mut back = d("user", "u");
        back.negative = true;
        let config = RlsConfig::parse([("api.yaml", CONFIG)]).unwrap();
        let steps = plan(&config, "api", &[d("tenant", "t"), back.clone(), d("path", "/p")], 1);
        limiter.set_down_after(1);
        let decision = decide(&admission(&limiter, false), "api", &steps).await.unwrap();
        assert_eq!((decision.overall, decision.statuses[0].remaining), (Code::Ok, 9), "admitted and charged");
        assert_eq!(decision.hits_charged, [1, 0, 0], "the shadow charge failed: not reported");
        assert_eq!(decision.statuses[1].code, Code::Ok);
        let Step::Charge(tenant) = &steps[0] else { panic!("{:?}", steps[0]) };
        assert_eq!(limiter.tokens(&policy_of(std::iter::once(tenant)), "api", 0), 9, "the charge stays");
        let alone = plan(&config, "api", &[back], 1);
        assert!(
            decide(&admission(&limiter, false), "api", &alone).await.unwrap_err().is_outage(),
            "nothing decided: the failure is the answer"
        );
    }

    #[tokio::test]
    async fn the_deny_cache_answers_the_same_buckets_again_and_only_them() {
        let limiter = MemoryLimiter::new();
        let admission = admission(&limiter, true);
        let config = RlsConfig::parse([("api.yaml", CONFIG)]).unwrap();
        let run = |descriptors: Vec<Descriptor>| {
            let steps = plan(&config, "api", &descriptors, 1);
            let admission = &admission;
            async move { decide(admission, "api", &steps).await.unwrap() }
        };
        for _ in 0..2 {
            assert_eq!(run(vec![d("user", "u")]).await.overall, Code::Ok);
        }
        assert_eq!(run(vec![d("user", "u")]).await.overall, Code::OverLimit);
        let calls = limiter.checks();
        assert_eq!(run(vec![d("user", "u")]).await.overall, Code::OverLimit);
        assert_eq!(limiter.checks(), calls, "refused again without a call");
        assert_eq!(run(vec![d("user", "v")]).await.overall, Code::Ok, "another user's bucket");
        let with_tenant = run(vec![d("tenant", "t"), d("user", "u")]).await;
        assert_eq!(with_tenant.overall, Code::OverLimit);
        assert!(limiter.checks() > calls, "another set of buckets asks the limiter");
        let mut look = d("user", "u");
        look.hits_addend = Some(0);
        assert_eq!(run(vec![look]).await.overall, Code::Ok, "a look is never answered by the cache");
        // A refund of the bucket (a settled LLM answer) makes the remembered refusal void.
        let mut back = d("user", "u");
        back.negative = true;
        assert_eq!(run(vec![back]).await.overall, Code::Ok);
        let calls = limiter.checks();
        assert_eq!(run(vec![d("user", "u")]).await.overall, Code::Ok, "the refunded token admits");
        assert_eq!(limiter.checks(), calls + 1, "asked Redis again");
    }
}
