//! `RL.RENEW key id lease_ms`: extend the lease `id` holds to end `lease_ms` from now. Reply
//! 1 if it was live and is renewed, else 0 (an ended lease is not revived: acquire again).

use crate::args::{parse_renew, RENEW_ID};
use crate::error::Error;
use crate::lease;
use crate::reply::Reply;
use crate::stats;
use crate::store::LeaseStore;

pub fn run<S: LeaseStore>(store: &mut S, line: &S::Line, now: u64) -> Result<Reply, Error> {
    stats::count_call();
    let lease_ms = parse_renew(line)?;
    let now_ms = super::millis(now);
    let (key, view) = super::open_leases(store, line, RENEW_ID, now_ms)?;
    let deadline = lease::renew(&view, now_ms, lease_ms);
    super::write_leases(store, &key, &view, now_ms, |store| match deadline {
        Some(deadline) => super::put_lease(store, &key, line, RENEW_ID, &view, deadline),
        None => Ok(false),
    })?;
    Ok(Reply::Int(i64::from(deadline.is_some())))
}
