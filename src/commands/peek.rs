//! `RL.PEEK key limit window [BURST burst]`: RL.CHECK's reply for a cost-1 request, taking
//! nothing and writing nothing (registered read-only, so it also runs on replicas).

use crate::args::parse_peek;
use crate::error::Error;
use crate::gcra::decide;
use crate::reply::{CheckReply, Reply};
use crate::stats;
use crate::store::{Access, Store};

pub fn run<S: Store>(store: &mut S, line: &S::Line, now: u64) -> Result<Reply, Error> {
    stats::count_call();
    let quota = parse_peek(line)?;
    let key = store.open(line, 1, Access::Read)?;
    let stored = store.read(&key)?;
    // Peeking reports what a cost-1 request would get; the new state it computes is dropped.
    let decision = decide(&quota, stored, now, 1)?;
    Ok(Reply::Check(CheckReply::new(&decision, quota.burst())))
}
