//! The rate-limit decision: GCRA (the generic cell rate algorithm), pure and exact.
//!
//! Vocabulary, after the ATM literature and governor's `gcra.rs`:
//! - **emission interval**: the time one token takes to refill, `window / limit`.
//! - **tolerance**: the bucket capacity expressed as time, `burst × emission interval`.
//! - **TAT** (theoretical arrival time): the moment the bucket will be full again. A key
//!   whose TAT is at or before `now` has a full bucket; the bucket holds
//!   `(tolerance - (TAT - now)) / emission interval` tokens.
//! - A request of `cost` tokens is admitted when `max(TAT, now) + cost × interval - now <=
//!   tolerance`; admitting it moves the TAT to `max(TAT, now) + cost × interval`.
//!
//! Exactness: the emission interval `window × 10^9 / limit` ns is rarely a whole number
//! (3 per second is 333 333 333.3 ns). Rounding it, as most limiters do, either over-admits
//! or makes a fresh bucket refuse its last burst token. So all times here are kept in
//! *scaled* units of `1/limit` ns, where the interval is exactly `window × 10^9` units and a
//! clock reading `now` ns is exactly `now × limit` units. Products are `u128` and checked; no
//! floating point anywhere. [`Tat`] is the exact instant in a form the state encoding can
//! store without knowing the limit.
//!
//! Nothing here reads a clock or touches Redis: `now` is an argument.

use std::num::NonZeroU64;

const NANOS_PER_SECOND: u128 = 1_000_000_000;
const NANOS_PER_MILLI: u128 = 1_000_000;

/// The largest tolerance (`burst × window / limit`) accepted: 100 years. Larger settings are
/// rejected up front, so every later sum of instants stays far inside `u64` nanoseconds. (The
/// bound lives in `rl_protocol::bounds`, where the gateway checks its configuration against it.)
pub use rl_protocol::bounds::MAX_TOLERANCE_NANOS;

/// A rate limit: `limit` tokens per `window_secs` seconds, bucket capacity `burst`.
/// Only constructible with positive values whose tolerance fits [`MAX_TOLERANCE_NANOS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    limit: NonZeroU64,
    window_secs: NonZeroU64,
    burst: NonZeroU64,
    /// The emission interval in scaled units (`window × 10^9`).
    interval: u128,
    /// The tolerance in scaled units (`burst × interval`).
    tolerance: u128,
}

/// Why a [`Quota`] or a decision could not be made; both are client errors, never panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathError {
    /// `burst × window / limit` is longer than [`MAX_TOLERANCE_NANOS`].
    ToleranceTooLarge,
    /// The stored state lies so far in the future that the new state would not fit.
    StateOutOfRange,
}

impl Quota {
    pub fn new(limit: NonZeroU64, window_secs: NonZeroU64, burst: NonZeroU64) -> Result<Self, MathError> {
        let interval = u128::from(window_secs.get()) * NANOS_PER_SECOND;
        let tolerance = rl_protocol::bounds::scaled_tolerance(limit.get(), window_secs.get(), burst.get())
            .ok_or(MathError::ToleranceTooLarge)?;
        Ok(Quota { limit, window_secs, burst, interval, tolerance })
    }

    pub fn limit(&self) -> u64 {
        self.limit.get()
    }

    pub fn window_secs(&self) -> u64 {
        self.window_secs.get()
    }

    pub fn burst(&self) -> u64 {
        self.burst.get()
    }

    fn scale(&self) -> u128 {
        u128::from(self.limit.get())
    }

    /// A clock reading in scaled units.
    fn scaled_now(&self, now_nanos: u64) -> u128 {
        u128::from(now_nanos) * self.scale()
    }

    /// A stored TAT in scaled units. A fraction written under another limit is rounded up:
    /// off by under a nanosecond, and never in the client's favour.
    fn scaled_tat(&self, tat: Tat) -> u128 {
        let scale = self.scale();
        let fraction = if tat.denominator == self.limit.get() {
            u128::from(tat.numerator)
        } else {
            (u128::from(tat.numerator) * scale).div_ceil(u128::from(tat.denominator.max(1)))
        };
        u128::from(tat.nanos) * scale + fraction
    }

    /// The storable [`Tat`] `ahead` scaled units after `now_nanos`. Working from the offset keeps
    /// the division small: `now` itself is a whole number of nanoseconds.
    fn tat_at(&self, now_nanos: u64, ahead: u128) -> Result<Tat, MathError> {
        let scale = self.scale();
        let whole = u64::try_from(div(ahead, scale)).map_err(|_| MathError::StateOutOfRange)?;
        // Stored instants stay within i64 so that every reply and expiry fits Redis integers.
        let nanos = now_nanos.checked_add(whole).filter(|&n| n <= i64::MAX as u64).ok_or(MathError::StateOutOfRange)?;
        // `ahead % scale < limit`, which is a u64.
        let numerator = u64::try_from(ahead - div(ahead, scale) * scale).map_err(|_| MathError::StateOutOfRange)?;
        Ok(if numerator == 0 {
            Tat::from_nanos(nanos)
        } else {
            Tat { nanos, numerator, denominator: self.limit.get() }
        })
    }

