//! `FORCE`: charging after the fact. A story with explicit times, then properties checked by
//! asking the limiter again: a forced charge the bucket can pay is an ordinary admission, a
//! larger one is a debt of at most one full burst that delays later requests exactly as long
//! as the limiter itself then says, and forced charges add up.

use proptest::prelude::*;

use super::generators::*;
use super::properties::{assert_remaining_is_exact, assert_reset_after_is_exact, assert_retry_after_is_exact};
use super::*;

fn force(q: &Quota, stored: Option<Tat>, now: u64, cost: u64) -> Decision {
    match decide_forced(q, stored, now, cost) {
        Ok(decision) => decision,
        Err(err) => panic!("decide_forced({q:?}, {stored:?}, {now}, {cost}) = {err:?}"),
    }
}

#[test]
#[rustfmt::skip]
fn a_forced_charge_goes_into_debt_that_later_requests_wait_for() {
    // 5 per 10 s: a token every 2 s, tolerance 10 s.
    let q = quota(5, 10, 5);
    let mut stored = None;
    // (now, cost, forced, allowed, remaining, retry_after, reset_after_ms)
    let rows: &[(u64, u64, bool, bool, u64, RetryAfter, u64)] = &[
        (T0,              3,   true,  true,  2, Now,           6_000),  // the bucket pays: an ordinary charge
        (T0,              5,   true,  true,  0, Now,           16_000), // 2 paid, 3 owed: TAT 6 s past the tolerance
        (T0,              1,   false, false, 0, Millis(8_000), 16_000), // repay 3 and refill 1: 4 tokens, 8 s
        (T0,              0,   true,  true,  0, Now,           16_000), // COST 0 FORCE only reports
        (T0,              100, true,  true,  0, Now,           20_000), // capped: at most one burst owed
        (T0 + 12_000 * MS - MS, 1, false, false, 0, Millis(1), 8_001),
        (T0 + 12_000 * MS, 1,  false, true,  0, Now,           10_000), // debt repaid, one token refilled
        (T0 + 12_000 * MS, 7,  true,  true,  0, Now,           20_000), // 7 more owed, capped at 2 × 10 s
    ];
    for (i, &(now, cost, forced, allowed, remaining, retry_after, reset_after_ms)) in rows.iter().enumerate() {
        let d = if forced { force(&q, stored, now, cost) } else { check(&q, stored, now, cost) };
        assert_eq!(
            (d.allowed, d.remaining, d.retry_after, d.reset_after_ms),
            (allowed, remaining, retry_after, reset_after_ms),
            "row {i}: cost {cost} forced {forced}"
        );
        assert_eq!(d.new_tat.is_some(), allowed && cost > 0, "row {i}: writes exactly when it charges");
        stored = d.new_tat.or(stored);
    }
}

#[test]
fn a_forced_charge_on_a_tat_beyond_the_cap_writes_nothing_and_grants_nothing() {
    // A clock that stepped back 30 s: the stored TAT lies 36 s ahead, past now + 2 × 10 s.
    let q = quota(5, 10, 5);
    let stored = Some(Tat::from_nanos(T0 + 36 * SEC));
    let d = force(&q, stored, T0, 3);
    assert_eq!((d.allowed, d.remaining, d.reset_after_ms, d.new_tat), (true, 0, 36_000, None));
}

#[test]
fn forced_charges_at_the_end_of_i64_are_refused_not_wrapped() {
    let q = quota(1, 1, 1);
    let late = i64::MAX as u64 - SEC;
    assert_eq!(decide_forced(&q, None, late, 2), Err(MathError::StateOutOfRange));
    let at_century = quota(1, CENTURY_SECS, 1);
    // 2 × 100 years after 2025 still fits i64 nanoseconds (which end in 2262).
    let d = force(&at_century, None, T0, u64::MAX);
    assert_eq!(d.reset_after_ms, 2 * CENTURY_SECS * 1000);
}

/// Quotas whose tolerance is at most 50 years: a forced charge may leave the TAT two
/// tolerances ahead, and asking the limiter again at the end of that wait adds a third, which
/// must still fit `i64` nanoseconds from the generated clock readings (up to 2033). (Near the
/// 100-year edge the limiter answers `StateOutOfRange` instead, tested above.)
fn forced_quota() -> impl Strategy<Value = Quota> {
    any_quota().prop_filter("tolerance of at most 50 years", |q| tolerance_ns(q) <= MAX_TOLERANCE_NANOS / 2)
}

