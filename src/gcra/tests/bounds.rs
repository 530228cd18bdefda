//! Where the numbers end: a tolerance of 100 years and not a fraction of a nanosecond more,
//! the first millisecond of an expiry, and clock readings and states at the edges of `i64`
//! and `u64`, where nothing may panic.

use proptest::prelude::*;

use super::generators::*;
use super::*;

#[test]
fn expiry_is_the_first_millisecond_at_or_after_the_tat() {
    for (tat, want) in [
        (Tat::from_nanos(0), 0),
        (Tat::from_nanos(1), 1),
        (Tat::from_nanos(999_999), 1),
        (Tat::from_nanos(1_000_000), 1),
        (Tat::from_nanos(1_000_001), 2),
        (Tat { nanos: 0, numerator: 1, denominator: 3 }, 1),
        (Tat { nanos: 999_999, numerator: 2, denominator: 3 }, 1), // 999 999.67 ns
        (Tat { nanos: 1_000_000, numerator: 1, denominator: 3 }, 2), // just past 1 ms
        (Tat { nanos: T0 + 333_333_333, numerator: 1, denominator: 3 }, T0 / MS + 334),
        (Tat::from_nanos(i64::MAX as u64), 9_223_372_036_855),
        (Tat::from_nanos(u64::MAX), 18_446_744_073_710),
        (Tat { nanos: u64::MAX, numerator: 1, denominator: 2 }, 18_446_744_073_710),
    ] {
        assert_eq!(tat.expiry_millis(), want, "{tat:?}");
    }
}

#[test]
fn quota_accepts_a_tolerance_of_up_to_100_years_and_no_more() {
    use MathError::ToleranceTooLarge;
    for (limit, window, burst, want) in [
        (1, 1, CENTURY_SECS, Ok(())),
        (1, 1, CENTURY_SECS + 1, Err(ToleranceTooLarge)),
        (1, CENTURY_SECS, 1, Ok(())),
        (1, CENTURY_SECS + 1, 1, Err(ToleranceTooLarge)),
        (2, CENTURY_SECS, 2, Ok(())),
        (2, CENTURY_SECS, 3, Err(ToleranceTooLarge)),
        (u64::MAX, u64::MAX, CENTURY_SECS, Ok(())),
        (u64::MAX, u64::MAX, CENTURY_SECS + 1, Err(ToleranceTooLarge)),
        (u64::MAX, 1, u64::MAX, Ok(())), // one second
        (u64::MAX, 1, 1, Ok(())),
        (1, 1, u64::MAX, Err(ToleranceTooLarge)),
        (1, u64::MAX, u64::MAX, Err(ToleranceTooLarge)), // burst × window × 10^9 overflows u128
        (u64::MAX, u64::MAX, u64::MAX, Err(ToleranceTooLarge)),
        (i64::MAX as u64, i64::MAX as u64, i64::MAX as u64, Err(ToleranceTooLarge)),
        // burst × 10^9 / (10^9 + 1) ns is exactly 100 years.
        (1_000_000_001, 1, 3_153_600_003_153_600_000, Ok(())),
    ] {
        let got = try_quota(limit, window, burst);
        assert_eq!(got.map(|_| ()), want, "Quota::new({limit}, {window}, {burst})");
        if let Ok(q) = got {
            assert_eq!((q.limit(), q.window_secs(), q.burst()), (limit, window, burst));
        }
    }
}

/// `burst × window / limit` is 100 years plus 10^9 / (10^9 + 1) ns: over the maximum.
#[test]
fn quota_rejects_a_tolerance_a_fraction_of_a_nanosecond_over_100_years() {
    let burst = 3_153_600_003_153_600_001;
    assert!(u128::from(burst) * NANOS_PER_SEC > MAX_TOLERANCE_NANOS * 1_000_000_001);
    assert_eq!(try_quota(1_000_000_001, 1, burst), Err(MathError::ToleranceTooLarge));
}

#[test]
fn deciding_at_the_end_of_the_u64_clock_does_not_panic() {
    // An admission there cannot be stored (stored instants stay within i64).
    assert_eq!(decide(&quota(1, 1, 1), None, u64::MAX, 1), Err(MathError::StateOutOfRange));
    // A tolerance of one second, in units of 1/u64::MAX ns.
    let q = quota(u64::MAX, 1, u64::MAX);
    // A stored TAT at the end of the u64 clock, read at 0: refused, and no panic either.
    assert!(matches!(decide(&q, Some(Tat::from_nanos(u64::MAX)), 0, 1), Ok(Decision { allowed: false, .. })));
    // A fresh key at the end of the u64 clock, taking the whole burst.
    assert_eq!(decide(&q, None, u64::MAX, u64::MAX), Err(MathError::StateOutOfRange));
}

