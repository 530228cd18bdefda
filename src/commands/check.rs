//! `RL.CHECK key limit window [COST cost] [BURST burst] [KEEP keep] [FORCE]`: take `cost` tokens
//! if the bucket has them and `keep` more would remain (with `FORCE`: always, going into bounded
//! debt when it is short). Reply
//! `[allowed, remaining, retry_after_ms, reset_after_ms, burst]`.

use crate::args::parse_check;
use crate::error::Error;
use crate::reply::{CheckReply, Reply};
use crate::stats;
use crate::store::Store;

pub fn run<S: Store>(store: &mut S, line: &S::Line, now: u64) -> Result<Reply, Error> {
    stats::count_call();
    let request = parse_check(line)?;
    let decision = super::take(store, line, &request, now)?;
    Ok(Reply::Check(CheckReply::new(&decision, request.quota.burst())))
}
