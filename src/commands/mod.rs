//! One file per command, each reading top to bottom:
//! parse -> read state -> decide -> write + replicate the effect -> reply.
//!
//! Every body has the same shape, `run(store, line, now) -> Result<Reply, Error>`: generic over
//! the [`Store`] that holds the state, with the clock read once by the caller and passed in.
//! Inside Redis the store is the keyspace and the caller the FFI edge; in the unit tests
//! (`tests.rs`) it is an in-memory map and the clock a constant.

pub mod acquire;
pub mod check;
pub mod checkall;
pub mod debug;
pub mod peek;
pub mod refund;
pub mod release;
pub mod renew;
pub mod reset;
pub mod throttle;

#[cfg(test)]
mod tests;

use crate::args::CheckRequest;
use crate::error::Error;
use crate::gcra::{decide_forced, decide_keeping, Decision};
use crate::lease::LeaseView;
use crate::stats;
use crate::store::{Access, LeaseStore, Store};

/// Takes `request.cost` tokens from the key at argument 1 if its bucket has them and
/// `request.keep` more (or always, with `FORCE`): read, decide, write and replicate the effect,
/// count. RL.CHECK and CL.THROTTLE differ only in their arguments and reply.
fn take<S: Store>(store: &mut S, line: &S::Line, request: &CheckRequest, now: u64) -> Result<Decision, Error> {
    let key = store.open(line, 1, Access::Write)?;
    let stored = store.read(&key)?;
    let decision = if request.force {
        decide_forced(&request.quota, stored, now, request.cost)?
    } else {
        decide_keeping(&request.quota, stored, now, request.cost, request.keep)?
    };
    if let Some(tat) = decision.new_tat {
        store.write(&key, &tat)?;
    }
    stats::count_decision(decision.allowed);
    Ok(decision)
}

/// A lease set opened for a lease command: the key at argument 1 and what it holds at
/// `now_ms` for the id at `id_index`, read (and validated) before anything is written.
fn open_leases<S: LeaseStore>(
    store: &mut S,
    line: &S::Line,
    id_index: usize,
    now_ms: u64,
) -> Result<(S::Key, LeaseView), Error> {
    let key = store.open(line, 1, Access::Write)?;
    let view = store.read_leases(&key, line, id_index, now_ms)?;
    Ok((key, view))
}

/// Every lease command's write, in order: purge the expired leases (if any), apply the
/// command's own change, then delete the set if no lease is left or let it expire with its
/// last lease (when that moved). Writes nothing when nothing changes.
fn write_leases<S: LeaseStore>(
    store: &mut S,
    key: &S::Key,
    view: &LeaseView,
    now_ms: u64,
    change: impl FnOnce(&mut S) -> Result<bool, Error>,
) -> Result<(), Error> {
    let purged = view.expired > 0;
    if purged {
        store.purge_leases(key, now_ms)?;
    }
    if change(store)? || purged {
        store.settle_leases(key, view.last)?;
    }
    Ok(())
}

/// Stores `deadline` for the caller's id; `true` (the set changed, or holds it already).
/// A deadline the id already has is not written again: Redis would propagate that ZADD although
/// it changes nothing, and the Functions library (whose ZADD then propagates nothing) would
/// write different effects for the same call.
fn put_lease<S: LeaseStore>(
    store: &mut S,
    key: &S::Key,
    line: &S::Line,
    id_at: usize,
    view: &LeaseView,
    deadline: u64,
) -> Result<bool, Error> {
    if view.held != Some(deadline) {
        store.put_lease(key, line, id_at, deadline)?;
    }
    Ok(true)
}

/// The server clock in whole milliseconds, the unit of lease deadlines.
fn millis(now_nanos: u64) -> u64 {
    now_nanos / 1_000_000
}
