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
    /// A single integer: RL.RESET's 1 (a key was removed) or 0.
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

/// A count or duration as a Redis integer (`i64`), saturating: every value the math produces
/// fits, so the cap is only a guard.
pub fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
