//! `RL.REFUND key limit window amount [BURST burst]`: give `amount` tokens back (never above
//! `burst`), e.g. when a model produced fewer tokens than were reserved. A missing key is a
//! no-op; a bucket refunded to full is deleted (the same state). Reply
//! `[remaining, reset_after_ms]`.

use crate::args::parse_refund;
use crate::error::Error;
use crate::gcra::{refund, RefundWrite};
use crate::reply::{saturating_i64, Reply};
use crate::stats;
use crate::store::{Access, Store};

pub fn run<S: Store>(store: &mut S, line: &S::Line, now: u64) -> Result<Reply, Error> {
    stats::count_call();
    let (quota, amount) = parse_refund(line)?;
    let key = store.open(line, 1, Access::Write)?;
    let stored = store.read(&key)?;
    let outcome = refund(&quota, stored, now, amount)?;
    match outcome.write {
        RefundWrite::Nothing => {}
        RefundWrite::Store(tat) => store.write(&key, &tat)?,
        RefundWrite::Delete => store.delete(&key)?,
    }
    stats::count_refund();
    Ok(Reply::Refund {
        remaining: saturating_i64(outcome.remaining),
        reset_after_ms: saturating_i64(outcome.reset_after_ms),
    })
}
