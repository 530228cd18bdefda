//! `RL.PEEK key limit window [BURST burst]`: RL.CHECK's reply for a cost-1 request, taking
//! nothing and writing nothing (registered read-only, so it also runs on replicas).

use crate::args::parse_peek;
use crate::error::Error;
use crate::ffi::{now_nanos, Ctx, Key, RawArgs, Reply};
use crate::gcra::decide;
use crate::stats;

pub fn run(ctx: Ctx, args: &RawArgs) -> Result<Reply, Error> {
    stats::count_call();
    let quota = parse_peek(args)?;
    let key = Key::open(ctx, super::key_at(args, 1)?, true)?;
    let stored = key.read_state()?;
    let mut decision = decide(&quota, stored, now_nanos(), 1)?;
    // Peeking reports what a cost-1 request would get; it never stores anything.
    decision.new_tat = None;
    Ok(Reply::Five(super::check_row(&decision, quota.burst())))
}
