//! Tests for the GCRA math.
//!
//! - Stories: table-driven, one row per call with an explicit clock reading, so each table
//!   reads top to bottom as what one client sees.
//! - Properties (`proptest`): the invariants the limiter promises, checked by asking the
//!   same pure functions again (wait exactly `retry_after` and retry, wait `reset_after`
//!   and look, take `remaining` tokens, ...) rather than by re-deriving the formulas.
//!
//! Time is in nanoseconds throughout; `T0` is a realistic clock reading.

use super::RetryAfter::{Millis, Never, Now};
use super::*;
use crate::state;

use proptest::collection::vec;
use proptest::prelude::*;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;
/// 2025-11-29T18:40:00Z: a realistic clock reading, a whole number of milliseconds.
const T0: u64 = 1_764_441_600 * SEC;
/// The largest clock step a generated call takes, so that instants stay far inside `i64`.
const MAX_STEP: u128 = 10_000_000_000_000_000;
/// The latest generated start of a story (year 2033); with `MAX_STEP`s and a 100-year
/// tolerance everything still fits `i64` nanoseconds.
const LATEST_START: u64 = 2_000_000_000_000_000_000;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn nz(value: u64) -> NonZeroU64 {
    match NonZeroU64::new(value) {
        Some(value) => value,
        None => panic!("test bug: a quota parameter of 0"),
    }
}

fn try_quota(limit: u64, window_secs: u64, burst: u64) -> Result<Quota, MathError> {
    Quota::new(nz(limit), nz(window_secs), nz(burst))
}

fn quota(limit: u64, window_secs: u64, burst: u64) -> Quota {
    match try_quota(limit, window_secs, burst) {
        Ok(quota) => quota,
        Err(err) => panic!("Quota::new({limit}, {window_secs}, {burst}) = {err:?}"),
    }
}

fn check(q: &Quota, stored: Option<Tat>, now: u64, cost: u64) -> Decision {
    match decide(q, stored, now, cost) {
        Ok(decision) => decision,
        Err(err) => panic!("decide({q:?}, {stored:?}, {now}, {cost}) = {err:?}"),
    }
}

/// A cost-0 call: what the key holds at `now`.
fn peek(q: &Quota, stored: Option<Tat>, now: u64) -> Decision {
    check(q, stored, now, 0)
}

fn give_back(q: &Quota, stored: Option<Tat>, now: u64, amount: u64) -> Refund {
    match refund(q, stored, now, amount) {
        Ok(refund) => refund,
        Err(err) => panic!("refund({q:?}, {stored:?}, {now}, {amount}) = {err:?}"),
    }
}

/// The emission interval is `interval_units / limit` nanoseconds.
fn interval_units(q: &Quota) -> u128 {
    u128::from(q.window_secs()) * NANOS_PER_SEC
}

