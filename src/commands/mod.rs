//! One file per command, each reading top to bottom:
//! parse -> read state -> decide -> write + replicate the effect -> reply.

pub mod check;
pub mod checkall;
pub mod debug;
pub mod peek;
pub mod refund;
pub mod reset;
pub mod throttle;

use std::ptr::NonNull;

use redis_module::raw;

use crate::error::Error;
use crate::ffi::RawArgs;
use crate::gcra::{Decision, RetryAfter};

/// The key argument at `index` (the parser has already checked the arity).
fn key_at(args: &RawArgs, index: usize) -> Result<NonNull<raw::RedisModuleString>, Error> {
    args.redis_string(index).ok_or(Error::Internal)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// RL.CHECK's five integers: allowed, remaining, retry_after_ms, reset_after_ms, burst.
fn check_row(decision: &Decision, burst: u64) -> [i64; 5] {
    let retry_after_ms = match decision.retry_after {
        RetryAfter::Now => 0,
        RetryAfter::Millis(ms) => to_i64(ms),
        RetryAfter::Never => -1,
    };
    [
        i64::from(decision.allowed),
        to_i64(decision.remaining),
        retry_after_ms,
        to_i64(decision.reset_after_ms),
        to_i64(burst),
    ]
}