/// `state` keeps every number within `i64`; a fraction written under a larger limit has a
/// denominator it cannot read back, and the key would then be refused as foreign.
#[test]
fn a_state_written_under_a_limit_above_i64_can_be_read_back() {
    let limit = i64::MAX as u64 + 1;
    // Refusing such a quota, or such a decision, would be as good as a readable state.
    let Ok(q) = try_quota(limit, 1, 1) else { return };
    let Ok(d) = decide(&q, None, T0, 1) else { return };
    let Some(tat) = d.new_tat else { panic!("admitted a first token without writing: {d:?}") };
    assert_eq!(state::decode(state::encode(&tat).as_bytes()), Some(tat), "{q:?}");
}

proptest::proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn quota_accepts_exactly_the_tolerances_up_to_100_years(
        (limit, window, burst) in prop_oneof![(edgy(), edgy(), edgy()), at_the_tolerance_boundary()],
    ) {
        let units = u128::from(burst).checked_mul(u128::from(window)).and_then(|u| u.checked_mul(NANOS_PER_SEC));
        let fits = matches!(units, Some(units) if units <= MAX_TOLERANCE_NANOS * u128::from(limit));
        match try_quota(limit, window, burst) {
            Ok(q) => {
                prop_assert!(fits, "accepted a tolerance over 100 years: {:?}", q);
                prop_assert_eq!((q.limit(), q.window_secs(), q.burst()), (limit, window, burst));
            }
            Err(err) => {
                prop_assert!(!fits, "refused a tolerance within 100 years: {:?}", err);
                prop_assert_eq!(err, MathError::ToleranceTooLarge);
            }
        }
    }

    #[test]
    fn expiry_millis_is_the_first_millisecond_at_or_after_the_exact_tat(
        nanos in edgy_or_zero(), den in 2..=i64::MAX as u64, seed: u64, whole: bool,
    ) {
        let tat = if whole { Tat::from_nanos(nanos) } else {
            Tat { nanos, numerator: 1 + seed % (den - 1), denominator: den }
        };
        // In units of 1/denominator ns: the TAT is nanos × den + numerator.
        let den = u128::from(tat.denominator);
        let exact = u128::from(tat.nanos) * den + u128::from(tat.numerator);
        let ms = u128::from(tat.expiry_millis()) * 1_000_000 * den;
        prop_assert!(ms >= exact, "{:?}: expiry before the TAT", tat);
        prop_assert!(ms < exact + 1_000_000 * den, "{:?}: not the first such millisecond", tat);
    }

    #[test]
    fn nothing_panics_on_instants_within_i64(
        limit in edgy(), window in edgy(), burst in edgy(),
        present: bool, nanos in i64_instant(), fraction in fraction(),
        now in i64_instant(), cost in edgy_or_zero(),
    ) {
        let q = fitted_quota(limit, window, burst);
        let stored = build_tat(&q, present, nanos, fraction);
        if let Ok(d) = decide(&q, stored, now, cost) {
            prop_assert!(d.remaining <= q.burst());
        }
        if let Ok(r) = refund(&q, stored, now, cost) {
            prop_assert!(r.remaining <= q.burst());
        }
    }

    /// Spec: any u64-ranged input must not panic (clock readings past i64 included).
    #[test]
    fn nothing_panics_on_any_u64_inputs(
        limit in past_i64(), window in edgy(), burst in edgy(),
        present: bool, nanos in past_i64(), fraction in fraction(),
        now in prop_oneof![Just(0u64), past_i64()], cost in (0u8..7, any::<u64>()), raw_cost in edgy_or_zero(),
    ) {
        let _ = try_quota(limit, window, burst);
        let q = fitted_quota(limit, window, burst);
        let stored = build_tat(&q, present, nanos, fraction);
        let cost = if cost.0 == 0 { raw_cost } else { amount(&q, cost.0, cost.1) };
        if let Ok(d) = decide(&q, stored, now, cost) {
            prop_assert!(d.remaining <= q.burst());
        }
        if let Ok(r) = refund(&q, stored, now, cost) {
            prop_assert!(r.remaining <= q.burst());
        }
        if let Some(tat) = stored {
            let _ = tat.expiry_millis();
        }
    }
}