/// `ceil(k × interval)` ns: the k-th point of the exact grid of a client pacing at the rate.
fn grid_ns(q: &Quota, k: u64) -> u64 {
    let ns = (u128::from(k) * interval_units(q)).div_ceil(u128::from(q.limit()));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Tokens the steady rate adds over `elapsed` ns, rounded down: `floor(limit × T / window)`.
fn rate_tokens(q: &Quota, elapsed: u64) -> u128 {
    u128::from(q.limit()) * u128::from(elapsed) / interval_units(q)
}

/// The tolerance (`burst × window / limit`) in whole nanoseconds, rounded up.
fn tolerance_ns(q: &Quota) -> u128 {
    (interval_units(q) * u128::from(q.burst())).div_ceil(u128::from(q.limit()))
}

/// `now + ms` milliseconds, if it is still a `u64`.
fn after_ms(now: u64, ms: u64) -> Option<u64> {
    ms.checked_mul(MS)?.checked_add(now)
}

/// A TAT written under `q` as an exact count of scaled units (`1/limit` ns).
fn scaled(q: &Quota, tat: Tat) -> u128 {
    let limit = u128::from(q.limit());
    if tat.numerator == 0 {
        u128::from(tat.nanos) * limit
    } else {
        assert_eq!(tat.denominator, q.limit(), "a TAT written under {q:?} has the limit as its denominator");
        u128::from(tat.nanos) * limit + u128::from(tat.numerator)
    }
}

// ---------------------------------------------------------------------------------------
// Stories
// ---------------------------------------------------------------------------------------

/// One call of a story: at `now` ask for `cost` tokens; expect
/// `(allowed, remaining, retry_after, reset_after_ms)`.
type Row = (u64, u64, bool, u64, RetryAfter, u64);

/// Plays `rows` in order against one key, storing whatever each call writes; returns the
/// final state.
fn play(q: &Quota, mut stored: Option<Tat>, rows: &[Row]) -> Option<Tat> {
    for (i, &(now, cost, allowed, remaining, retry_after, reset_after_ms)) in rows.iter().enumerate() {
        let d = check(q, stored, now, cost);
        assert_eq!(
            (d.allowed, d.remaining, d.retry_after, d.reset_after_ms),
            (allowed, remaining, retry_after, reset_after_ms),
            "row {i}: cost {cost} at T0{:+} ns (allowed, remaining, retry_after, reset_after_ms)",
            i128::from(now) - i128::from(T0),
        );
        assert_eq!(d.new_tat.is_some(), allowed && cost > 0, "row {i}: writes exactly when it takes tokens");
        if let Some(tat) = d.new_tat {
            if now % MS == 0 {
                // The key expires when the bucket is full: the same instant as reset_after.
                assert_eq!(tat.expiry_millis(), now / MS + reset_after_ms, "row {i}: expiry");
            }
            stored = Some(tat);
        }
    }
    stored
}

#[test]
#[rustfmt::skip]
fn redis_cell_story_one_token_per_second_with_a_burst_of_five() {
    // 5 per 5 s: one token a second, a bucket of 5.
    let q = quota(5, 5, 5);
    play(&q, None, &[
        // now              cost allowed remaining retry          reset_ms
        (T0,                0,   true,   5,        Now,           0),    // a fresh key is a full bucket
        (T0,                6,   false,  5,        Never,         0),    // more than the bucket holds
        (T0,                1,   true,   4,        Now,           1000),
        (T0,                1,   true,   3,        Now,           2000),
        (T0,                1,   true,   2,        Now,           3000),
        (T0,                1,   true,   1,        Now,           4000),
        (T0,                1,   true,   0,        Now,           5000),
        (T0,                1,   false,  0,        Millis(1000),  5000), // the sixth waits a second
        (T0 + 999 * MS,     1,   false,  0,        Millis(1),     4001),
        (T0 + 1000 * MS,    1,   true,   0,        Now,           5000), // waited exactly retry_after
        (T0 + 3500 * MS,    0,   true,   2,        Now,           2500), // 2.5 tokens refilled: 2 whole
        (T0 + 3500 * MS,    3,   false,  2,        Millis(500),   2500),
        (T0 + 3500 * MS,    2,   true,   0,        Now,           4500),
        (T0 + 3500 * MS,    6,   false,  0,        Never,         4500),
        (T0 + 60 * SEC,     0,   true,   5,        Now,           0),    // long idle: full, no more
        (T0 + 60 * SEC,     5,   true,   0,        Now,           5000),
        (T0 + 60 * SEC,     1,   false,  0,        Millis(1000),  5000),
    ]);
}

#[test]
#[rustfmt::skip]
fn three_per_second_admits_exactly_the_burst_at_one_instant() {
    // The interval is 333 333 333.3 ns: a rounded interval would admit 4 or 6 here.
    let q = quota(3, 1, 5);
    play(&q, None, &[
        // now              cost allowed remaining retry          reset_ms
        (T0,                1,   true,   4,        Now,           334),  // 333.3 ms, rounded up
        (T0,                1,   true,   3,        Now,           667),
        (T0,                1,   true,   2,        Now,           1000),
        (T0,                1,   true,   1,        Now,           1334),
        (T0,                1,   true,   0,        Now,           1667),
        (T0,                1,   false,  0,        Millis(334),   1667),
        (T0 + 333 * MS,     1,   false,  0,        Millis(1),     1334), // a third of a ms short
        (T0 + 334 * MS,     1,   true,   0,        Now,           1666), // TAT is exactly T0 + 2 s
        (T0 + 334 * MS,     1,   false,  0,        Millis(333),   1666),
        (T0 + 2 * SEC,      0,   true,   5,        Now,           0),
    ]);
}

#[test]
#[rustfmt::skip]
fn an_interval_just_over_a_nanosecond_is_not_rounded_to_one() {
    // 999 999 999 per second: one token every 1.000000001 ns.
    let q = quota(999_999_999, 1, 5);
    play(&q, None, &[
        // now      cost allowed remaining retry       reset_ms
        (T0,        5,   true,   0,        Now,        1),
        (T0,        1,   false,  0,        Millis(1),  1),
        (T0 + 1,    1,   false,  0,        Millis(1),  1), // one interval has not quite passed
        (T0 + 2,    1,   true,   0,        Now,        1),
        (T0 + 2,    1,   false,  0,        Millis(1),  1), // the next needs T0 + 2.000000002
        (T0 + 3,    1,   true,   0,        Now,        1),
    ]);
}

#[test]
fn fresh_buckets_admit_exactly_the_burst_one_token_at_a_time() {
    for (limit, window, burst) in [
        (1, 1, 1),
        (3, 1, 1),
        (3, 1, 5),
        (7, 60, 7),
        (10, 1, 100),
        (999_999_999, 1, 5),
        (1_000_000_000, 1, 3),
        (1_000_000_001, 1, 4),
        (3_000_000_000, 1, 7),
        (u64::MAX, 1, 1),
        (u64::MAX, 1, 9),
        (1, 3_153_600_000, 1),
        (u64::MAX, u64::MAX, 3),
    ] {
        let q = quota(limit, window, burst);
        let mut stored = None;
        for taken in 1..=burst {
            let d = check(&q, stored, T0, 1);
            assert!(d.allowed, "{q:?}: token {taken} of {burst} at one instant must be admitted");
            assert_eq!(d.remaining, burst - taken, "{q:?}: remaining after {taken}");
            stored = d.new_tat;
        }
        let d = check(&q, stored, T0, 1);
        assert!(!d.allowed, "{q:?}: token {} at one instant must be refused", burst + 1);
        assert!(matches!(d.retry_after, Millis(ms) if ms >= 1), "{q:?}: {:?}", d.retry_after);
        // The whole burst in one call is the same.
        let all = check(&q, None, T0, burst);
        assert_eq!((all.allowed, all.remaining, all.new_tat), (true, 0, stored), "{q:?}: cost = burst");
    }
}

#[test]
fn fractional_intervals_are_stored_exactly() {
    let q = quota(3, 1, 5);
    let mut stored = None;
    for (i, want) in [
        Tat { nanos: T0 + 333_333_333, numerator: 1, denominator: 3 },
        Tat { nanos: T0 + 666_666_666, numerator: 2, denominator: 3 },
        Tat::from_nanos(T0 + SEC),
        Tat { nanos: T0 + 1_333_333_333, numerator: 1, denominator: 3 },
        Tat { nanos: T0 + 1_666_666_666, numerator: 2, denominator: 3 },
    ]
    .into_iter()
    .enumerate()
    {
        let d = check(&q, stored, T0, 1);
        assert_eq!(d.new_tat, Some(want), "token {}", i + 1);
        stored = d.new_tat;
    }
}

#[test]
fn a_tat_written_under_another_limit_is_rounded_up_never_in_the_clients_favour() {
    // T0 + 1/3 ns read at 2 per second (half-nanosecond units) is T0 + 1/2 ns.
    let stored = Tat { nanos: T0, numerator: 1, denominator: 3 };
    let d = check(&quota(2, 1, 5), Some(stored), T0, 1);
    assert_eq!(d.new_tat, Some(Tat { nanos: T0 + 500_000_000, numerator: 1, denominator: 2 }));
    // T0 + 1/2 ns read at 4 per second (quarter-nanosecond units) is exact.
    let stored = Tat { nanos: T0, numerator: 1, denominator: 2 };
    let d = check(&quota(4, 1, 5), Some(stored), T0, 1);
    assert_eq!(d.new_tat, Some(Tat { nanos: T0 + 250_000_000, numerator: 2, denominator: 4 }));
}

#[test]
fn a_cost_above_the_burst_is_refused_forever_and_writes_nothing() {
    let q = quota(10, 1, 4);
    for cost in [5, 6, 1_000, u64::MAX] {
        let d = check(&q, None, T0, cost);
        assert_eq!(
            d,
            Decision { allowed: false, remaining: 4, retry_after: Never, reset_after_ms: 0, new_tat: None },
            "cost {cost}"
        );
    }
    // Also from a partly drained bucket, and long after.
    let stored = check(&q, None, T0, 3).new_tat;
    let d = check(&q, stored, T0, 5);
    assert_eq!((d.allowed, d.remaining, d.retry_after, d.reset_after_ms, d.new_tat), (false, 1, Never, 300, None));
    let d = check(&q, stored, T0 + 3600 * SEC, 5);
    assert_eq!((d.allowed, d.remaining, d.retry_after, d.reset_after_ms, d.new_tat), (false, 4, Never, 0, None));
}

#[test]
#[rustfmt::skip]
fn a_clock_stepping_back_keeps_the_debt_and_grants_nothing_extra() {
    let q = quota(5, 5, 5);
    // Partly drained, then the clock goes half a second back.
    play(&q, None, &[
        // now              cost allowed remaining retry          reset_ms
        (T0,                2,   true,   3,        Now,           2000),
        (T0 - 500 * MS,     0,   true,   2,        Now,           2500), // 2.5 s of debt: 2 tokens, not 3
        (T0 - 500 * MS,     3,   false,  2,        Millis(500),   2500),
        (T0 - 500 * MS,     2,   true,   0,        Now,           4500),
        (T0,                0,   true,   1,        Now,           4000),
    ]);
    // Drained at T0 + 10 s, then the clock reads 10 s earlier, then the epoch.
    play(&q, None, &[
        // now              cost allowed remaining retry          reset_ms
        (T0 + 10 * SEC,     5,   true,   0,        Now,           5000),
        (T0,                1,   false,  0,        Millis(11_000), 15_000),
        (T0,                6,   false,  0,        Never,         15_000),
        (T0 + 11 * SEC,     1,   true,   0,        Now,           5000),
        (0,                 1,   false,  0,        Millis(T0 / MS + 12_000), T0 / MS + 16_000),
    ]);
}

/// Spec: cost 0 only reports: `allowed` true and nothing written, whatever the state.
#[test]
fn a_zero_cost_query_is_allowed_even_after_the_clock_stepped_back() {
    let q = quota(5, 5, 5);
    let drained = check(&q, None, T0, 5).new_tat; // TAT = T0 + 5 s, the bucket is empty
    let d = check(&q, drained, T0 - MS, 0);
    assert_eq!(
        d,
        Decision { allowed: true, remaining: 0, retry_after: Now, reset_after_ms: 5001, new_tat: None },
        "a cost-0 query one millisecond after a clock step back"
    );
}

#[test]
#[rustfmt::skip]
fn pacing_at_three_per_second_on_the_rounded_up_grid_is_never_limited() {
    // Requests at ceil(k × 333 333 333.3 ns), burst 2.
    let q = quota(3, 1, 2);
    play(&q, None, &[
        // now                      cost allowed remaining retry  reset_ms
        (T0,                        1,   true,   1,        Now,   334),
        (T0 + 333_333_334,          1,   true,   1,        Now,   334), // 2/3 ns late: TAT restarts
        (T0 + 666_666_667,          1,   true,   0,        Now,   334), // 1/3 ns early: 0.999999999 left
        (T0 + SEC,                  1,   true,   0,        Now,   334),
        (T0 + SEC + 333_333_334,    1,   true,   1,        Now,   334), // exactly on time again
        (T0 + SEC + 666_666_667,    1,   true,   0,        Now,   334),
        (T0 + 2 * SEC,              1,   true,   0,        Now,   334),
    ]);
}

/// With burst 1 the exact grid `ceil(k × interval)` cannot be honoured: two grid points can
/// be less than one interval apart, and admitting both would break the interval bound.
#[test]
fn with_burst_one_a_grid_point_under_one_interval_after_the_last_admission_is_refused() {
    let q = quota(3, 1, 1);
    let first = check(&q, None, T0, 1);
    assert!(first.allowed);
    let second = check(&q, first.new_tat, T0 + grid_ns(&q, 1), 1); // + 333 333 334
    assert!(second.allowed);
    // ceil(2I) - ceil(I) = 333 333 333 ns < I; at most 1 + floor(3 × 333 333 333 / 10^9) = 1
    // token may be admitted over that span, and one already was.
    let gap = grid_ns(&q, 2) - grid_ns(&q, 1);
    assert_eq!((gap, 1 + rate_tokens(&q, gap)), (333_333_333, 1));
    let third = check(&q, second.new_tat, T0 + grid_ns(&q, 2), 1);
    assert_eq!((third.allowed, third.retry_after), (false, Millis(1)));
    // Spaced at least one rounded-up interval apart, it is admitted.
    let third = check(&q, second.new_tat, T0 + 2 * grid_ns(&q, 1), 1);
    assert!(third.allowed);
}

#[test]
#[rustfmt::skip]
fn refunds_give_tokens_back_up_to_the_burst() {
    let q = quota(5, 5, 5);
    let drained = check(&q, None, T0, 3).new_tat; // 2 left, full at T0 + 3 s
    assert_eq!(drained, Some(Tat::from_nanos(T0 + 3 * SEC)));
    let at_2s = RefundWrite::Store(Tat::from_nanos(T0 + 2 * SEC));
    let rows = [
        // stored  now             amount     remaining reset_ms write
        (None,     T0,             1,         5,        0,       RefundWrite::Nothing), // no key: already full
        (drained,  T0,             0,         2,        3000,    RefundWrite::Nothing), // amount 0 only reports
        (drained,  T0,             1,         3,        2000,    at_2s),
        (drained,  T0 + 500 * MS,  1,         3,        1500,    at_2s),
        (drained,  T0,             3,         5,        0,       RefundWrite::Delete),  // exactly full again
        (drained,  T0,             4,         5,        0,       RefundWrite::Delete),  // never above burst
        (drained,  T0,             u64::MAX,  5,        0,       RefundWrite::Delete),
        (drained,  T0 + 10 * SEC,  1,         5,        0,       RefundWrite::Delete),  // refilled meanwhile
        (drained,  T0 - 10 * SEC,  1,         0,        12_000,  at_2s),                // clock 10 s back
    ];
    for (i, (stored, now, amount, remaining, reset_after_ms, write)) in rows.into_iter().enumerate() {
        assert_eq!(give_back(&q, stored, now, amount), Refund { remaining, reset_after_ms, write }, "row {i}");
    }
}

#[test]
fn refunds_under_a_fractional_interval_are_exact() {
    let q = quota(3, 1, 5);
    let drained = check(&q, None, T0, 5).new_tat;
    assert_eq!(drained, Some(Tat { nanos: T0 + 1_666_666_666, numerator: 2, denominator: 3 }));
    let one = Tat { nanos: T0 + 1_333_333_333, numerator: 1, denominator: 3 };
    assert_eq!(
        give_back(&q, drained, T0, 1),
        Refund { remaining: 1, reset_after_ms: 1334, write: RefundWrite::Store(one) }
    );
    let four = Tat { nanos: T0 + 333_333_333, numerator: 1, denominator: 3 };
    assert_eq!(
        give_back(&q, drained, T0, 4),
        Refund { remaining: 4, reset_after_ms: 334, write: RefundWrite::Store(four) }
    );
    assert_eq!(give_back(&q, drained, T0, 5), Refund { remaining: 5, reset_after_ms: 0, write: RefundWrite::Delete });
    // The refunded token can be taken again, and no more.
    let d = check(&q, Some(one), T0, 1);
    assert_eq!((d.allowed, d.remaining, d.new_tat), (true, 0, drained));
    assert!(!check(&q, d.new_tat, T0, 1).allowed);
}

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

/// 100 years in seconds: a tolerance of exactly this is the largest accepted.
const CENTURY_SECS: u64 = 3_153_600_000;

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

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

fn config(cases: u32) -> ProptestConfig {
    // No regression files: failures are reported with their minimal input instead.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any positive `u64`, often an edge.
fn edgy() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop_oneof![
            Just(1u64),
            Just(2u64),
            Just(3u64),
            Just(999_999_999u64),
            Just(1_000_000_000u64),
            Just(1_000_000_001u64),
            Just(CENTURY_SECS),
            Just(i64::MAX as u64 - 1),
            Just(i64::MAX as u64),
            Just(i64::MAX as u64 + 1),
            Just(u64::MAX - 1),
            Just(u64::MAX),
        ],
        1..=u64::MAX,
    ]
}

