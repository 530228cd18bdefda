//! Tests for the GCRA math, one file per kind:
//!
//! - [`stories`]: table-driven, one row per call with an explicit clock reading, so each table
//!   reads top to bottom as what one client sees.
//! - [`properties`] (`proptest`): the invariants the limiter promises, checked by asking the
//!   same pure functions again (wait exactly `retry_after` and retry, wait `reset_after`
//!   and look, take `remaining` tokens, ...) rather than by re-deriving the formulas; the
//!   inputs come from [`generators`].
//! - [`bounds`]: where the numbers end: the 100-year tolerance, the first millisecond of an
//!   expiry, clock readings and states at the edges of `i64` and `u64`; nothing panics.
//!
//! Time is in nanoseconds throughout; `T0` is a realistic clock reading. This file holds the
//! constants and helpers they share.

use super::RetryAfter::{Millis, Never, Now};
use super::*;
use crate::state;

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
/// 100 years in seconds: a tolerance of exactly this is the largest accepted.
const CENTURY_SECS: u64 = 3_153_600_000;

mod bounds;
mod forced;
mod generators;
mod keep;
mod properties;
mod stories;

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
