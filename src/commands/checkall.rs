//! `RL.CHECKALL numkeys key [key ...] spec [spec ...]`, each spec `limit window cost burst`:
//! all-or-nothing over several limits (e.g. requests per minute *and* tokens per minute).
//! If every limit admits, all are charged; if any refuses, none is.
//! Reply `[allowed, retry_after_ms, [[allowed_i, remaining_i, retry_i, reset_i, burst_i] ...]]`.

use crate::args::parse_checkall;
use crate::error::Error;
use crate::ffi::{now_nanos, Ctx, Key, RawArgs, Reply};
use crate::gcra::{decide, RetryAfter};
use crate::stats;

pub fn run(ctx: Ctx, args: &RawArgs) -> Result<Reply, Error> {
    stats::count_call();
    let (numkeys, requests) = parse_checkall(args)?;
    let now = now_nanos();
    // Open and decide every key before writing any, so an error or a refusal changes nothing.
    let mut keys = Vec::with_capacity(numkeys);
    let mut decisions = Vec::with_capacity(numkeys);
    for (i, request) in requests.iter().enumerate() {
        let key = Key::open(ctx, super::key_at(args, 2 + i)?, false)?;
        let stored = key.read_state()?;
        decisions.push((stored, decide(&request.quota, stored, now, request.cost)?));
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
                RetryAfter::Millis(ms) => Some(super::to_i64(ms)),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    let mut rows = Vec::with_capacity(numkeys);
    for ((key, (stored, decision)), request) in keys.iter().zip(&decisions).zip(&requests) {
        let mut row = super::check_row(decision, request.quota.burst());
        if allowed {
            if let Some(tat) = decision.new_tat {
                key.write_state(&tat)?;
            }
        } else if decision.allowed {
            // This limit would have admitted, but another refused: nothing was taken, so
            // report the untouched state.
            let untouched = decide(&request.quota, *stored, now, 0)?;
            row = super::check_row(&untouched, request.quota.burst());
        }
        rows.push(row);
    }
    stats::count_decision(allowed);
    Ok(Reply::Nested { allowed: i64::from(allowed), retry_after_ms, rows })
}