/// `(limit, window, burst)` with the largest burst whose tolerance fits 100 years, or one more.
fn at_the_tolerance_boundary() -> impl Strategy<Value = (u64, u64, u64)> {
    (edgy(), edgy(), 0u8..=1).prop_map(|(limit, window, extra)| {
        let largest = MAX_TOLERANCE_NANOS * u128::from(limit) / (u128::from(window) * NANOS_PER_SEC);
        (limit, window, clamp_u64(largest + u128::from(extra)).max(1))
    })
}

fn edgy_or_zero() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 6 => edgy()]
}

/// Any positive `u64`, often an edge, mostly past `i64::MAX` (as a clock: after the year
/// 2262), often within 20 minutes' worth of nanoseconds of `u64::MAX`.
fn past_i64() -> impl Strategy<Value = u64> {
    prop_oneof![1 => edgy(), 1 => i64::MAX as u64..=u64::MAX, 2 => u64::MAX - (1 << 40)..=u64::MAX]
}

/// Any clock reading within `i64`, often an edge.
fn i64_instant() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop_oneof![Just(0u64), Just(1u64), Just(T0), Just(i64::MAX as u64 - 1), Just(i64::MAX as u64)],
        0..=i64::MAX as u64,
    ]
}

/// A stored state of the shape `state::decode` yields, or a plain TAT, or no key; with a
/// denominator that is often the quota's own limit.
fn build_tat(q: &Quota, present: bool, nanos: u64, fraction: Option<(bool, u64, u64)>) -> Option<Tat> {
    let (own_limit, den_seed, num_seed) = match (present, fraction) {
        (false, _) => return None,
        (true, None) => return Some(Tat::from_nanos(nanos)),
        (true, Some(fraction)) => fraction,
    };
    let denominator = if own_limit && q.limit() > 1 { q.limit() } else { 2 + den_seed % (i64::MAX as u64 - 1) };
    Some(Tat { nanos, numerator: 1 + num_seed % (denominator - 1), denominator })
}

