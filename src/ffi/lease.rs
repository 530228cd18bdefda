//! The Redis keyspace as a [`LeaseStore`]: a lease set is a plain sorted set holding the marker
//! [`MARKER`] (scored 0) and one member per lease, read and written through the module's
//! sorted-set API, every change replicated as the core command with the same effect
//! (`ZADD`, `ZREMRANGEBYSCORE`, `ZREM`, `PEXPIREAT`, `DEL`), so replicas and the AOF hold the
//! very same members, scores and expiry. Several effects of one command reach replicas
//! wrapped in `MULTI`/`EXEC` by Redis.

use std::os::raw::{c_char, c_int, c_longlong};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};

use redis_module::raw;

use super::key::{set_absolute_expiry, Key};
use super::{Keyspace, RawArgs};
use crate::error::Error;
use crate::lease::{LeaseView, MARKER, MARKER_SCORE, MAX_LEASES};
use crate::store::{deadline_of, LeaseStore};

const OK: c_int = raw::REDISMODULE_OK as c_int;

/// [`MARKER`] as a Redis string, created once at load ([`init_marker`]) and never freed.
static MARKER_STRING: AtomicPtr<raw::RedisModuleString> = AtomicPtr::new(std::ptr::null_mut());

/// Creates [`MARKER_STRING`]. Called once while the module loads.
pub(super) fn init_marker() -> bool {
    let Some(create) = (unsafe { raw::RedisModule_CreateString }) else { return false };
    // SAFETY: a NULL context creates a string owned by the module, outside automatic memory.
    let marker = unsafe { create(std::ptr::null_mut(), MARKER.as_ptr().cast::<c_char>(), MARKER.len()) };
    MARKER_STRING.store(marker, Ordering::Relaxed);
    !marker.is_null()
}

fn marker() -> Result<NonNull<raw::RedisModuleString>, Error> {
    NonNull::new(MARKER_STRING.load(Ordering::Relaxed)).ok_or(Error::Internal)
}

/// A score as a deadline that compares with `now_ms` as the score does: lease scores are
/// integers (checked at the ends of the set); anything in between is rounded up.
fn ceil_ms(score: f64) -> u64 {
    // `as` saturates (and maps NaN to 0): no undefined behaviour for any score.
    score.ceil() as u64
}

/// A score range of a sorted set: `min` (exclusive with `min_ex`) to `max`, inclusive.
#[derive(Clone, Copy)]
struct Range {
    min: f64,
    min_ex: bool,
    max: f64,
}

impl Range {
    /// Every lease: scores above the marker's.
    const LEASES: Range = Range { min: MARKER_SCORE, min_ex: true, max: f64::INFINITY };

    /// The marker's place: scores at or below 0, where nothing else may be.
    const AT_OR_BELOW_MARKER: Range = Range { min: f64::NEG_INFINITY, min_ex: false, max: MARKER_SCORE };

    /// The leases live at `now_ms` (deadline after it).
    fn live(now_ms: u64) -> Range {
        Range { min: now_ms as f64, min_ex: true, max: f64::INFINITY }
    }

    /// The leases expired at `now_ms`, as `ZREMRANGEBYSCORE key 1 now_ms` removes them.
    fn expired(now_ms: u64) -> Range {
        Range { min: 1.0, min_ex: false, max: now_ms as f64 }
    }
}

impl Key {
    fn key_type(&self) -> isize {
        if self.key.is_null() {
            return raw::REDISMODULE_KEYTYPE_EMPTY;
        }
        (unsafe { raw::RedisModule_KeyType }.map_or(-1, |f| unsafe { f(self.key) })) as isize
    }

    fn length(&self) -> Result<u64, Error> {
        Ok(unsafe { raw::RedisModule_ValueLength.ok_or(Error::Internal)?(self.key) } as u64)
    }

    /// The member and score at the lowest (`first`) or highest end of `range`; `None` when
    /// the range is empty. The caller frees the member.
    unsafe fn end(&self, range: Range, first: bool) -> Result<Option<(NonNull<raw::RedisModuleString>, f64)>, Error> {
        let start = if first { raw::RedisModule_ZsetFirstInScoreRange } else { raw::RedisModule_ZsetLastInScoreRange };
        let (Some(start), Some(current), Some(stop)) =
            (start, raw::RedisModule_ZsetRangeCurrentElement, raw::RedisModule_ZsetRangeStop)
        else {
            return Err(Error::Internal);
        };
        if start(self.key, range.min, range.max, c_int::from(range.min_ex), 0) != OK {
            stop(self.key);
            return Ok(None);
        }
        let mut score = 0.0;
        let element = current(self.key, &mut score);
        stop(self.key);
        Ok(NonNull::new(element).map(|element| (element, score)))
    }

    /// The score at one end of `range`.
    unsafe fn end_score(&self, range: Range, first: bool) -> Result<Option<f64>, Error> {
        Ok(self.end(range, first)?.map(|(element, score)| {
            self.free(element.as_ptr());
            score
        }))
    }

