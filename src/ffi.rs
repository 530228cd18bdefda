//! The Redis edge: the only file that calls the raw module API. Everything above it works
//! with byte slices, [`Tat`]s and [`Reply`] values.
//!
//! Handlers are `extern "C"` functions wrapped by [`run_command`]: the command body runs
//! inside `catch_unwind`, computes its whole reply as data, and only then is the reply
//! written. So a bug that panics becomes one error reply, never an aborted server and never a
//! half-written reply.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_long, c_longlong};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};

use redis_module::raw;

use crate::args::Args;
use crate::error::Error;
use crate::gcra::Tat;
use crate::state;
use crate::stats;

pub type RawCtx = *mut raw::RedisModuleCtx;
pub type Argv = *mut *mut raw::RedisModuleString;

/// The context of the command being run; only [`run_command`] makes one, from the pointer
/// Redis hands to the handler, so every use of it is during that command.
#[derive(Clone, Copy)]
pub struct Ctx(RawCtx);

/// The `PXAT` argument of replicated writes, created once at load ([`init_strings`]) and never
/// freed: Redis only takes references to it.
static PXAT: AtomicPtr<raw::RedisModuleString> = AtomicPtr::new(std::ptr::null_mut());

/// Creates the strings the hot path reuses. Called once from `RedisModule_OnLoad`.
pub fn init_strings() -> bool {
    let Some(create) = (unsafe { raw::RedisModule_CreateString }) else { return false };
    // SAFETY: a NULL context creates a string owned by the module, outside automatic memory.
    let pxat = unsafe { create(std::ptr::null_mut(), c"PXAT".as_ptr(), 4) };
    PXAT.store(pxat, Ordering::Relaxed);
    !pxat.is_null()
}

/// The complete answer of a command, built before anything is written to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Int(i64),
    Pair([i64; 2]),
    Five([i64; 5]),
    /// RL.CHECKALL: `[allowed, retry_after_ms, [row per key]]`.
    Nested {
        allowed: i64,
        retry_after_ms: i64,
        rows: Vec<[i64; 5]>,
    },
}