fn fraction() -> impl Strategy<Value = Option<(bool, u64, u64)>> {
    proptest::option::of((any::<bool>(), any::<u64>(), any::<u64>()))
}

fn clamp_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// The quota nearest `(limit, window, burst)` whose tolerance fits 100 years: window and
/// burst wrap into range. Also checks that every such quota is accepted.
fn fitted_quota(limit: u64, window: u64, burst: u64) -> Quota {
    let limit = limit.max(1);
    // burst × window × 10^9 ≤ MAX_TOLERANCE_NANOS × limit, exactly.
    let max_units = MAX_TOLERANCE_NANOS * u128::from(limit);
    let max_window = clamp_u64(max_units / NANOS_PER_SEC);
    let window = if (1..=max_window).contains(&window) { window } else { 1 + window % max_window };
    let max_burst = clamp_u64(max_units / (u128::from(window) * NANOS_PER_SEC));
    let burst = if (1..=max_burst).contains(&burst) { burst } else { 1 + burst % max_burst };
    quota(limit, window, burst)
}

/// Everyday limits, intervals around a nanosecond, and anything at all that fits.
fn any_quota() -> impl Strategy<Value = Quota> {
    prop_oneof![
        4 => (1u64..=100, 1u64..=3_600, 1u64..=10),
        3 => (1u64..=3_000_000_000, 1u64..=2, 1u64..=6),
        2 => (edgy(), edgy(), edgy()),
    ]
    .prop_map(|(limit, window, burst)| fitted_quota(limit, window, burst))
}

