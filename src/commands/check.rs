//! `RL.CHECK key limit window [COST cost] [BURST burst]`: take `cost` tokens if the bucket
//! has them. Reply `[allowed, remaining, retry_after_ms, reset_after_ms, burst]`.

use crate::args::parse_check;
use crate::error::Error;
use crate::ffi::{now_nanos, Ctx, Key, RawArgs, Reply};
use crate::gcra::decide;
use crate::stats;

pub fn run(ctx: Ctx, args: &RawArgs) -> Result<Reply, Error> {
    stats::count_call();
    let request = parse_check(args)?;
    let key = Key::open(ctx, super::key_at(args, 1)?, false)?;
    let stored = key.read_state()?;
    let decision = decide(&request.quota, stored, now_nanos(), request.cost)?;
    if let Some(tat) = decision.new_tat {
        key.write_state(&tat)?;
    }
    stats::count_decision(decision.allowed);
    Ok(Reply::Five(super::check_row(&decision, request.quota.burst())))
}