/// Runs a command body behind the panic guard and writes its reply or error.
///
/// # Safety
/// `ctx`, `argv` and `argc` must be the arguments Redis passed to a command handler.
pub unsafe fn run_command(
    ctx: RawCtx,
    argv: Argv,
    argc: c_int,
    body: fn(Ctx, &RawArgs) -> Result<Reply, Error>,
) -> c_int {
    let ctx = Ctx(ctx);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let args = RawArgs::new(argv, argc);
        body(ctx, &args)
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
        Reply::Int(v) => reply_int(ctx, *v),
        Reply::Pair(values) => reply_ints(ctx, values),
        Reply::Five(values) => reply_ints(ctx, values),
        Reply::Nested { allowed, retry_after_ms, rows } => {
            reply_array(ctx, 3);
            reply_int(ctx, *allowed);
            reply_int(ctx, *retry_after_ms);
            reply_array(ctx, rows.len());
            for row in rows {
                reply_ints(ctx, row);
            }
        }
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
    pub fn redis_string(&self, index: usize) -> Option<NonNull<raw::RedisModuleString>> {
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
/// instant; otherwise the millisecond clock (Redis 7.0).
pub fn now_nanos() -> u64 {
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

/// An open key, closed on drop.
pub struct Key {
    ctx: RawCtx,
    name: NonNull<raw::RedisModuleString>,
    /// NULL only for a missing key opened read-only; never written through then (read-only
    /// keys are never written).
    key: *mut raw::RedisModuleKey,
}

impl Key {
    /// Opens `name` for reading, and for writing unless `read_only`.
    pub fn open(ctx: Ctx, name: NonNull<raw::RedisModuleString>, read_only: bool) -> Result<Key, Error> {
        let mode = if read_only { raw::REDISMODULE_READ } else { raw::REDISMODULE_READ | raw::REDISMODULE_WRITE };
        let open = unsafe { raw::RedisModule_OpenKey }.ok_or(Error::Internal)?;
        let key = unsafe { open(ctx.0, name.as_ptr(), mode as c_int) }.cast::<raw::RedisModuleKey>();
        // Opening a missing key read-only gives NULL on Redis 7.0: that is an empty key.
        if key.is_null() && !read_only {
            return Err(Error::Internal);
        }
        Ok(Key { ctx: ctx.0, name, key })
    }

    /// The stored TAT: `None` for a missing key, an error for anything but limiter state.
    pub fn read_state(&self) -> Result<Option<Tat>, Error> {
        if self.key.is_null() {
            return Ok(None);
        }
        let key_type = unsafe { raw::RedisModule_KeyType }.map_or(-1, |f| unsafe { f(self.key) });
        match key_type as isize {
            raw::REDISMODULE_KEYTYPE_EMPTY => Ok(None),
            raw::REDISMODULE_KEYTYPE_STRING => {
                let dma = unsafe { raw::RedisModule_StringDMA }.ok_or(Error::Internal)?;
                let mut len = 0usize;
                let ptr = unsafe { dma(self.key, &mut len, raw::REDISMODULE_READ as c_int) };
                if ptr.is_null() {
                    return Err(Error::NotLimiterState);
                }
                // SAFETY: DMA gives the value's bytes, valid until the key is modified or closed.
                let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
                state::decode(bytes).map(Some).ok_or(Error::NotLimiterState)
            }
            _ => Err(Error::WrongType),
        }
    }

    /// Stores `tat` with an absolute expiry at the moment the bucket is full again, and
    /// replicates exactly that effect (`SET key value PXAT ms`) to replicas and the AOF.
    pub fn write_state(&self, tat: &Tat) -> Result<(), Error> {
        if self.key.is_null() {
            return Err(Error::Internal);
        }
        let encoded = state::encode(tat);
        let bytes = encoded.as_bytes();
        let expiry = i64::try_from(tat.expiry_millis()).map_err(|_| Error::Internal)?;
        unsafe {
            self.overwrite_value(bytes)?;
            set_absolute_expiry(self.key, expiry);
            self.signal_and_notify(&[
                (raw::REDISMODULE_NOTIFY_STRING, c"set"),
                (raw::REDISMODULE_NOTIFY_GENERIC, c"expire"),
            ]);
            // `SET key value PXAT ms`. "PXAT" is a string kept for the module's lifetime and the
            // expiry is formatted here: both are cheaper for Redis than building them from a C
            // string and a long long on every call.
            let pxat = PXAT.load(Ordering::Relaxed);
            if let (Some(replicate), false) = (raw::RedisModule_Replicate, pxat.is_null()) {
                let expiry = state::decimal(expiry.unsigned_abs());
                let expiry = expiry.as_bytes();
                replicate(
                    self.ctx,
                    c"SET".as_ptr(),
                    c"sbsb".as_ptr(),
                    self.name.as_ptr(),
                    bytes.as_ptr().cast::<c_char>(),
                    bytes.len(),
                    pxat,
                    expiry.as_ptr().cast::<c_char>(),
                    expiry.len(),
                );
            }
        }
        Ok(())
    }

    /// Tells WATCH and client-side caching that the key changed, and emits the keyspace events
    /// the equivalent core commands emit (`SET … PXAT`: `set` and `expire`; `DEL`: `del`), so
    /// subscribers see the same events on the primary as on replicas applying the effect.
    unsafe fn signal_and_notify(&self, events: &[(c_int, &CStr)]) {
        if let Some(signal) = raw::RedisModule_SignalModifiedKey {
            signal(self.ctx, self.name.as_ptr());
        }
        if let Some(notify) = raw::RedisModule_NotifyKeyspaceEvent {
            for (class, event) in events {
                notify(self.ctx, *class, event.as_ptr(), self.name.as_ptr());
            }
        }
    }

    /// Writes `bytes` as the key's string value in place: the value is updated through DMA,
    /// resized only when its length changes (rarely: the length of a nanosecond timestamp is
    /// the same for centuries), so the hot path allocates nothing. A new key is created by
    /// the resize.
    unsafe fn overwrite_value(&self, bytes: &[u8]) -> Result<(), Error> {
        let dma = raw::RedisModule_StringDMA.ok_or(Error::Internal)?;
        let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int;
        let mut len = 0usize;
        // An empty key gives a static empty buffer of length 0: never written, resized first.
        let mut ptr = dma(self.key, &mut len, mode);
        if ptr.is_null() || len != bytes.len() {
            let truncate = raw::RedisModule_StringTruncate.ok_or(Error::Internal)?;
            if truncate(self.key, bytes.len()) != raw::REDISMODULE_OK as c_int {
                return Err(Error::Internal);
            }
            ptr = dma(self.key, &mut len, mode);
        }
        if ptr.is_null() || len != bytes.len() {
            return Err(Error::Internal);
        }
        // SAFETY: DMA gave a writable buffer of exactly `len == bytes.len()` bytes.
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.cast::<u8>(), len);
        Ok(())
    }

    /// Deletes the key and replicates `DEL key`.
    pub fn delete(&self) -> Result<(), Error> {
        if self.key.is_null() {
            return Err(Error::Internal);
        }
        unsafe {
            let delete = raw::RedisModule_DeleteKey.ok_or(Error::Internal)?;
            if delete(self.key) != raw::REDISMODULE_OK as c_int {
                return Err(Error::Internal);
            }
            self.signal_and_notify(&[(raw::REDISMODULE_NOTIFY_GENERIC, c"del")]);
            if let Some(replicate) = raw::RedisModule_Replicate {
                replicate(self.ctx, c"DEL".as_ptr(), c"s".as_ptr(), self.name.as_ptr());
            }
        }
        Ok(())
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        if self.key.is_null() {
            return;
        }
        if let Some(close) = unsafe { raw::RedisModule_CloseKey } {
            unsafe { close(self.key) };
        }
    }
}

/// Sets the key to expire at `expiry_ms` (Unix milliseconds). `SetAbsExpire` exists from
/// Redis 6.2.2; on older servers a relative expiry from the millisecond clock is the fallback.
unsafe fn set_absolute_expiry(key: *mut raw::RedisModuleKey, expiry_ms: i64) {
    if let Some(set_abs) = raw::RedisModule_SetAbsExpire {
        set_abs(key, expiry_ms);
    } else if let (Some(set_rel), Some(millis)) = (raw::RedisModule_SetExpire, raw::RedisModule_Milliseconds) {
        set_rel(key, expiry_ms.saturating_sub(millis()).max(1));
    }
}

/// `numkeys` of an RL.CHECKALL line when it is well formed (`argc == 2 + 5 * numkeys`), else 0:
/// a malformed line declares no keys and then fails with a usage error when run.
///
/// # Safety
/// `argv` and `argc` must be the arguments Redis passed to the handler.
pub unsafe fn checkall_numkeys(argv: Argv, argc: c_int) -> usize {
    let args = RawArgs::new(argv, argc);
    crate::args::parse_checkall_numkeys(&args).unwrap_or(0)
}