/// Quotas whose interval is short enough that dozens of them fit comfortably in `i64`.
fn modest_quota() -> impl Strategy<Value = Quota> {
    prop_oneof![
        4 => (1u64..=100, 1u64..=3_600, 1u64..=10),
        3 => (1u64..=3_000_000_000, 1u64..=2, 1u64..=6),
        1 => (edgy(), Just(1u64), 1u64..=8),
    ]
    .prop_map(|(limit, window, burst)| fitted_quota(limit, window, burst))
}

/// Quotas whose spare burst covers the 1 ns rounding of the grid: `(burst - 1) × interval
/// ≥ 1 ns`, i.e. `limit ≤ (burst - 1) × window × 10^9`, with a burst of 2 to 8.
fn paced_quota() -> impl Strategy<Value = Quota> {
    (1u64..=3_600, 0u8..3, any::<u64>(), 2u64..=8).prop_map(|(window, kind, seed, burst)| {
        let densest = (burst - 1) * window * SEC;
        let limit = match kind {
            0 => 1 + seed % 1_000,
            1 => densest - seed % 3,
            _ => 1 + seed % densest,
        };
        quota(limit, window, burst)
    })
}

fn start() -> impl Strategy<Value = u64> {
    prop_oneof![Just(T0), Just(0u64), 0..=LATEST_START]
}

