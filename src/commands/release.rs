//! `RL.RELEASE key id`: end the lease `id` holds. Reply 1 if it was live and is now
//! released, else 0.

use crate::args::{parse_release, RELEASE_ID};
use crate::error::Error;
use crate::lease;
use crate::reply::Reply;
use crate::stats;
use crate::store::LeaseStore;

pub fn run<S: LeaseStore>(store: &mut S, line: &S::Line, now: u64) -> Result<Reply, Error> {
    stats::count_call();
    parse_release(line)?;
    let now_ms = super::millis(now);
    let (key, view) = super::open_leases(store, line, RELEASE_ID, now_ms)?;
    let released = lease::release(&view, now_ms);
    super::write_leases(store, &key, &view, now_ms, |store| {
        if released {
            store.remove_lease(&key, line, RELEASE_ID)?;
        }
        Ok(released)
    })?;
    Ok(Reply::Int(i64::from(released)))
}
