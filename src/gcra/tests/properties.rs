//! Properties: the invariants the limiter promises, each checked over generated stories by
//! asking the limiter again (wait exactly `retry_after` and retry, wait `reset_after` and
//! look, take `remaining` tokens, ...) rather than by re-deriving the formulas.

use proptest::collection::vec;
use proptest::prelude::*;

use super::generators::*;
use super::*;

// ---------------------------------------------------------------------------------------
// Per-reply checks, each by asking again
// ---------------------------------------------------------------------------------------

fn assert_reply_shape(q: &Quota, c: &Call) {
    let d = c.reply;
    assert!(d.remaining <= q.burst(), "{c:?}: remaining above burst");
    if c.cost > q.burst() {
        assert_eq!((d.allowed, d.retry_after, d.new_tat), (false, Never, None), "{c:?}: cost above burst");
    } else if d.allowed {
        assert_eq!(d.retry_after, Now, "{c:?}");
        assert_eq!(d.new_tat.is_some(), c.cost > 0, "{c:?}: writes exactly when it takes tokens");
    } else {
        assert!(matches!(d.retry_after, Millis(ms) if ms >= 1), "{c:?}: a refusal says how long to wait");
        assert_eq!(d.new_tat, None, "{c:?}: a refusal writes nothing");
        if c.cost > 0 {
            assert!(d.remaining < c.cost, "{c:?}: refused with enough tokens");
        }
    }
    assert_eq!(d.reset_after_ms == 0, d.remaining == q.burst(), "{c:?}: reset 0 exactly when full");
}

pub(super) fn assert_retry_after_is_exact(q: &Quota, c: &Call) {
    let Millis(ms) = c.reply.retry_after else { return };
    let Some(on_time) = after_ms(c.now, ms) else { return };
    assert!(check(q, c.stored, on_time, c.cost).allowed, "{c:?}: waiting exactly {ms} ms must admit");
    let early = c.now + (ms - 1) * MS;
    assert!(!check(q, c.stored, early, c.cost).allowed, "{c:?}: {ms} ms is rounded up, so one less must not admit");
}

pub(super) fn assert_reset_after_is_exact(q: &Quota, c: &Call) {
    let ms = c.reply.reset_after_ms;
    let Some(full_at) = after_ms(c.now, ms) else { return };
    let full = peek(q, c.after(), full_at);
    assert_eq!((full.remaining, full.reset_after_ms), (q.burst(), 0), "{c:?}: full after {ms} ms");
    if ms > 0 {
        let before = peek(q, c.after(), c.now + (ms - 1) * MS);
        assert!(before.remaining < q.burst(), "{c:?}: {ms} ms is rounded up, so one less is not full");
    }
}

pub(super) fn assert_remaining_is_exact(q: &Quota, c: &Call) {
    let left = c.reply.remaining;
    if left > 0 {
        assert!(check(q, c.after(), c.now, left).allowed, "{c:?}: the {left} remaining can be taken");
    }
    if left < q.burst() {
        assert!(!check(q, c.after(), c.now, left + 1).allowed, "{c:?}: {} cannot be taken", left + 1);
    }
    assert_eq!(peek(q, c.after(), c.now).remaining, left, "{c:?}: asking again reports the same");
}

