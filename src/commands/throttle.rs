//! `CL.THROTTLE key max_burst count_per_period period [quantity]`: redis-cell's command and
//! reply, on this module's state, clock and replication:
//! `[limited, max_burst + 1, remaining, retry_after_s (-1 when allowed), reset_after_s]`,
//! seconds rounded up.

use crate::args::parse_throttle;
use crate::error::Error;
use crate::gcra::RetryAfter;
use crate::reply::{saturating_i64, Reply, ThrottleReply};
use crate::stats;
use crate::store::Store;

fn seconds_ceil(millis: u64) -> i64 {
    saturating_i64(millis.div_ceil(1000))
}

pub fn run<S: Store>(store: &mut S, line: &S::Line, now: u64) -> Result<Reply, Error> {
    stats::count_call();
    let request = parse_throttle(line)?;
    let decision = super::take(store, line, &request, now)?;
    // redis-cell answers -1 both when allowed and when the quantity can never fit.
    let retry_after_s = match decision.retry_after {
        RetryAfter::Millis(ms) => seconds_ceil(ms),
        RetryAfter::Now | RetryAfter::Never => -1,
    };
    Ok(Reply::Throttle(ThrottleReply {
        limited: !decision.allowed,
        limit: saturating_i64(request.quota.burst()),
        remaining: saturating_i64(decision.remaining),
        retry_after_s,
        reset_after_s: seconds_ceil(decision.reset_after_ms),
    }))
}
