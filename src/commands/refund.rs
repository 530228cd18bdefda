//! `RL.REFUND key limit window amount [BURST burst]`: give `amount` tokens back (never above
//! `burst`), e.g. when a model produced fewer tokens than were reserved. A missing key is a
//! no-op. Reply `[remaining, reset_after_ms]`.

use crate::args::parse_refund;
use crate::error::Error;
use crate::ffi::{now_nanos, Ctx, Key, RawArgs, Reply};
use crate::gcra::{refund, RefundWrite};
use crate::stats;

pub fn run(ctx: Ctx, args: &RawArgs) -> Result<Reply, Error> {
    stats::count_call();
    let (quota, amount) = parse_refund(args)?;
    let key = Key::open(ctx, super::key_at(args, 1)?, false)?;
    let stored = key.read_state()?;
    let outcome = refund(&quota, stored, now_nanos(), amount)?;
    match outcome.write {
        RefundWrite::Nothing => {}
        RefundWrite::Store(tat) => key.write_state(&tat)?,
        RefundWrite::Delete => key.delete()?,
    }
    stats::count_refund();
    Ok(Reply::Pair([super::to_i64(outcome.remaining), super::to_i64(outcome.reset_after_ms)]))
}
