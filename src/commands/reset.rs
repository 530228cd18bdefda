//! `RL.RESET key`: forget a limiter (its bucket is full again). Reply 1 if a key was removed,
//! else 0. Refuses to delete anything that is not limiter state.

use crate::args::parse_reset;
use crate::error::Error;
use crate::ffi::{Ctx, Key, RawArgs, Reply};
use crate::stats;

pub fn run(ctx: Ctx, args: &RawArgs) -> Result<Reply, Error> {
    stats::count_call();
    parse_reset(args)?;
    let key = Key::open(ctx, super::key_at(args, 1)?, false)?;
    if key.read_state()?.is_none() {
        return Ok(Reply::Int(0));
    }
    key.delete()?;
    stats::count_reset();
    Ok(Reply::Int(1))
}
