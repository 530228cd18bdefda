//! Counters shown by `INFO ratelimit`. Relaxed atomics: commands run on Redis's main thread,
//! the atomics only make the statics safe to share with the INFO callback; no locks.

use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::raw;

static CALLS: AtomicU64 = AtomicU64::new(0);
static ADMITTED: AtomicU64 = AtomicU64::new(0);
static LIMITED: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);
static REFUNDS: AtomicU64 = AtomicU64::new(0);
static RESETS: AtomicU64 = AtomicU64::new(0);

pub fn count_call() {
    CALLS.fetch_add(1, Ordering::Relaxed);
}

/// One decision of a command that takes tokens (RL.CHECK, RL.CHECKALL, CL.THROTTLE).
pub fn count_decision(allowed: bool) {
    let counter = if allowed { &ADMITTED } else { &LIMITED };
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn count_error() {
    ERRORS.fetch_add(1, Ordering::Relaxed);
}

pub fn count_refund() {
    REFUNDS.fetch_add(1, Ordering::Relaxed);
}

pub fn count_reset() {
    RESETS.fetch_add(1, Ordering::Relaxed);
}

/// The `INFO` callback: one section named after the module (`INFO ratelimit`), fields
/// prefixed `ratelimit_` by Redis.
pub(crate) extern "C" fn info(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: std::os::raw::c_int) {
    let fields: [(&std::ffi::CStr, &AtomicU64); 6] = [
        (c"calls", &CALLS),
        (c"admitted", &ADMITTED),
        (c"limited", &LIMITED),
        (c"errors", &ERRORS),
        (c"refunds", &REFUNDS),
        (c"resets", &RESETS),
    ];
    unsafe {
        let (Some(section), Some(field)) = (raw::RedisModule_InfoAddSection, raw::RedisModule_InfoAddFieldULongLong)
        else {
            return;
        };
        section(ctx, std::ptr::null());
        for (name, value) in fields {
            field(ctx, name.as_ptr(), value.load(Ordering::Relaxed));
        }
    }
}
