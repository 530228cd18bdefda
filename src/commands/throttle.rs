//! `CL.THROTTLE key max_burst count_per_period period [quantity]`: redis-cell's command and
//! reply, on this module's state, clock and replication:
//! `[limited, max_burst + 1, remaining, retry_after_s (-1 when allowed), reset_after_s]`,
//! seconds rounded up.

use crate::args::parse_throttle;
use crate::error::Error;
use crate::ffi::{Ctx, RawArgs, Reply};
use crate::gcra::RetryAfter;
use crate::stats;

fn seconds_ceil(millis: u64) -> i64 {
    super::to_i64(millis.div_ceil(1000))
}

pub fn run(ctx: Ctx, args: &RawArgs) -> Result<Reply, Error> {
    stats::count_call();
    let request = parse_throttle(args)?;
    let decision = super::take(ctx, args, &request)?;
    // redis-cell answers -1 both when allowed and when the quantity can never fit.
    let retry_after_s = match decision.retry_after {
        RetryAfter::Millis(ms) => seconds_ceil(ms),
        RetryAfter::Now | RetryAfter::Never => -1,
    };
    Ok(Reply::Five([
        i64::from(!decision.allowed),
        super::to_i64(request.quota.burst()),
        super::to_i64(decision.remaining),
        retry_after_s,
        seconds_ceil(decision.reset_after_ms),
    ]))
}
