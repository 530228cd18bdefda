//! Stories: one table per client, one row per call with an explicit clock reading, played
//! against one key; plus the refund tables and the exact fractions of a nanosecond.

use super::*;

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
