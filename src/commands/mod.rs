//! One file per command, each reading top to bottom:
//! parse -> read state -> decide -> write + replicate the effect -> reply.
//!
//! Every body has the same shape, `run(store, line, now) -> Result<Reply, Error>`: generic over
//! the [`Store`] that holds the state, with the clock read once by the caller and passed in.
//! Inside Redis the store is the keyspace and the caller the FFI edge; in the unit tests
//! (`tests.rs`) it is an in-memory map and the clock a constant.

pub mod check;
pub mod checkall;
pub mod debug;
pub mod peek;
pub mod refund;
pub mod reset;
pub mod throttle;

#[cfg(test)]
mod tests;

use crate::args::CheckRequest;
use crate::error::Error;
use crate::gcra::{decide, decide_forced, Decision};
use crate::stats;
use crate::store::{Access, Store};

/// Takes `request.cost` tokens from the key at argument 1 if its bucket has them (or always,
/// with `FORCE`): read, decide, write and replicate the effect, count. RL.CHECK and
/// CL.THROTTLE differ only in their arguments and reply.
fn take<S: Store>(store: &mut S, line: &S::Line, request: &CheckRequest, now: u64) -> Result<Decision, Error> {
    let key = store.open(line, 1, Access::Write)?;
    let stored = store.read(&key)?;
    let decision = if request.force {
        decide_forced(&request.quota, stored, now, request.cost)?
    } else {
        decide(&request.quota, stored, now, request.cost)?
    };
    if let Some(tat) = decision.new_tat {
        store.write(&key, &tat)?;
    }
    stats::count_decision(decision.allowed);
    Ok(decision)
}
