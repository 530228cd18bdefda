//! The Redis edge: the only code that calls the module API (`RedisModule_*` function pointers),
//! checked by a test below. Everything above it works with byte slices,
//! [`Tat`](crate::gcra::Tat)s and [`Reply`] values, and reaches state through the
//! [`Store`](crate::store::Store) trait.
//!
//! - this file: running a command ([`run_command`]), its arguments ([`RawArgs`]), the clock
//!   (`now_nanos`) and writing the reply;
//! - `key.rs`: the Redis key as a store ([`Keyspace`]): read, write with expiry, delete,
//!   keyspace events and effect replication;
//! - `lease.rs`: the same keys as lease sets (sorted sets): reading what a set holds,
//!   purging, adding, removing, the expiry with the last lease, each replicated as its effect;
//! - [`register`]: loading the module: commands, key specs, key-position requests, the ACL
//!   category, the INFO section;
//! - [`alloc`]: the global allocator.
//!
//! Handlers are `extern "C"` functions wrapped by [`run_command`]: the command body runs
//! inside `catch_unwind`, computes its whole reply as data, and only then is the reply
//! written. So a bug that panics becomes one error reply, never an aborted server and never a
//! half-written reply.

pub mod alloc;
mod key;
mod lease;
pub mod register;

use std::ffi::CStr;
use std::os::raw::{c_int, c_long, c_longlong};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use redis_module::raw;

pub use key::{Key, Keyspace};

use crate::args::Args;
use crate::error::Error;
use crate::reply::Reply;
use crate::stats;

pub type RawCtx = *mut raw::RedisModuleCtx;
pub type Argv = *mut *mut raw::RedisModuleString;

/// A command body as the edge runs it: generic bodies (`commands::*::run`) instantiated for
/// the Redis keyspace, given the arguments and the clock reading.
pub type Body = fn(&mut Keyspace, &RawArgs, u64) -> Result<Reply, Error>;

/// The context of the command being run; only [`run_command`] makes one, from the pointer
/// Redis hands to the handler, so every use of it is during that command.
#[derive(Clone, Copy)]
pub struct Ctx(RawCtx);

/// Runs a command body behind the panic guard and writes its reply or error. The clock is
/// read here, once per call, and passed to the body.
///
/// # Safety
/// `ctx`, `argv` and `argc` must be the arguments Redis passed to a command handler.
pub unsafe fn run_command(ctx: RawCtx, argv: Argv, argc: c_int, body: Body) -> c_int {
    let ctx = Ctx(ctx);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let args = RawArgs::new(argv, argc);
        let mut keyspace = Keyspace::new(ctx);
        body(&mut keyspace, &args, now_nanos())
    }));
    match outcome {
        Ok(Ok(reply)) => write_reply(ctx, &reply),
        Ok(Err(error)) => {
            stats::count_error();
            reply_error(ctx, &error);
        }
        Err(_) => {
            stats::count_error();
            reply_error(ctx, &Error::Internal);
        }
    }
    raw::REDISMODULE_OK as c_int
}

fn write_reply(ctx: Ctx, reply: &Reply) {
    match reply {
        Reply::Check(check) => reply_ints(ctx, &check.to_array()),
        Reply::CheckAll { allowed, retry_after_ms, rows } => {
            reply_array(ctx, 3);
            reply_int(ctx, i64::from(*allowed));
            reply_int(ctx, *retry_after_ms);
            reply_array(ctx, rows.len());
            for row in rows {
                reply_ints(ctx, &row.to_array());
            }
        }
        Reply::Refund { remaining, reset_after_ms } => reply_ints(ctx, &[*remaining, *reset_after_ms]),
        Reply::Throttle(throttle) => reply_ints(ctx, &throttle.to_array()),
        Reply::Acquire(acquire) => reply_ints(ctx, &acquire.to_array()),
        Reply::Int(v) => reply_int(ctx, *v),
    }
}

fn reply_array(ctx: Ctx, len: usize) {
    if let Some(f) = unsafe { raw::RedisModule_ReplyWithArray } {
        unsafe { f(ctx.0, c_long::try_from(len).unwrap_or(c_long::MAX)) };
    }
}