/// Over the calls `i..=j`, spanning `[lo, hi]`, at most `burst + floor(limit × (hi - lo) /
/// window)` tokens are admitted.
fn assert_admissions_bounded(q: &Quota, calls: &[Call]) {
    for (i, first) in calls.iter().enumerate() {
        let (mut lo, mut hi, mut admitted) = (first.now, first.now, 0u128);
        for c in calls.iter().skip(i) {
            lo = lo.min(c.now);
            hi = hi.max(c.now);
            if c.reply.allowed {
                admitted += u128::from(c.cost);
            }
            let bound = u128::from(q.burst()) + rate_tokens(q, hi - lo);
            assert!(admitted <= bound, "{admitted} tokens admitted within {} ns, bound {bound}: {calls:#?}", hi - lo);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest::proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn every_reply_has_the_documented_shape(q in any_quota(), t0 in start(), gens in gens(), back: bool) {
        for c in play_gens(&q, t0, &gens, back) {
            assert_reply_shape(&q, &c);
        }
    }

    #[test]
    fn waiting_exactly_retry_after_admits_and_a_millisecond_less_does_not(
        q in any_quota(), t0 in start(), gens in gens(), back: bool,
    ) {
        for c in play_gens(&q, t0, &gens, back) {
            assert_retry_after_is_exact(&q, &c);
        }
    }

    #[test]
    fn reset_after_is_exactly_the_wait_for_a_full_bucket(q in any_quota(), t0 in start(), gens in gens(), back: bool) {
        for c in play_gens(&q, t0, &gens, back) {
            assert_reset_after_is_exact(&q, &c);
        }
    }

    #[test]
    fn remaining_is_exactly_what_can_still_be_taken_at_that_instant(
        q in any_quota(), t0 in start(), gens in gens(), back: bool,
    ) {
        for c in play_gens(&q, t0, &gens, back) {
            assert_remaining_is_exact(&q, &c);
        }
    }

    #[test]
    fn remaining_never_increases_between_calls_at_the_same_instant(
        q in any_quota(), t0 in start(), gens in gens(), back: bool,
    ) {
        let calls = play_gens(&q, t0, &gens, back);
        for (before, c) in calls.iter().zip(calls.iter().skip(1)) {
            if c.now == before.now {
                prop_assert!(c.reply.remaining <= before.reply.remaining, "{before:?} then {c:?}");
            }
        }
    }

    #[test]
    fn admissions_over_any_interval_never_exceed_burst_plus_the_rate(q in any_quota(), t0 in start(), gens in gens()) {
        assert_admissions_bounded(&q, &play_gens(&q, t0, &gens, false));
    }

    #[test]
    fn a_clock_stepping_backwards_never_grants_extra_tokens(q in any_quota(), t0 in start(), gens in gens()) {
        let calls = play_gens(&q, t0, &gens, true);
        assert_admissions_bounded(&q, &calls);
        let mut latest = 0;
        for c in &calls {
            latest = latest.max(c.now);
            // Whatever the key holds, an earlier reading shows no more than the latest one.
            let back = peek(&q, c.after(), c.now);
            let ahead = peek(&q, c.after(), latest);
            prop_assert!(back.remaining <= ahead.remaining, "{c:?}: {back:?} at {} vs {ahead:?} at {latest}", c.now);
            if c.reply.allowed {
                let at_latest = check(&q, c.stored, latest, c.cost);
                prop_assert!(at_latest.allowed, "{c:?}: admitted only thanks to the step back");
            }
        }
    }

    #[test]
    fn more_elapsed_time_never_gives_fewer_tokens(
        q in any_quota(), t0 in start(), gens in gens(), step in (0u8..5, any::<u64>()),
        gap in (0u8..5, any::<u64>()), before_last: bool, cost in (0u8..7, any::<u64>()),
    ) {
        let (stored, now) = state_after(&q, t0, &gens, step);
        // Two readings t1 ≤ t2, the first possibly before the last call (clock stepped back).
        let t1 = if before_last { now.saturating_sub(clock_step(&q, step.0, step.1)) } else { now };
        let t2 = t1 + clock_step(&q, gap.0, gap.1);
        let cost = amount(&q, cost.0, cost.1);
        let (early, late) = (check(&q, stored, t1, cost), check(&q, stored, t2, cost));
        let (early_left, late_left) = (peek(&q, stored, t1).remaining, peek(&q, stored, t2).remaining);
        prop_assert!(early_left <= late_left, "{early_left} tokens at {t1} but {late_left} at {t2}");
        prop_assert!(!early.allowed || late.allowed, "admitted at {t1} but not at {t2}");
        let (early_reset, late_reset) = (peek(&q, stored, t1).reset_after_ms, peek(&q, stored, t2).reset_after_ms);
        prop_assert!(late_reset <= early_reset, "full in {early_reset} ms at {t1} but in {late_reset} ms at {t2}");
        if let (Millis(sooner), Millis(later)) = (early.retry_after, late.retry_after) {
            prop_assert!(later <= sooner, "retry_after grew from {sooner} to {later} ms");
        }
    }

    /// Spec: cost 0 reports and writes nothing, with `allowed` true.
    #[test]
    fn a_zero_cost_query_is_always_allowed_and_writes_nothing(q in any_quota(), t0 in start(), gens in gens()) {
        for c in play_gens(&q, t0, &gens, true) {
            let d = peek(&q, c.after(), c.now);
            prop_assert_eq!((d.allowed, d.retry_after, d.new_tat), (true, Now, None), "{:?}", c);
        }
    }

    #[test]
    fn written_state_advances_by_exactly_the_cost_and_round_trips_through_the_encoding(
        q in any_quota(), t0 in start(), gens in gens(), back: bool,
    ) {
        for c in play_gens(&q, t0, &gens, back) {
            let Some(tat) = c.reply.new_tat else { continue };
            prop_assert!(tat.nanos <= i64::MAX as u64);
            if tat.numerator == 0 {
                prop_assert_eq!(tat, Tat::from_nanos(tat.nanos));
            } else {
                prop_assert!(tat.numerator < tat.denominator && tat.denominator == q.limit(), "{:?}", tat);
            }
            // max(TAT, now) + cost × interval, exactly.
            let now = u128::from(c.now) * u128::from(q.limit());
            let base = c.stored.map_or(now, |t| scaled(&q, t)).max(now);
            prop_assert_eq!(scaled(&q, tat), base + u128::from(c.cost) * interval_units(&q), "{:?}", c);
            // Stories may start at any clock; the encoding only accepts TATs a real server
            // clock can produce (from 2001 on).
            if tat.nanos >= state::MIN_TAT_NANOS {
                prop_assert_eq!(state::decode(state::encode(&tat).as_bytes()), Some(tat));
            }
        }
    }

    #[test]
    fn a_fresh_bucket_admits_exactly_the_burst_at_one_instant_however_it_is_split(
        q in any_quota(), now in 0..=6_000_000_000_000_000_000u64, cuts in vec(any::<u64>(), 0..8),
    ) {
        let burst = q.burst();
        let mut points: Vec<u64> = cuts.iter().map(|cut| cut % burst.saturating_add(1)).collect();
        points.push(burst);
        points.sort_unstable();
        let (mut stored, mut taken) = (None, 0);
        for point in points {
            let cost = point - taken;
            let d = check(&q, stored, now, cost);
            prop_assert!(d.allowed, "{} of {} taken, {} more refused: {:?}", taken, burst, cost, d);
            taken = point;
            prop_assert_eq!(d.remaining, burst - taken);
            stored = d.new_tat.or(stored);
        }
        let d = check(&q, stored, now, 1);
        prop_assert!(!d.allowed && d.remaining == 0, "one over the burst: {:?}", d);
    }

    #[test]
    fn a_client_pacing_on_the_exact_grid_is_never_limited(q in paced_quota(), t0 in start(), n in 1u64..64) {
        let mut stored = None;
        for k in 0..n {
            let now = t0 + grid_ns(&q, k);
            let d = check(&q, stored, now, 1);
            prop_assert!(d.allowed, "request {} at t0 + {} ns: {:?}", k, now - t0, d);
            stored = d.new_tat;
        }
    }

    #[test]
    fn a_client_at_least_one_rounded_up_interval_apart_is_never_limited(
        q in modest_quota(), t0 in start(), extras in vec((0u8..5, any::<u64>()), 1..48),
    ) {
        let (mut stored, mut now) = (None, t0);
        for (i, (kind, seed)) in extras.into_iter().enumerate() {
            let d = check(&q, stored, now, 1);
            prop_assert!(d.allowed, "request {} at t0 + {} ns: {:?}", i, now - t0, d);
            stored = d.new_tat;
            now += grid_ns(&q, 1) + clock_step(&q, kind, seed);
        }
    }

    #[test]
    fn a_drained_bucket_refills_exactly_on_the_grid(q in paced_quota(), t0 in start(), n in 1u64..32) {
        let d = check(&q, None, t0, q.burst());
        prop_assert!(d.allowed);
        let mut stored = d.new_tat;
        for k in 1..=n {
            // Token k exists from t0 + k × interval: refused 1 ns before ceil(k × I), admitted at it.
            let due = t0 + grid_ns(&q, k);
            let early = check(&q, stored, due - 1, 1);
            prop_assert!(!early.allowed, "token {} at t0 + {} ns: {:?}", k, due - 1 - t0, early);
            let on_time = check(&q, stored, due, 1);
            prop_assert!(on_time.allowed, "token {} at t0 + {} ns: {:?}", k, due - t0, on_time);
            stored = on_time.new_tat;
        }
    }

    #[test]
    fn a_refund_gives_back_exactly_the_amount_up_to_the_burst(
        q in any_quota(), t0 in start(), gens in gens(), step in (0u8..5, any::<u64>()), give in (0u8..7, any::<u64>()),
    ) {
        let (stored, now) = state_after(&q, t0, &gens, step);
        let give = amount(&q, give.0, give.1);
        let before = peek(&q, stored, now).remaining;
        let r = give_back(&q, stored, now, give);
        let want = u128::from(before).saturating_add(u128::from(give)).min(u128::from(q.burst()));
        prop_assert_eq!(u128::from(r.remaining), want, "{:?} + {} at {}: {:?}", stored, give, now, r);
        match r.write {
            RefundWrite::Nothing => prop_assert!(stored.is_none() || give == 0, "{:?}", r),
            RefundWrite::Delete => {
                prop_assert!(stored.is_some() && give > 0);
                prop_assert_eq!((r.remaining, r.reset_after_ms), (q.burst(), 0));
            }
            RefundWrite::Store(tat) => {
                prop_assert!(r.remaining < q.burst() && give > 0, "{:?}", r);
                let d = peek(&q, Some(tat), now);
                prop_assert_eq!((d.remaining, d.reset_after_ms), (r.remaining, r.reset_after_ms));
            }
        }
        if stored.is_none() {
            prop_assert_eq!(r, Refund { remaining: q.burst(), reset_after_ms: 0, write: RefundWrite::Nothing });
        }
    }

    #[test]
    fn a_refund_never_fills_above_the_burst_even_with_the_clock_stepping_back(
        q in any_quota(), t0 in start(), gens in gens(), give in (0u8..7, any::<u64>()),
    ) {
        for c in play_gens(&q, t0, &gens, true) {
            let give = amount(&q, give.0, give.1);
            let before = peek(&q, c.after(), c.now).remaining;
            let r = give_back(&q, c.after(), c.now, give);
            let most = u128::from(before).saturating_add(u128::from(give)).min(u128::from(q.burst()));
            prop_assert!(u128::from(r.remaining) <= most, "{:?}: +{} gave {:?}", c, give, r);
        }
    }

    #[test]
    fn refunding_what_was_just_taken_restores_the_state(
        q in any_quota(), t0 in start(), gens in gens(), step in (0u8..5, any::<u64>()), seed: u64,
    ) {
        let (stored, now) = state_after(&q, t0, &gens, step);
        let cost = 1 + seed % q.burst();
        let d = check(&q, stored, now, cost);
        if d.allowed {
            let r = give_back(&q, d.new_tat, now, cost);
            let was = peek(&q, stored, now);
            prop_assert_eq!(r.remaining, was.remaining);
            // A full bucket before (a TAT at or before now) means the key goes; else the old TAT.
            let write = match stored {
                Some(tat) if was.remaining < q.burst() => RefundWrite::Store(tat),
                _ => RefundWrite::Delete,
            };
            prop_assert_eq!(r.write, write, "{:?} took {} at {}", stored, cost, now);
        }
    }
}
