//! The Redis keyspace as a [`LeaseStore`]: a lease set is a plain sorted set, read and written
//! through the module's sorted-set API, every change replicated as the core command with the
//! same effect (`ZREMRANGEBYSCORE`, `ZADD`, `ZREM`, `PEXPIREAT`), so replicas and the AOF
//! hold the very same members, scores and expiry. Several effects of one command reach
//! replicas wrapped in `MULTI`/`EXEC` by Redis.

use std::os::raw::{c_int, c_longlong};
use std::ptr::NonNull;

use redis_module::raw;

use super::key::{set_absolute_expiry, Key};
use super::{Keyspace, RawArgs};
use crate::error::Error;
use crate::lease::{LeaseView, MAX_LEASES};
use crate::store::{deadline_of, LeaseStore};

const OK: c_int = raw::REDISMODULE_OK as c_int;

/// A score as a deadline that compares with `now_ms` as the score does: lease scores are
/// integers (checked at the ends of the set); anything in between is rounded up.
fn ceil_ms(score: f64) -> u64 {
    // `as` saturates (and maps NaN to 0): no undefined behaviour for any score.
    score.ceil() as u64
}

impl Key {
    fn key_type(&self) -> isize {
        if self.key.is_null() {
            return raw::REDISMODULE_KEYTYPE_EMPTY;
        }
        (unsafe { raw::RedisModule_KeyType }.map_or(-1, |f| unsafe { f(self.key) })) as isize
    }

    /// The score at one end of the score range `min..=max` (`min` exclusive with `min_ex`),
    /// from the lowest (`first`) or the highest end; `None` when the range is empty.
    unsafe fn end_score(&self, min: f64, min_ex: bool, first: bool) -> Result<Option<f64>, Error> {
        let start = if first { raw::RedisModule_ZsetFirstInScoreRange } else { raw::RedisModule_ZsetLastInScoreRange };
        let (Some(start), Some(current), Some(stop)) =
            (start, raw::RedisModule_ZsetRangeCurrentElement, raw::RedisModule_ZsetRangeStop)
        else {
            return Err(Error::Internal);
        };
        if start(self.key, min, f64::INFINITY, c_int::from(min_ex), 0) != OK {
            stop(self.key);
            return Ok(None);
        }
        let mut score = 0.0;
        let element = current(self.key, &mut score);
        stop(self.key);
        if element.is_null() {
            return Ok(None);
        }
        self.free(element);
        Ok(Some(score))
    }

    unsafe fn free(&self, string: *mut raw::RedisModuleString) {
        if let Some(free) = raw::RedisModule_FreeString {
            free(self.ctx, string);
        }
    }

    /// The members whose score is at or below `max_ms`, lowest first; at most `MAX_LEASES`.
    unsafe fn members_up_to(&self, max_ms: u64) -> Result<Vec<NonNull<raw::RedisModuleString>>, Error> {
        let (Some(start), Some(current), Some(next), Some(end), Some(stop)) = (
            raw::RedisModule_ZsetFirstInScoreRange,
            raw::RedisModule_ZsetRangeCurrentElement,
            raw::RedisModule_ZsetRangeNext,
            raw::RedisModule_ZsetRangeEndReached,
            raw::RedisModule_ZsetRangeStop,
        ) else {
            return Err(Error::Internal);
        };
        let mut members = Vec::new();
        if start(self.key, f64::NEG_INFINITY, max_ms as f64, 0, 0) == OK {
            while end(self.key) == 0 && (members.len() as u64) < MAX_LEASES {
                let mut score = 0.0;
                if let Some(element) = NonNull::new(current(self.key, &mut score)) {
                    members.push(element);
                }
                if next(self.key) == 0 {
                    break;
                }
            }
        }
        stop(self.key);
        Ok(members)
    }

    /// Tells WATCH and client-side caching, and emits `event` (a sorted-set event), plus `del`
    /// when the change emptied (and so deleted) the set, as the core command does.
    unsafe fn zset_changed(&self, event: &std::ffi::CStr) {
        let mut events = vec![(raw::REDISMODULE_NOTIFY_ZSET, event)];
        if self.key_type() == raw::REDISMODULE_KEYTYPE_EMPTY {
            events.push((raw::REDISMODULE_NOTIFY_GENERIC, c"del"));
        }
        self.signal_and_notify(&events);
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
        unsafe {
            let length = raw::RedisModule_ValueLength.ok_or(Error::Internal)?(key.key) as u64;
            let lowest = key.end_score(f64::NEG_INFINITY, false, true)?;
            let highest = key.end_score(f64::NEG_INFINITY, false, false)?;
            let is_lease_state = length <= MAX_LEASES
                && lowest.and_then(deadline_of).is_some()
                && highest.and_then(deadline_of).is_some();
            if !is_lease_state {
                return Err(Error::NotLeaseState);
            }
            let expired = key.members_up_to(now_ms)?;
            let expired_count = expired.len() as u64;
            for member in expired {
                key.free(member.as_ptr());
            }
            let earliest_live = key.end_score(now_ms as f64, true, true)?.map(ceil_ms);
            let mut score = 0.0;
            let score_of = raw::RedisModule_ZsetScore.ok_or(Error::Internal)?;
            let held = (score_of(key.key, id.as_ptr(), &mut score) == OK).then(|| ceil_ms(score));
            Ok(LeaseView { live: length.saturating_sub(expired_count), expired: expired_count, held, earliest_live })
        }
    }

    fn purge_leases(&mut self, key: &Key, now_ms: u64) -> Result<(), Error> {
        unsafe {
            let remove = raw::RedisModule_ZsetRem.ok_or(Error::Internal)?;
            let members = key.members_up_to(now_ms)?;
            for member in members {
                let mut deleted: c_int = 0;
                remove(key.key, member.as_ptr(), &mut deleted);
                key.free(member.as_ptr());
            }
            key.zset_changed(c"zremrangebyscore");
            if let Some(replicate) = raw::RedisModule_Replicate {
                let max = c_longlong::try_from(now_ms).map_err(|_| Error::Internal)?;
                replicate(
                    key.ctx,
                    c"ZREMRANGEBYSCORE".as_ptr(),
                    c"scl".as_ptr(),
                    key.name.as_ptr(),
                    c"-inf".as_ptr(),
                    max,
                );
            }
        }
        Ok(())
    }

    fn put_lease(&mut self, key: &Key, line: &RawArgs, id_index: usize, deadline_ms: u64) -> Result<(), Error> {
        let id = line.redis_string(id_index).ok_or(Error::Internal)?;
        let deadline = c_longlong::try_from(deadline_ms).map_err(|_| Error::Internal)?;
        unsafe {
            let add = raw::RedisModule_ZsetAdd.ok_or(Error::Internal)?;
            if add(key.key, deadline_ms as f64, id.as_ptr(), std::ptr::null_mut()) != OK {
                return Err(Error::Internal);
            }
            key.zset_changed(c"zadd");
            if let Some(replicate) = raw::RedisModule_Replicate {
                replicate(key.ctx, c"ZADD".as_ptr(), c"sls".as_ptr(), key.name.as_ptr(), deadline, id.as_ptr());
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

    fn expire_with_last_lease(&mut self, key: &Key) -> Result<(), Error> {
        if key.key_type() != raw::REDISMODULE_KEYTYPE_ZSET {
            return Ok(());
        }
        unsafe {
            let Some(last) = key.end_score(f64::NEG_INFINITY, false, false)?.map(ceil_ms) else { return Ok(()) };
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
