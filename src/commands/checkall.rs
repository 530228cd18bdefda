//! `RL.CHECKALL numkeys key [key ...] spec [spec ...]`, each spec `limit window cost burst
//! [keep]` (all specs of one width):
//! all-or-nothing over several limits (e.g. requests per minute *and* tokens per minute).
//! If every limit admits, all are charged; if any refuses, none is.
//! Reply `[allowed, retry_after_ms, [[allowed_i, remaining_i, retry_i, reset_i, burst_i] ...]]`.

use std::ops::Range;

use crate::args::{parse_checkall, parse_checkall_numkeys, Args};
use crate::error::Error;
use crate::gcra::{decide, decide_keeping, RetryAfter};
use crate::reply::{saturating_i64, CheckReply, Reply};
use crate::stats;
use crate::store::{Access, Store};

pub fn run<S: Store>(store: &mut S, line: &S::Line, now: u64) -> Result<Reply, Error> {
    stats::count_call();
    let (numkeys, requests) = parse_checkall(line)?;
    // Open and decide every key before writing any, so an error or a refusal changes nothing.
    let mut keys = Vec::with_capacity(numkeys);
    let mut decisions = Vec::with_capacity(numkeys);
    for (i, request) in requests.iter().enumerate() {
        let key = store.open(line, 2 + i, Access::Write)?;
        let stored = store.read(&key)?;
        decisions.push((stored, decide_keeping(&request.quota, stored, now, request.cost, request.keep)?));
        keys.push(key);
    }
    let allowed = decisions.iter().all(|(_, d)| d.allowed);
    let retry_after_ms = if allowed {
        0
    } else if decisions.iter().any(|(_, d)| d.retry_after == RetryAfter::Never) {
        -1
    } else {
        decisions
            .iter()
            .filter_map(|(_, d)| match d.retry_after {
                RetryAfter::Millis(ms) => Some(saturating_i64(ms)),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    let mut rows = Vec::with_capacity(numkeys);
    for ((key, (stored, decision)), request) in keys.iter().zip(&decisions).zip(&requests) {
        let mut row = CheckReply::new(decision, request.quota.burst());
        if allowed {
            if let Some(tat) = decision.new_tat {
                store.write(key, &tat)?;
            }
        } else if decision.allowed {
            // This limit would have admitted, but another refused: nothing was taken, so
            // report the untouched state.
            let untouched = decide(&request.quota, *stored, now, 0)?;
            row = CheckReply::new(&untouched, request.quota.burst());
        }
        rows.push(row);
    }
    stats::count_decision(allowed);
    Ok(Reply::CheckAll { allowed, retry_after_ms, rows })
}

/// Where the keys of an RL.CHECKALL line are, for Redis's key-position requests (COMMAND
/// GETKEYS, Cluster slot checks, ACL key patterns): arguments `2..2 + numkeys` when the line
/// is well formed, else none (it then fails with a usage error when run).
pub fn key_positions<A: Args + ?Sized>(line: &A) -> Range<usize> {
    let numkeys = parse_checkall_numkeys(line).unwrap_or(0);
    2..2 + numkeys
}
