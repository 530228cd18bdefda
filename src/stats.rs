//! Counters shown by `INFO ratelimit`. Commands and the INFO callback all run on Redis's main
//! thread, so a relaxed load and store (no locked read-modify-write) is exact; the atomics only
//! make the statics safe to share.

use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};

static CALLS: AtomicU64 = AtomicU64::new(0);
static ADMITTED: AtomicU64 = AtomicU64::new(0);
static LIMITED: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);
static REFUNDS: AtomicU64 = AtomicU64::new(0);
static RESETS: AtomicU64 = AtomicU64::new(0);

fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

pub fn count_call() {
    bump(&CALLS);
}

/// One decision of a command that takes tokens (RL.CHECK, RL.CHECKALL, CL.THROTTLE).
pub fn count_decision(allowed: bool) {
    let counter = if allowed { &ADMITTED } else { &LIMITED };
    bump(counter);
}

pub fn count_error() {
    bump(&ERRORS);
}

pub fn count_refund() {
    bump(&REFUNDS);
}

pub fn count_reset() {
    bump(&RESETS);
}

/// The counters as `INFO ratelimit` shows them (Redis prefixes each name with `ratelimit_`).
pub fn fields() -> [(&'static CStr, u64); 6] {
    [
        (c"calls", CALLS.load(Ordering::Relaxed)),
        (c"admitted", ADMITTED.load(Ordering::Relaxed)),
        (c"limited", LIMITED.load(Ordering::Relaxed)),
        (c"errors", ERRORS.load(Ordering::Relaxed)),
        (c"refunds", REFUNDS.load(Ordering::Relaxed)),
        (c"resets", RESETS.load(Ordering::Relaxed)),
    ]
}
