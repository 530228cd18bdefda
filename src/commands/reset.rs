//! `RL.RESET key`: forget a limiter (its bucket is full again). Reply 1 if a key was removed,
//! else 0. Refuses to delete anything that is not limiter state.

use crate::args::parse_reset;
use crate::error::Error;
use crate::reply::Reply;
use crate::stats;
use crate::store::{Access, Store};

pub fn run<S: Store>(store: &mut S, line: &S::Line, _now: u64) -> Result<Reply, Error> {
    stats::count_call();
    parse_reset(line)?;
    let key = store.open(line, 1, Access::Write)?;
    if store.read(&key)?.is_none() {
        return Ok(Reply::Int(0));
    }
    store.delete(&key)?;
    stats::count_reset();
    Ok(Reply::Int(1))
}
