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

use crate::args::CheckRequest;
use crate::error::Error;
use crate::ffi::{now_nanos, Ctx, Key, RawArgs};
use crate::gcra::{decide, Decision, RetryAfter};
use crate::stats;

/// The key argument at `index` (the parser has already checked the arity).
fn key_at(args: &RawArgs, index: usize) -> Result<NonNull<raw::RedisModuleString>, Error> {
    args.redis_string(index).ok_or(Error::Internal)
}

/// Takes `request.cost` tokens from the key at argument 1 if its bucket has them: read,
/// decide, write and replicate the effect, count. RL.CHECK and CL.THROTTLE differ only in
/// their arguments and reply.
fn take(ctx: Ctx, args: &RawArgs, request: &CheckRequest) -> Result<Decision, Error> {
    let key = Key::open(ctx, key_at(args, 1)?, false)?;
    let stored = key.read_state()?;
    let decision = decide(&request.quota, stored, now_nanos(), request.cost)?;
    if let Some(tat) = decision.new_tat {
        key.write_state(&tat)?;
    }
    stats::count_decision(decision.allowed);
    Ok(decision)
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