    /// A scaled duration in milliseconds, rounded up (so waiting that long is enough).
    fn millis_ceil(&self, scaled: u128) -> u64 {
        let unit = self.scale() * NANOS_PER_MILLI;
        let whole = div(scaled, unit);
        let millis = whole + u128::from(whole * unit != scaled);
        u64::try_from(millis).unwrap_or(u64::MAX)
    }

    /// Whole tokens in the bucket when the TAT is `tat` at `now` (both scaled).
    fn tokens_left(&self, tat: u128, now: u128) -> u64 {
        let used = tat.saturating_sub(now);
        let left = div(self.tolerance.saturating_sub(used), self.interval);
        u64::try_from(left).unwrap_or(u64::MAX).min(self.burst.get())
    }
}

/// `a / b`, through the hardware's 64-bit division when both fit (the usual case: offsets from
/// `now` and quota constants are small), else the slower 128-bit routine.
#[inline]
fn div(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) if b != 0 => u128::from(a / b),
        _ => a.checked_div(b).unwrap_or(u128::MAX),
    }
}

/// A theoretical arrival time as stored: `nanos + numerator / denominator` nanoseconds since
/// the Unix epoch, with `numerator < denominator` (the denominator is the limit that wrote it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tat {
    pub nanos: u64,
    pub numerator: u64,
    pub denominator: u64,
}

impl Tat {
    pub fn from_nanos(nanos: u64) -> Self {
        Tat { nanos, numerator: 0, denominator: 1 }
    }

    /// The absolute expiry for a key holding this TAT: the first millisecond at or after it,
    /// when the bucket is full and the key carries no information any more.
    pub fn expiry_millis(&self) -> u64 {
        let extra = u64::from(self.numerator > 0);
        let nanos = u128::from(self.nanos) + u128::from(extra);
        u64::try_from(nanos.div_ceil(NANOS_PER_MILLI)).unwrap_or(u64::MAX)
    }
}

/// When a refused request could be admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// Admitted: no wait.
    Now,
    /// Wait at least this many milliseconds (rounded up).
    Millis(u64),
    /// The cost exceeds the burst: this request can never be admitted.
    Never,
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left after this call, in `0..=burst`.
    pub remaining: u64,
    pub retry_after: RetryAfter,
    /// Milliseconds until the bucket is full again (0 if it is), rounded up.
    pub reset_after_ms: u64,
    /// The state to store, when the request took tokens; `None` means write nothing.
    pub new_tat: Option<Tat>,
}

/// Decides a request of `cost` tokens at `now_nanos`, given the stored TAT (`None`: no key,
/// a full bucket). `cost == 0` only reports. A clock that went backwards never adds tokens:
/// the TAT is never moved earlier than stored.
pub fn decide(quota: &Quota, stored: Option<Tat>, now_nanos: u64, cost: u64) -> Result<Decision, MathError> {
    decide_keeping(quota, stored, now_nanos, cost, 0)
}

/// Like [`decide`], but admits only when at least `keep` tokens remain after the request
/// (RL.CHECK ... KEEP): it is admitted exactly when a request of `cost + keep` would be,
/// waits as long as that one would, and takes only `cost`. `cost + keep > burst` can never
/// be admitted. `keep == 0` is [`decide`]; with `cost == 0` it reports whether `keep`
/// tokens are there, writing nothing.
pub fn decide_keeping(
    quota: &Quota,
    stored: Option<Tat>,
    now_nanos: u64,
    cost: u64,
    keep: u64,
) -> Result<Decision, MathError> {
    let now = quota.scaled_now(now_nanos);
    let tat = stored.map_or(now, |t| quota.scaled_tat(t)).max(now);
    // Only answers that leave the state as it is report its reset time; computed when needed.
    let reset_after_ms = || quota.millis_ceil(tat - now);

    let needed = cost.checked_add(keep).filter(|&n| n <= quota.burst());
    let Some(needed) = needed else {
        return Ok(Decision {
            allowed: false,
            remaining: quota.tokens_left(tat, now),
            retry_after: RetryAfter::Never,
            reset_after_ms: reset_after_ms(),
            new_tat: None,
        });
    };
    if needed == 0 {
        // A report: always answered, even when a clock step back left the TAT beyond the
        // tolerance.
        return Ok(Decision {
            allowed: true,
            remaining: quota.tokens_left(tat, now),
            retry_after: RetryAfter::Now,
            reset_after_ms: reset_after_ms(),
            new_tat: None,
        });
    }
    // needed <= burst, so the increment is at most the tolerance; only a TAT near the end of
    // the u64 clock could overflow, and that is refused like any out-of-range state.
    let needed_tat = tat.checked_add(quota.interval * u128::from(needed)).ok_or(MathError::StateOutOfRange)?;
    let earliest = needed_tat.saturating_sub(quota.tolerance);
    if earliest > now {
        return Ok(Decision {
            allowed: false,
            remaining: quota.tokens_left(tat, now),
            retry_after: RetryAfter::Millis(quota.millis_ceil(earliest - now)),
            reset_after_ms: reset_after_ms(),
            new_tat: None,
        });
    }
    // cost <= needed, so this fits too.
    let new_tat = tat + quota.interval * u128::from(cost);
    Ok(Decision {
        allowed: true,
        remaining: quota.tokens_left(new_tat, now),
        retry_after: RetryAfter::Now,
        reset_after_ms: quota.millis_ceil(new_tat - now),
        new_tat: if cost == 0 { None } else { Some(quota.tat_at(now_nanos, new_tat - now)?) },
    })
}

