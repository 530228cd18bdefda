//! The complete answer of a command, as data. A command body returns one of these; only then
//! does the FFI edge write it to the client (`ffi::run_command`), so a reply is never left
//! half-written. Each variant is named after the command it answers; the wire format is
//! described on each and written by `ffi`.

use crate::gcra::{Decision, RetryAfter};

/// A reply of one of the module's commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// RL.CHECK and RL.PEEK: `[allowed, remaining, retry_after_ms, reset_after_ms, burst]`.
    Check(CheckReply),
    /// RL.CHECKALL: `[allowed, retry_after_ms, [row per key]]`, each row a [`CheckReply`].
    CheckAll { allowed: bool, retry_after_ms: i64, rows: Vec<CheckReply> },
    /// RL.REFUND: `[remaining, reset_after_ms]`.
    Refund { remaining: i64, reset_after_ms: i64 },
    /// CL.THROTTLE: `[limited, limit, remaining, retry_after_s, reset_after_s]`.
    Throttle(ThrottleReply),
    /// RL.ACQUIRE: `[acquired, in_flight, max, retry_after_ms]`.
    Acquire(AcquireReply),
    /// A single integer: RL.RESET's 1 (a key was removed) or 0; RL.RELEASE's and RL.RENEW's
    /// 1 (the lease was live) or 0.
    Int(i64),
}

/// RL.CHECK's five integers, also RL.PEEK's and one row of RL.CHECKALL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckReply {
    /// Sent as 1 (admitted) or 0 (limited).
    pub allowed: bool,
    pub remaining: i64,
    /// 0 when allowed; when limited, the wait in milliseconds (rounded up), or -1 for never.
    pub retry_after_ms: i64,
    pub reset_after_ms: i64,
    pub burst: i64,
}

impl CheckReply {
    pub fn new(decision: &Decision, burst: u64) -> Self {
        let retry_after_ms = match decision.retry_after {
            RetryAfter::Now => 0,
            RetryAfter::Millis(ms) => saturating_i64(ms),
            RetryAfter::Never => -1,
        };
        CheckReply {
            allowed: decision.allowed,
            remaining: saturating_i64(decision.remaining),
            retry_after_ms,
            reset_after_ms: saturating_i64(decision.reset_after_ms),
            burst: saturating_i64(burst),
        }
    }

    /// The integers in wire order.
    pub fn to_array(&self) -> [i64; 5] {
        [i64::from(self.allowed), self.remaining, self.retry_after_ms, self.reset_after_ms, self.burst]
    }
}

/// CL.THROTTLE's five integers, as redis-cell sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleReply {
    /// Sent as 1 (limited) or 0 (allowed): the opposite of RL.CHECK's first field.
    pub limited: bool,
    /// The bucket capacity, `max_burst + 1`.
    pub limit: i64,
    pub remaining: i64,
    /// Seconds, rounded up; -1 when allowed and when the quantity can never fit.
    pub retry_after_s: i64,
    /// Seconds until the bucket is full again, rounded up.
    pub reset_after_s: i64,
}

impl ThrottleReply {
    /// The integers in wire order.
    pub fn to_array(&self) -> [i64; 5] {
        [i64::from(self.limited), self.limit, self.remaining, self.retry_after_s, self.reset_after_s]
    }
}

/// RL.ACQUIRE's four integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcquireReply {
    /// Sent as 1 (the lease is held) or 0 (refused).
    pub acquired: bool,
    pub in_flight: i64,
    pub max: i64,
    /// 0 when acquired; else milliseconds until enough live leases end for a slot to free.
    pub retry_after_ms: i64,
}

impl AcquireReply {
    pub fn new(decision: &crate::lease::Acquire, max: u64) -> Self {
        AcquireReply {
            acquired: decision.acquired,
            in_flight: saturating_i64(decision.in_flight),
            max: saturating_i64(max),
            retry_after_ms: saturating_i64(decision.retry_after_ms),
        }
    }

    /// The integers in wire order.
    pub fn to_array(&self) -> [i64; 4] {
        [i64::from(self.acquired), self.in_flight, self.max, self.retry_after_ms]
    }
}

/// A count or duration as a Redis integer (`i64`), saturating: every value the math produces
/// fits, so the cap is only a guard.
pub fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_send_their_fields_in_the_documented_order() {
        let check = CheckReply { allowed: true, remaining: 2, retry_after_ms: 3, reset_after_ms: 4, burst: 5 };
        assert_eq!(check.to_array(), [1, 2, 3, 4, 5]);
        assert_eq!(CheckReply { allowed: false, ..check }.to_array(), [0, 2, 3, 4, 5]);
        let throttle = ThrottleReply { limited: true, limit: 2, remaining: 3, retry_after_s: 4, reset_after_s: 5 };
        assert_eq!(throttle.to_array(), [1, 2, 3, 4, 5]);
        assert_eq!(ThrottleReply { limited: false, ..throttle }.to_array(), [0, 2, 3, 4, 5]);
    }

    #[test]
    fn a_check_reply_says_minus_one_for_never_and_zero_when_admitted() {
        let decision =
            |allowed, retry_after| Decision { allowed, remaining: 1, retry_after, reset_after_ms: 7, new_tat: None };
        let admitted = CheckReply::new(&decision(true, RetryAfter::Now), 9);
        assert_eq!(admitted.to_array(), [1, 1, 0, 7, 9]);
        let waits = CheckReply::new(&decision(false, RetryAfter::Millis(250)), 9);
        assert_eq!(waits.to_array(), [0, 1, 250, 7, 9]);
        let never = CheckReply::new(&decision(false, RetryAfter::Never), 9);
        assert_eq!(never.to_array(), [0, 1, -1, 7, 9]);
        assert_eq!(CheckReply::new(&decision(true, RetryAfter::Now), u64::MAX).burst, i64::MAX);
    }
}
