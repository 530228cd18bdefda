//! The bounds the module puts on its arguments. The module parses and checks against these
//! (`src/args.rs`, `src/gcra.rs`, `src/lease.rs`); the gateway checks its limits, leases and
//! policies against the same when it loads its configuration.

/// Every integer argument is a signed 64-bit integer on the wire: at most this.
pub const MAX_INTEGER: u64 = i64::MAX.unsigned_abs();

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// The largest tolerance (`burst × window / limit`, the time a full bucket takes to refill)
/// accepted: 100 years. Larger settings are refused up front, so every later sum of instants
/// stays far inside 64-bit nanoseconds.
pub const MAX_TOLERANCE_NANOS: u128 = 100 * 365 * 24 * 3600 * NANOS_PER_SECOND;

/// The longest lease (and renewal) accepted: one day. Holders of longer work renew.
pub const MAX_LEASE_MS: u64 = 24 * 60 * 60 * 1000;

/// The largest `max` of a lease set.
pub const MAX_LEASES: u64 = 10_000;

/// The longest lease id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The most keys (limits) one RL.CHECKALL may name.
pub const MAX_CHECKALL_KEYS: usize = 64;

/// Why a rate limit is not one the module takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaError {
    /// `limit`, `window` or `burst` (its name) is 0 or above [`MAX_INTEGER`].
    OutOfRange(&'static str),
    /// `burst × window / limit` is longer than [`MAX_TOLERANCE_NANOS`].
    ToleranceTooLarge,
}

impl std::fmt::Display for QuotaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaError::OutOfRange(name) => write!(f, "{name} must be an integer between 1 and {MAX_INTEGER}"),
            QuotaError::ToleranceTooLarge => {
                f.write_str("burst * window / limit (the time a full bucket takes to refill) must not exceed 100 years")
            }
        }
    }
}

/// The tolerance of `limit` per `window_secs` with a bucket of `burst`, in units of 1/limit
/// nanosecond (exact: `burst × window × 10^9`), when it is within [`MAX_TOLERANCE_NANOS`]
/// (`None` otherwise). The module's GCRA builds every quota through this (its math takes any
/// positive `u64`; `limit` must not be 0).
pub fn scaled_tolerance(limit: u64, window_secs: u64, burst: u64) -> Option<u128> {
    let tolerance = (u128::from(window_secs) * NANOS_PER_SECOND).checked_mul(u128::from(burst))?;
    // Compared in scaled units, so no rounding lets a fraction of a nanosecond through.
    (tolerance <= MAX_TOLERANCE_NANOS * u128::from(limit)).then_some(tolerance)
}

/// Whether the module takes `limit` per `window_secs` with a bucket of `burst` as arguments:
/// each an integer in `1..=MAX_INTEGER`, and the tolerance within 100 years.
pub fn check_quota(limit: u64, window_secs: u64, burst: u64) -> Result<(), QuotaError> {
    for (name, value) in [("limit", limit), ("window", window_secs), ("burst", burst)] {
        if value == 0 || value > MAX_INTEGER {
            return Err(QuotaError::OutOfRange(name));
        }
    }
    match scaled_tolerance(limit, window_secs, burst) {
        Some(_) => Ok(()),
        None => Err(QuotaError::ToleranceTooLarge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_fits_when_its_full_bucket_refills_within_100_years() {
        const YEAR: u64 = 365 * 24 * 3600;
        assert!(check_quota(1, 100 * YEAR, 1).is_ok());
        assert_eq!(check_quota(1, 100 * YEAR + 1, 1), Err(QuotaError::ToleranceTooLarge));
        assert_eq!(check_quota(1, 99_999_999_999, 1), Err(QuotaError::ToleranceTooLarge));
        assert!(check_quota(MAX_INTEGER, 1, MAX_INTEGER).is_ok());
        assert_eq!(check_quota(1, MAX_INTEGER, MAX_INTEGER), Err(QuotaError::ToleranceTooLarge));
        assert_eq!(check_quota(0, 1, 1), Err(QuotaError::OutOfRange("limit")));
        assert_eq!(check_quota(1, 1, MAX_INTEGER + 1), Err(QuotaError::OutOfRange("burst")));
        assert_eq!(scaled_tolerance(3, 1, 3), Some(3 * 1_000_000_000));
        assert_eq!(scaled_tolerance(u64::MAX, u64::MAX, u64::MAX), None, "the product overflows u128");
    }
}