/// How far one generated call moves the clock: none, a nanosecond or two (landing on exact
/// boundaries), up to two intervals, a whole number of rounded-up intervals, or up to a
/// full refill.
fn clock_step(q: &Quota, kind: u8, seed: u64) -> u64 {
    let units = interval_units(q);
    let limit = u128::from(q.limit());
    let ns = match kind % 5 {
        0 => 0,
        1 => u128::from(seed % 3),
        2 => units * u128::from(seed % 2_001) / (1_000 * limit),
        3 => (units * u128::from(seed % 4)).div_ceil(limit),
        _ => tolerance_ns(q) * u128::from(seed % 1_001) / 1_000,
    };
    clamp_u64(ns.min(MAX_STEP))
}

/// A cost (or refund amount): 0, 1, the burst, one over, anything up to two over, or small.
fn amount(q: &Quota, kind: u8, seed: u64) -> u64 {
    let burst = q.burst();
    match kind % 7 {
        0 => 0,
        1 => 1,
        2 => burst,
        3 => burst.saturating_add(1),
        4 => seed % burst.saturating_add(2),
        5 => u64::MAX,
        _ => 1 + seed % burst.min(3),
    }
}

/// One generated call: clock step (kind, seed), whether it steps backwards, cost (kind, seed).
type Gen = (u8, u64, bool, u8, u64);

