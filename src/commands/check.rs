//! `RL.CHECK key limit window [COST cost] [BURST burst]`: take `cost` tokens if the bucket
//! has them. Reply `[allowed, remaining, retry_after_ms, reset_after_ms, burst]`.

use crate::args::parse_check;
use crate::error::Error;
use crate::ffi::{Ctx, RawArgs, Reply};
use crate::stats;

pub fn run(ctx: Ctx, args: &RawArgs) -> Result<Reply, Error> {
    stats::count_call();
    let request = parse_check(args)?;
    let decision = super::take(ctx, args, &request)?;
    Ok(Reply::Five(super::check_row(&decision, request.quota.burst())))
}