/// Like [`decide`], but always admits (RL.CHECK ... FORCE): charging after the fact, e.g. the
/// tokens an LLM answer used beyond what was reserved. The TAT moves to
/// `max(TAT, now) + cost × interval` even when that is past `now + tolerance`: the part
/// beyond is a *debt*, and later requests wait until it is repaid and their own tokens have
/// refilled, exactly as GCRA says for that TAT.
///
/// The debt is bounded: the new TAT is at most `now + 2 × tolerance` (at most one full burst
/// owed; any charge beyond that is forgiven), so `cost > burst` is accepted and charges up to
/// the cap. A TAT already beyond the cap (only after the clock stepped back, or from a
/// hand-written value) is never moved earlier: such a call writes nothing. `cost == 0`
/// reports, like [`decide`]. With the 100-year tolerance bound, `2 × tolerance` is at most
/// 200 years, and the stored instant is still checked to fit `i64` nanoseconds.
pub fn decide_forced(quota: &Quota, stored: Option<Tat>, now_nanos: u64, cost: u64) -> Result<Decision, MathError> {
    if cost == 0 {
        return decide(quota, stored, now_nanos, 0);
    }
    let now = quota.scaled_now(now_nanos);
    let tat = stored.map_or(now, |t| quota.scaled_tat(t)).max(now);
    // `2 × tolerance` is at most 200 years in scaled units (< 2^127), and `now` far below that.
    let cap = now.saturating_add(quota.tolerance.saturating_mul(2));
    let charged = tat.saturating_add(quota.interval.saturating_mul(u128::from(cost)));
    let new_tat = charged.min(cap).max(tat);
    let write = if new_tat > tat { Some(quota.tat_at(now_nanos, new_tat - now)?) } else { None };
    Ok(Decision {
        allowed: true,
        remaining: quota.tokens_left(new_tat, now),
        retry_after: RetryAfter::Now,
        reset_after_ms: quota.millis_ceil(new_tat - now),
        new_tat: write,
    })
}

/// What a refund does to the stored state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundWrite {
    /// Nothing changes (no key, or an amount of 0).
    Nothing,
    /// Store this TAT.
    Store(Tat),
    /// The bucket is full again: delete the key.
    Delete,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refund {
    pub remaining: u64,
    pub reset_after_ms: u64,
    pub write: RefundWrite,
}

/// Gives `amount` tokens back, never filling the bucket above `burst`.
pub fn refund(quota: &Quota, stored: Option<Tat>, now_nanos: u64, amount: u64) -> Result<Refund, MathError> {
    let now = quota.scaled_now(now_nanos);
    let Some(stored) = stored else {
        return Ok(Refund { remaining: quota.burst(), reset_after_ms: 0, write: RefundWrite::Nothing });
    };
    let tat = quota.scaled_tat(stored).max(now);
    if amount == 0 {
        return Ok(Refund {
            remaining: quota.tokens_left(tat, now),
            reset_after_ms: quota.millis_ceil(tat - now),
            write: RefundWrite::Nothing,
        });
    }
    let give_back = quota.interval.saturating_mul(u128::from(amount));
    let new_tat = tat.saturating_sub(give_back).max(now);
    let write =
        if new_tat <= now { RefundWrite::Delete } else { RefundWrite::Store(quota.tat_at(now_nanos, new_tat - now)?) };
    Ok(Refund { remaining: quota.tokens_left(new_tat, now), reset_after_ms: quota.millis_ceil(new_tat - now), write })
}

#[cfg(test)]
mod tests;