    /// Whether the member at one end of `range` is the marker.
    unsafe fn end_is_marker(&self, range: Range, first: bool) -> Result<bool, Error> {
        let Some((element, _)) = self.end(range, first)? else { return Ok(false) };
        let ptr_len = raw::RedisModule_StringPtrLen.ok_or(Error::Internal);
        let is_marker = ptr_len.map(|f| {
            let mut len = 0usize;
            let ptr = f(element.as_ptr(), &mut len);
            // SAFETY: the pointer and length describe the member's bytes, alive until freed.
            !ptr.is_null() && std::slice::from_raw_parts(ptr.cast::<u8>(), len) == MARKER
        });
        self.free(element.as_ptr());
        is_marker
    }

    unsafe fn free(&self, string: *mut raw::RedisModuleString) {
        if let Some(free) = raw::RedisModule_FreeString {
            free(self.ctx, string);
        }
    }

    /// Walks `range` from its lowest score, at most `limit` members, calling `visit` with each
    /// score (and the member when `with_members`, which `visit` then owns and frees); stops
    /// early when `visit` returns false. Without members no string is created.
    unsafe fn walk(
        &self,
        range: Range,
        limit: u64,
        with_members: bool,
        mut visit: impl FnMut(Option<NonNull<raw::RedisModuleString>>, f64) -> bool,
    ) -> Result<(), Error> {
        let (Some(start), Some(current), Some(next), Some(end), Some(stop)) = (
            raw::RedisModule_ZsetFirstInScoreRange,
            raw::RedisModule_ZsetRangeCurrentElement,
            raw::RedisModule_ZsetRangeNext,
            raw::RedisModule_ZsetRangeEndReached,
            raw::RedisModule_ZsetRangeStop,
        ) else {
            return Err(Error::Internal);
        };
        if start(self.key, range.min, range.max, c_int::from(range.min_ex), 0) == OK {
            let mut seen = 0u64;
            while end(self.key) == 0 && seen < limit {
                seen += 1;
                let keep_going = if with_members {
                    let mut score = 0.0;
                    let element = NonNull::new(current(self.key, &mut score));
                    element.is_some() && visit(element, score)
                } else {
                    // The score alone is not offered by the API; the count needs none.
                    visit(None, 0.0)
                };
                if !keep_going || next(self.key) == 0 {
                    break;
                }
            }
        }
        stop(self.key);
        Ok(())
    }

    /// Tells WATCH and client-side caching, and emits `event` (a sorted-set event), as the
    /// core command does. The marker keeps a lease set from being emptied by a removal.
    unsafe fn zset_changed(&self, event: &std::ffi::CStr) {
        self.signal_and_notify(&[(raw::REDISMODULE_NOTIFY_ZSET, event)]);
    }
}

impl LeaseStore for Keyspace {
    fn read_leases(&self, key: &Key, line: &RawArgs, id_index: usize, now_ms: u64) -> Result<LeaseView, Error> {
        match key.key_type() {
            raw::REDISMODULE_KEYTYPE_EMPTY => return Ok(LeaseView::default()),
            raw::REDISMODULE_KEYTYPE_ZSET => {}
            _ => return Err(Error::WrongType),
        }
        let id = line.redis_string(id_index).ok_or(Error::Internal)?;
        let marker = marker()?;
        unsafe {
            let score_of = raw::RedisModule_ZsetScore.ok_or(Error::Internal)?;
            let mut score = f64::NAN;
            // The O(1) test that refuses an application's sorted set before anything else.
            if score_of(key.key, marker.as_ptr(), &mut score) != OK || score != MARKER_SCORE {
                return Err(Error::NotLeaseState);
            }
            let length = key.length()?;
            let lowest = key.end_score(Range::LEASES, true)?;
            let highest = key.end_score(Range::LEASES, false)?;
            let is_lease_state = length <= MAX_LEASES + 1
                && key.end_is_marker(Range::AT_OR_BELOW_MARKER, true)?
                && key.end_is_marker(Range::AT_OR_BELOW_MARKER, false)?
                && lowest.is_none_or(|score| deadline_of(score).is_some())
                && highest.is_none_or(|score| deadline_of(score).is_some());
            if !is_lease_state {
                return Err(Error::NotLeaseState);
            }
            let mut expired = 0u64;
            key.walk(Range::expired(now_ms), MAX_LEASES, false, |_, _| {
                expired += 1;
                true
            })?;
            let held = (score_of(key.key, id.as_ptr(), &mut score) == OK).then(|| ceil_ms(score));
            Ok(LeaseView {
                live: length.saturating_sub(1).saturating_sub(expired),
                expired,
                held,
                last: highest.map(ceil_ms),
            })
        }
    }