fn reply_int(ctx: Ctx, value: i64) {
    if let Some(f) = unsafe { raw::RedisModule_ReplyWithLongLong } {
        unsafe { f(ctx.0, value as c_longlong) };
    }
}

fn reply_ints(ctx: Ctx, values: &[i64]) {
    reply_array(ctx, values.len());
    for &v in values {
        reply_int(ctx, v);
    }
}

fn reply_error(ctx: Ctx, error: &Error) {
    // Error text never contains NUL except from a client's option name: strip those.
    let text: Vec<u8> = error.to_string().into_bytes().into_iter().filter(|&b| b != 0).chain([0]).collect();
    if let (Some(f), Ok(text)) = (unsafe { raw::RedisModule_ReplyWithError }, CStr::from_bytes_with_nul(&text)) {
        unsafe { f(ctx.0, text.as_ptr()) };
    }
}

/// The command line as handed over by Redis, read without copying.
pub struct RawArgs {
    argv: Argv,
    argc: usize,
}

impl RawArgs {
    fn new(argv: Argv, argc: c_int) -> Self {
        let argc = if argv.is_null() { 0 } else { usize::try_from(argc).unwrap_or(0) };
        RawArgs { argv, argc }
    }

    /// The Redis string at `index`, for opening keys and replicating without a copy.
    fn redis_string(&self, index: usize) -> Option<NonNull<raw::RedisModuleString>> {
        if index >= self.argc {
            return None;
        }
        // SAFETY: Redis guarantees `argv` holds `argc` valid strings for the whole call.
        NonNull::new(unsafe { *self.argv.add(index) })
    }
}

impl Args for RawArgs {
    fn count(&self) -> usize {
        self.argc
    }

    fn get(&self, index: usize) -> Option<&[u8]> {
        let string = self.redis_string(index)?;
        let f = unsafe { raw::RedisModule_StringPtrLen }?;
        let mut len = 0usize;
        // SAFETY: the pointer and length describe the string's bytes, alive during the call.
        let ptr = unsafe { f(string.as_ptr(), &mut len) };
        if ptr.is_null() {
            return None;
        }
        Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
    }
}

/// The server clock in nanoseconds, read once per command: the cached command time where the
/// server has it (Redis 7.2+, Valkey), so every key in one call, `MULTI` or script sees the same
/// instant; otherwise the millisecond clock (Redis 7.0). A clock frozen by `RL.DEBUG CLOCK`
/// (only with `debug-commands`) comes first.
fn now_nanos() -> u64 {
    if let Some(frozen) = crate::commands::debug::frozen_clock() {
        return frozen;
    }
    unsafe {
        if let Some(cached) = raw::RedisModule_CachedMicroseconds {
            return u64::try_from(cached()).unwrap_or(0).saturating_mul(1_000);
        }
        if let Some(millis) = raw::RedisModule_Milliseconds {
            return u64::try_from(millis()).unwrap_or(0).saturating_mul(1_000_000);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`, recursively.
    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }

    /// The module API's function pointers are all named `RedisModule_*`; outside `src/ffi/`
    /// no file may name one, not even in a comment (prose about the API belongs next to the
    /// code that calls it). `raw::REDISMODULE_*` constants and `raw::RedisModule*` types are
    /// not calls and may appear anywhere.
    #[test]
    fn only_the_ffi_module_names_module_api_functions() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let ffi = src.join("ffi");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(files.len() > 10, "found only {files:?} under {}", src.display());
        let calls_api = |file: &PathBuf| std::fs::read_to_string(file).is_ok_and(|text| text.contains("RedisModule_"));
        assert!(files.iter().filter(|f| f.starts_with(&ffi)).any(calls_api), "the check must see src/ffi/'s calls");
        let mut offenders = Vec::new();
        for file in files.iter().filter(|f| !f.starts_with(&ffi)) {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for (number, line) in text.lines().enumerate() {
                if line.contains("RedisModule_") {
                    offenders.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
                }
            }
        }
        assert!(offenders.is_empty(), "the module API is called only from src/ffi/:\n{}", offenders.join("\n"));
    }
}
