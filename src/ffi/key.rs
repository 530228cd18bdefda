//! The Redis keyspace as a [`Store`]: one open Redis key per [`Key`], its value read and
//! written in place through DMA, writes replicated as their effect.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};

use redis_module::raw;

use super::{Ctx, RawArgs, RawCtx};
use crate::error::Error;
use crate::gcra::Tat;
use crate::state;
use crate::store::{Access, Store};

/// The `PXAT` argument of replicated writes, created once at load ([`init_strings`]) and never
/// freed: Redis only takes references to it.
static PXAT: AtomicPtr<raw::RedisModuleString> = AtomicPtr::new(std::ptr::null_mut());

/// Creates the strings the hot path reuses. Called once while the module loads.
pub(super) fn init_strings() -> bool {
    let Some(create) = (unsafe { raw::RedisModule_CreateString }) else { return false };
    // SAFETY: a NULL context creates a string owned by the module, outside automatic memory.
    let pxat = unsafe { create(std::ptr::null_mut(), c"PXAT".as_ptr(), 4) };
    PXAT.store(pxat, Ordering::Relaxed);
    !pxat.is_null() && super::lease::init_marker()
}

/// The keys of the command being run, opened by their position on its command line.
pub struct Keyspace {
    ctx: Ctx,
}

impl Keyspace {
    pub(super) fn new(ctx: Ctx) -> Self {
        Keyspace { ctx }
    }
}

impl Store for Keyspace {
    type Line = RawArgs;
    type Key = Key;

    fn open(&mut self, line: &RawArgs, index: usize, access: Access) -> Result<Key, Error> {
        // The parsers have checked the arity, so the argument is there.
        let name = line.redis_string(index).ok_or(Error::Internal)?;
        Key::open(self.ctx, name, access)
    }

    fn read(&self, key: &Key) -> Result<Option<Tat>, Error> {
        key.read_state()
    }

    fn write(&mut self, key: &Key, tat: &Tat) -> Result<(), Error> {
        key.write_state(tat)
    }

    fn delete(&mut self, key: &Key) -> Result<(), Error> {
        key.delete()
    }
}

/// An open key, closed on drop.
pub struct Key {
    pub(super) ctx: RawCtx,
    pub(super) name: NonNull<raw::RedisModuleString>,
    /// NULL only for a missing key opened read-only; never written through then (read-only
    /// keys are never written).
    pub(super) key: *mut raw::RedisModuleKey,
}

impl Key {
    /// Opens `name` for reading, and for writing too with [`Access::Write`].
    fn open(ctx: Ctx, name: NonNull<raw::RedisModuleString>, access: Access) -> Result<Key, Error> {
        let read_only = access == Access::Read;
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
    fn read_state(&self) -> Result<Option<Tat>, Error> {
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
    fn write_state(&self, tat: &Tat) -> Result<(), Error> {
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
    pub(super) unsafe fn signal_and_notify(&self, events: &[(c_int, &CStr)]) {
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
    fn delete(&self) -> Result<(), Error> {
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
pub(super) unsafe fn set_absolute_expiry(key: *mut raw::RedisModuleKey, expiry_ms: i64) {
    if let Some(set_abs) = raw::RedisModule_SetAbsExpire {
        set_abs(key, expiry_ms);
    } else if let (Some(set_rel), Some(millis)) = (raw::RedisModule_SetExpire, raw::RedisModule_Milliseconds) {
        set_rel(key, expiry_ms.saturating_sub(millis()).max(1));
    }
}