proptest::proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_forced_charge_the_bucket_can_pay_is_an_ordinary_admission(
        q in forced_quota(), t0 in start(), gens in gens(), step: (u8, u64), cost: (u8, u64), back: bool,
    ) {
        let (stored, now) = state_after(&q, t0, &gens, step);
        let now = if back { now.saturating_sub(clock_step(&q, step.0, step.1)) } else { now };
        let cost = amount(&q, cost.0, cost.1);
        let ordinary = check(&q, stored, now, cost);
        if ordinary.allowed {
            prop_assert_eq!(force(&q, stored, now, cost), ordinary);
        }
    }

    #[test]
    fn a_forced_charge_owes_at_most_one_burst_and_answers_exactly(
        q in forced_quota(), t0 in start(), gens in gens(), step: (u8, u64), cost: (u8, u64),
    ) {
        let (stored, now) = state_after(&q, t0, &gens, step);
        let cost = amount(&q, cost.0, cost.1);
        let d = force(&q, stored, now, cost);
        prop_assert!(d.allowed && d.retry_after == Now && d.remaining <= q.burst(), "{:?}", d);
        // The bound, by asking the limiter: a fresh bucket drained at once is full again after
        // one tolerance; a forced charge never leaves more than twice that to wait.
        let drained = check(&q, None, now, q.burst()).reset_after_ms;
        prop_assert!(d.reset_after_ms <= 2 * drained, "{:?} waits past 2 x {}", d, drained);
        let c = Call { stored, now, cost, reply: d };
        assert_reset_after_is_exact(&q, &c);
        assert_remaining_is_exact(&q, &c);
        // Whatever is owed, the next request of 1 waits exactly as long as the limiter says.
        let next = Call { stored: c.after(), now, cost: 1, reply: check(&q, c.after(), now, 1) };
        assert_retry_after_is_exact(&q, &next);
    }

    #[test]
    fn a_debt_of_d_tokens_delays_the_next_request_like_d_plus_one_on_an_empty_bucket(
        q in forced_quota(), t0 in start(), d in any::<u64>(),
    ) {
        let d = d % q.burst();
        let Some(cost) = q.burst().checked_add(d) else { return Ok(()) };
        let fresh = check(&q, None, t0, q.burst()).new_tat;
        let forced = force(&q, None, t0, cost);
        let next = check(&q, forced.new_tat, t0, 1);
        prop_assert_eq!(next.allowed, false);
        prop_assert_eq!(next.retry_after, check(&q, fresh, t0, d + 1).retry_after);
    }

    #[test]
    fn forced_charges_add_up(
        q in forced_quota(), t0 in start(), gens in gens(), step: (u8, u64), a: (u8, u64), b: (u8, u64),
    ) {
        let (stored, now) = state_after(&q, t0, &gens, step);
        let (a, b) = (amount(&q, a.0, a.1), amount(&q, b.0, b.1));
        let first = force(&q, stored, now, a);
        let both = force(&q, first.new_tat.or(stored), now, b);
        let Some(sum) = a.checked_add(b) else { return Ok(()) };
        let at_once = force(&q, stored, now, sum);
        prop_assert_eq!(both.new_tat.or(first.new_tat).or(stored), at_once.new_tat.or(stored));
        prop_assert_eq!((both.remaining, both.reset_after_ms), (at_once.remaining, at_once.reset_after_ms));
    }

    #[test]
    fn a_forced_charge_never_moves_the_tat_earlier(
        q in forced_quota(), t0 in start(), gens in gens(), back in 0u64..=u64::MAX, cost: (u8, u64),
    ) {
        let calls = play_gens(&q, t0, &gens, true);
        let (stored, last) = calls.last().map_or((None, t0), |c| (c.after(), c.now));
        let now = last.saturating_sub(back % (tolerance_ns(&q).min(MAX_STEP) as u64 * 3 + 1));
        let before = peek(&q, stored, now).reset_after_ms;
        let d = force(&q, stored, now, amount(&q, cost.0, cost.1));
        prop_assert!(d.reset_after_ms >= before, "{:?} moved the TAT earlier than {}", d, before);
    }
}
