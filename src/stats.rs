//! Counters shown by `INFO ratelimit`. Commands and the INFO callback all run on Redis's main
//! thread, so a relaxed load and store (no locked read-modify-write) is exact; the atomics only
//! make the statics safe to share.

use std::sync::atomic::{AtomicU64, Ordering};

use redis_module::raw;

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
