//! `RL.ACQUIRE key max lease_ms ID id`: take one of `max` concurrency slots for `id`, or
//! renew the one it holds. Reply `[acquired, in_flight, max, retry_after_ms]`.

use crate::args::{parse_acquire, ACQUIRE_ID};
use crate::error::Error;
use crate::lease;
use crate::reply::{AcquireReply, Reply};
use crate::stats;
use crate::store::LeaseStore;

pub fn run<S: LeaseStore>(store: &mut S, line: &S::Line, now: u64) -> Result<Reply, Error> {
    stats::count_call();
    let (max, lease_ms) = parse_acquire(line)?;
    let now_ms = super::millis(now);
    let (key, view) = super::open_leases(store, line, ACQUIRE_ID, now_ms)?;
    let frees_at = match lease::rank_to_wait_for(&view, now_ms, max) {
        Some(rank) => store.live_deadline(&key, now_ms, rank)?,
        None => None,
    };
    let decision = lease::acquire(&view, frees_at, now_ms, max, lease_ms);
    super::write_leases(store, &key, &view, now_ms, |store| match decision.deadline {
        Some(deadline) => super::put_lease(store, &key, line, ACQUIRE_ID, &view, deadline),
        None => Ok(false),
    })?;
    Ok(Reply::Acquire(AcquireReply::new(&decision, max)))
}