fn gens() -> impl Strategy<Value = Vec<Gen>> {
    vec((0u8..5, any::<u64>(), any::<bool>(), 0u8..7, any::<u64>()), 1..24)
}

/// One played call: the state it saw, when, what it asked, and the reply.
#[derive(Clone, Copy, Debug)]
struct Call {
    stored: Option<Tat>,
    now: u64,
    cost: u64,
    reply: Decision,
}

impl Call {
    /// The state after the call.
    fn after(&self) -> Option<Tat> {
        self.reply.new_tat.or(self.stored)
    }
}

/// Plays generated calls against one fresh key from `t0`; the clock only steps backwards
/// when `backwards` allows it.
fn play_gens(q: &Quota, t0: u64, gens: &[Gen], backwards: bool) -> Vec<Call> {
    let mut now = t0;
    let mut stored = None;
    let mut calls = Vec::with_capacity(gens.len());
    for &(step_kind, step_seed, back, cost_kind, cost_seed) in gens {
        let step = clock_step(q, step_kind, step_seed);
        now = if back && backwards { now.saturating_sub(step) } else { now + step };
        let cost = amount(q, cost_kind, cost_seed);
        let reply = check(q, stored, now, cost);
        calls.push(Call { stored, now, cost, reply });
        stored = reply.new_tat.or(stored);
    }
    calls
}

/// The state and clock after playing `gens` forwards, then stepping once more.
fn state_after(q: &Quota, t0: u64, gens: &[Gen], step: (u8, u64)) -> (Option<Tat>, u64) {
    let calls = play_gens(q, t0, gens, false);
    let (stored, last) = calls.last().map_or((None, t0), |c| (c.after(), c.now));
    (stored, last + clock_step(q, step.0, step.1))
}

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

fn assert_retry_after_is_exact(q: &Quota, c: &Call) {
    let Millis(ms) = c.reply.retry_after else { return };
    let Some(on_time) = after_ms(c.now, ms) else { return };
    assert!(check(q, c.stored, on_time, c.cost).allowed, "{c:?}: waiting exactly {ms} ms must admit");
    let early = c.now + (ms - 1) * MS;
    assert!(!check(q, c.stored, early, c.cost).allowed, "{c:?}: {ms} ms is rounded up, so one less must not admit");
}

fn assert_reset_after_is_exact(q: &Quota, c: &Call) {
    let ms = c.reply.reset_after_ms;
    let Some(full_at) = after_ms(c.now, ms) else { return };
    let full = peek(q, c.after(), full_at);
    assert_eq!((full.remaining, full.reset_after_ms), (q.burst(), 0), "{c:?}: full after {ms} ms");
    if ms > 0 {
        let before = peek(q, c.after(), c.now + (ms - 1) * MS);
        assert!(before.remaining < q.burst(), "{c:?}: {ms} ms is rounded up, so one less is not full");
    }
}

fn assert_remaining_is_exact(q: &Quota, c: &Call) {
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
