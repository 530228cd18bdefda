//! `KEEP`: a request admitted only when `keep` tokens remain after it. Checked by asking the
//! limiter again: it is admitted exactly when a plain request of `cost + keep` would be, waits
//! as long as that one, and then takes what a plain request of `cost` takes.

use proptest::prelude::*;

use super::generators::*;
use super::*;

fn keeping(q: &Quota, stored: Option<Tat>, now: u64, cost: u64, keep: u64) -> Decision {
    match decide_keeping(q, stored, now, cost, keep) {
        Ok(decision) => decision,
        Err(err) => panic!("decide_keeping({q:?}, {stored:?}, {now}, {cost}, {keep}) = {err:?}"),
    }
}

#[test]
#[rustfmt::skip]
fn keep_leaves_tokens_for_later_requests() {
    // 5 per 10 s: a token every 2 s.
    let q = quota(5, 10, 5);
    let d = keeping(&q, None, T0, 2, 3);
    assert_eq!((d.allowed, d.remaining, d.reset_after_ms), (true, 3, 4000));
    let d = keeping(&q, d.new_tat, T0, 1, 3);
    assert_eq!((d.allowed, d.remaining, d.retry_after, d.new_tat), (false, 3, Millis(2000), None));
    assert_eq!(keeping(&q, None, T0, 1, 5).retry_after, Never, "1 + 5 is more than the bucket");
    let report = keeping(&q, None, T0, 0, 5);
    assert_eq!((report.allowed, report.new_tat), (true, None), "COST 0 KEEP 5 on a full bucket: yes, nothing written");
}

proptest::proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_kept_request_is_decided_like_cost_plus_keep_and_charged_like_cost(
        q in any_quota(), t0 in start(), gens in gens(), step: (u8, u64), cost: (u8, u64), keep: (u8, u64),
    ) {
        let (stored, now) = state_after(&q, t0, &gens, step);
        let (cost, keep) = (amount(&q, cost.0, cost.1), amount(&q, keep.0, keep.1));
        let d = keeping(&q, stored, now, cost, keep);
        match cost.checked_add(keep) {
            Some(needed) if needed > 0 => {
                let as_needed = check(&q, stored, now, needed);
                prop_assert_eq!((d.allowed, d.retry_after), (as_needed.allowed, as_needed.retry_after));
            }
            Some(_) => prop_assert!(d.allowed && d.new_tat.is_none()),
            None => prop_assert_eq!((d.allowed, d.retry_after), (false, Never)),
        }
        if d.allowed {
            let plain = check(&q, stored, now, cost);
            prop_assert_eq!((d.remaining, d.reset_after_ms, d.new_tat), (plain.remaining, plain.reset_after_ms, plain.new_tat));
            prop_assert!(d.remaining >= keep, "{:?} left fewer than {}", d, keep);
        } else {
            prop_assert_eq!(d.new_tat, None);
        }
    }
}