    fn live_deadline(&self, key: &Key, now_ms: u64, rank: u64) -> Result<Option<u64>, Error> {
        if key.key_type() != raw::REDISMODULE_KEYTYPE_ZSET || rank == 0 {
            return Ok(None);
        }
        let mut seen = 0u64;
        let mut found = None;
        unsafe {
            key.walk(Range::live(now_ms), rank, true, |element, score| {
                if let Some(element) = element {
                    key.free(element.as_ptr());
                }
                seen += 1;
                if seen == rank {
                    found = Some(ceil_ms(score));
                }
                seen < rank
            })?;
        }
        Ok(found)
    }

    fn purge_leases(&mut self, key: &Key, now_ms: u64) -> Result<(), Error> {
        // Every conversion and lookup first: nothing fails after the first removal.
        let max = c_longlong::try_from(now_ms).map_err(|_| Error::Internal)?;
        unsafe {
            let remove = raw::RedisModule_ZsetRem.ok_or(Error::Internal)?;
            let mut members = Vec::new();
            key.walk(Range::expired(now_ms), MAX_LEASES, true, |element, _| {
                members.extend(element);
                true
            })?;
            for member in members {
                let mut deleted: c_int = 0;
                remove(key.key, member.as_ptr(), &mut deleted);
                key.free(member.as_ptr());
            }
            key.zset_changed(c"zremrangebyscore");
            if let Some(replicate) = raw::RedisModule_Replicate {
                replicate(
                    key.ctx,
                    c"ZREMRANGEBYSCORE".as_ptr(),
                    c"scl".as_ptr(),
                    key.name.as_ptr(),
                    c"1".as_ptr(),
                    max,
                );
            }
        }
        Ok(())
    }

    fn put_lease(&mut self, key: &Key, line: &RawArgs, id_index: usize, deadline_ms: u64) -> Result<(), Error> {
        let id = line.redis_string(id_index).ok_or(Error::Internal)?;
        let deadline = c_longlong::try_from(deadline_ms).map_err(|_| Error::Internal)?;
        let marker = marker()?;
        let create = key.key_type() == raw::REDISMODULE_KEYTYPE_EMPTY;
        unsafe {
            let add = raw::RedisModule_ZsetAdd.ok_or(Error::Internal)?;
            if create && add(key.key, MARKER_SCORE, marker.as_ptr(), std::ptr::null_mut()) != OK {
                return Err(Error::Internal);
            }
            if add(key.key, deadline_ms as f64, id.as_ptr(), std::ptr::null_mut()) != OK {
                return Err(Error::Internal);
            }
            key.zset_changed(c"zadd");
            if let Some(replicate) = raw::RedisModule_Replicate {
                if create {
                    replicate(
                        key.ctx,
                        c"ZADD".as_ptr(),
                        c"scbls".as_ptr(),
                        key.name.as_ptr(),
                        c"0".as_ptr(),
                        MARKER.as_ptr().cast::<c_char>(),
                        MARKER.len(),
                        deadline,
                        id.as_ptr(),
                    );
                } else {
                    replicate(key.ctx, c"ZADD".as_ptr(), c"sls".as_ptr(), key.name.as_ptr(), deadline, id.as_ptr());
                }
            }
        }
        Ok(())
    }

    fn remove_lease(&mut self, key: &Key, line: &RawArgs, id_index: usize) -> Result<(), Error> {
        let id = line.redis_string(id_index).ok_or(Error::Internal)?;
        unsafe {
            let remove = raw::RedisModule_ZsetRem.ok_or(Error::Internal)?;
            let mut deleted: c_int = 0;
            if remove(key.key, id.as_ptr(), &mut deleted) != OK {
                return Err(Error::Internal);
            }
            key.zset_changed(c"zrem");
            if let Some(replicate) = raw::RedisModule_Replicate {
                replicate(key.ctx, c"ZREM".as_ptr(), c"ss".as_ptr(), key.name.as_ptr(), id.as_ptr());
            }
        }
        Ok(())
    }

    fn settle_leases(&mut self, key: &Key, last_before: Option<u64>) -> Result<(), Error> {
        if key.key_type() != raw::REDISMODULE_KEYTYPE_ZSET {
            return Ok(());
        }
        unsafe {
            let Some(last) = key.end_score(Range::LEASES, false)?.map(ceil_ms) else {
                // Only the marker is left: no lease remains, so the set goes.
                return crate::store::Store::delete(self, key);
            };
            if Some(last) == last_before {
                return Ok(());
            }
            let at = c_longlong::try_from(last).map_err(|_| Error::Internal)?;
            set_absolute_expiry(key.key, at);
            key.signal_and_notify(&[(raw::REDISMODULE_NOTIFY_GENERIC, c"expire")]);
            if let Some(replicate) = raw::RedisModule_Replicate {
                replicate(key.ctx, c"PEXPIREAT".as_ptr(), c"sl".as_ptr(), key.name.as_ptr(), at);
            }
        }
        Ok(())
    }
}
