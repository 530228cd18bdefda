//! An in-memory [`Store`] for unit tests: a map from key names to values, plus the list of
//! effects a Redis server would have replicated (`SET key value PXAT ms`, `DEL key`). Values
//! are stored encoded, exactly as Redis holds them, so reads go through the same strict
//! decoder as in the server.

use std::collections::BTreeMap;

use super::{deadline_of, Access, LeaseStore, Store};
use crate::args::Args;
use crate::error::Error;
use crate::gcra::Tat;
use crate::lease::{LeaseView, MARKER, MARKER_SCORE, MAX_LEASES};
use crate::state;

/// A command line, one argument per space-separated word: `Line::new("RL.CHECK k 5 10")`.
pub struct Line(Vec<Vec<u8>>);

impl Line {
    pub fn new(words: &str) -> Line {
        Line(words.split(' ').map(|word| word.as_bytes().to_vec()).collect())
    }
}

impl Args for Line {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn get(&self, index: usize) -> Option<&[u8]> {
        self.0.get(index).map(Vec::as_slice)
    }
}

/// What a key holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string value: limiter state, or anything an application stored.
    String(Vec<u8>),
    /// A sorted set, member to score: lease state, or an application's.
    Zset(BTreeMap<Vec<u8>, f64>),
    /// A value of another type (a list, a hash, ...).
    Other,
}

/// One change as it would be replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `SET key value PXAT pxat_ms`
    Set { key: String, value: String, pxat_ms: u64 },
    /// `DEL key`
    Del { key: String },
    /// `ZADD key score member`, or `ZADD key 0 <marker> score member` when it creates the set.
    Zadd { key: String, score: u64, member: String, with_marker: bool },
    /// `ZREM key member`
    Zrem { key: String, member: String },
    /// `ZREMRANGEBYSCORE key 1 max`
    ZremRangeByScore { key: String, max: u64 },
    /// `PEXPIREAT key ms`
    PexpireAt { key: String, ms: u64 },
}

#[derive(Clone, Default)]
pub struct Memory {
    values: BTreeMap<Vec<u8>, Value>,
    /// Absolute expiries set by the lease commands (string expiries are in the effects).
    expiries: BTreeMap<Vec<u8>, u64>,
    effects: Vec<Effect>,
}

/// An open key of a [`Memory`] store.
pub struct MemoryKey {
    name: Vec<u8>,
    access: Access,
}

impl Memory {
    pub fn new() -> Memory {
        Memory::default()
    }

    /// Stores a string as an application would (`SET key value`), recording no effect.
    pub fn set_string(&mut self, key: &str, value: &[u8]) {
        self.values.insert(key.as_bytes().to_vec(), Value::String(value.to_vec()));
    }

    /// Stores a value of another type (`RPUSH key x`), recording no effect.
    pub fn set_other(&mut self, key: &str) {
        self.values.insert(key.as_bytes().to_vec(), Value::Other);
    }

    /// Stores a sorted set as an application would (`ZADD key score member ...`), recording
    /// no effect.
    pub fn set_zset(&mut self, key: &str, members: &[(&str, f64)]) {
        let set = members.iter().map(|&(m, score)| (m.as_bytes().to_vec(), score)).collect();
        self.values.insert(key.as_bytes().to_vec(), Value::Zset(set));
    }

    /// The expiry a lease set was last given (`PEXPIREAT`), if it exists.
    pub fn lease_expiry(&self, key: &str) -> Option<u64> {
        self.expiries.get(key.as_bytes()).copied()
    }

    pub fn value(&self, key: &str) -> Option<Value> {
        self.values.get(key.as_bytes()).cloned()
    }

    /// The stored TAT of a key that holds limiter state.
    pub fn tat(&self, key: &str) -> Option<Tat> {
        match self.values.get(key.as_bytes()) {
            Some(Value::String(bytes)) => state::decode(bytes),
            _ => None,
        }
    }

    /// The effects recorded since the last call, oldest first.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn writable(key: &MemoryKey) -> Result<(), Error> {
        match key.access {
            Access::Write => Ok(()),
            Access::Read => Err(Error::Internal),
        }
    }
}

impl Store for Memory {
    type Line = Line;
    type Key = MemoryKey;

    fn open(&mut self, line: &Line, index: usize, access: Access) -> Result<MemoryKey, Error> {
        let name = line.get(index).ok_or(Error::Internal)?.to_vec();
        Ok(MemoryKey { name, access })
    }

    fn read(&self, key: &MemoryKey) -> Result<Option<Tat>, Error> {
        match self.values.get(&key.name) {
            None => Ok(None),
            Some(Value::String(bytes)) => state::decode(bytes).map(Some).ok_or(Error::NotLimiterState),
            Some(Value::Other | Value::Zset(_)) => Err(Error::WrongType),
        }
    }

    fn write(&mut self, key: &MemoryKey, tat: &Tat) -> Result<(), Error> {
        Memory::writable(key)?;
        let value = state::encode(tat).as_bytes().to_vec();
        self.effects.push(Effect::Set {
            key: String::from_utf8_lossy(&key.name).into_owned(),
            value: String::from_utf8_lossy(&value).into_owned(),
            pxat_ms: tat.expiry_millis(),
        });
        self.values.insert(key.name.clone(), Value::String(value));
        Ok(())
    }

    fn delete(&mut self, key: &MemoryKey) -> Result<(), Error> {
        Memory::writable(key)?;
        self.values.remove(&key.name);
        self.expiries.remove(&key.name);
        self.effects.push(Effect::Del { key: String::from_utf8_lossy(&key.name).into_owned() });
        Ok(())
    }
}

impl Memory {
    fn zset(&self, key: &MemoryKey) -> Result<Option<&BTreeMap<Vec<u8>, f64>>, Error> {
        match self.values.get(&key.name) {
            None => Ok(None),
            Some(Value::Zset(set)) => Ok(Some(set)),
            Some(_) => Err(Error::WrongType),
        }
    }

    fn zset_mut(&mut self, key: &MemoryKey) -> Result<&mut BTreeMap<Vec<u8>, f64>, Error> {
        Memory::writable(key)?;
        let entry = self.values.entry(key.name.clone()).or_insert_with(|| Value::Zset(BTreeMap::new()));
        match entry {
            Value::Zset(set) => Ok(set),
            _ => Err(Error::WrongType),
        }
    }

    fn name(key: &MemoryKey) -> String {
        String::from_utf8_lossy(&key.name).into_owned()
    }
}

impl LeaseStore for Memory {
    fn read_leases(&self, key: &MemoryKey, line: &Line, id_index: usize, now_ms: u64) -> Result<LeaseView, Error> {
        let Some(set) = self.zset(key)? else { return Ok(LeaseView::default()) };
        let marked = set.get(MARKER) == Some(&MARKER_SCORE);
        let at_or_below_zero = set.values().filter(|&&score| score <= MARKER_SCORE).count();
        let leases = || set.iter().filter(|&(member, _)| member != MARKER).map(|(_, &score)| score);
        let lowest = leases().reduce(f64::min);
        let highest = leases().reduce(f64::max);
        let is_lease_state = marked
            && at_or_below_zero == 1
            && set.len() as u64 <= MAX_LEASES + 1
            && lowest.is_none_or(|score| deadline_of(score).is_some())
            && highest.is_none_or(|score| deadline_of(score).is_some());
        if !is_lease_state {
            return Err(Error::NotLeaseState);
        }
        let id = line.get(id_index).ok_or(Error::Internal)?;
        let deadlines = || leases().filter_map(deadline_of);
        Ok(LeaseView {
            live: deadlines().filter(|&d| d > now_ms).count() as u64,
            expired: deadlines().filter(|&d| d <= now_ms).count() as u64,
            held: set.get(id).and_then(|&score| deadline_of(score)),
            last: highest.and_then(deadline_of),
        })
    }

    fn live_deadline(&self, key: &MemoryKey, now_ms: u64, rank: u64) -> Result<Option<u64>, Error> {
        let Some(set) = self.zset(key)? else { return Ok(None) };
        let mut live: Vec<u64> = set.values().filter_map(|&score| deadline_of(score)).filter(|&d| d > now_ms).collect();
        live.sort_unstable();
        let index = usize::try_from(rank).map_err(|_| Error::Internal)?;
        Ok(index.checked_sub(1).and_then(|i| live.get(i)).copied())
    }

    fn purge_leases(&mut self, key: &MemoryKey, now_ms: u64) -> Result<(), Error> {
        let set = self.zset_mut(key)?;
        set.retain(|_, score| !(1.0..=now_ms as f64).contains(score));
        self.effects.push(Effect::ZremRangeByScore { key: Memory::name(key), max: now_ms });
        Ok(())
    }

    fn put_lease(&mut self, key: &MemoryKey, line: &Line, id_index: usize, deadline_ms: u64) -> Result<(), Error> {
        let id = line.get(id_index).ok_or(Error::Internal)?.to_vec();
        let member = String::from_utf8_lossy(&id).into_owned();
        let create = self.zset(key)?.is_none();
        let set = self.zset_mut(key)?;
        if create {
            set.insert(MARKER.to_vec(), MARKER_SCORE);
        }
        set.insert(id, deadline_ms as f64);
        self.effects.push(Effect::Zadd { key: Memory::name(key), score: deadline_ms, member, with_marker: create });
        Ok(())
    }

    fn remove_lease(&mut self, key: &MemoryKey, line: &Line, id_index: usize) -> Result<(), Error> {
        let id = line.get(id_index).ok_or(Error::Internal)?;
        let member = String::from_utf8_lossy(id).into_owned();
        let id = id.to_vec();
        self.zset_mut(key)?.remove(&id);
        self.effects.push(Effect::Zrem { key: Memory::name(key), member });
        Ok(())
    }

    fn settle_leases(&mut self, key: &MemoryKey, last_before: Option<u64>) -> Result<(), Error> {
        let Some(set) = self.zset(key)? else { return Ok(()) };
        let last = set.iter().filter(|&(member, _)| member != MARKER).map(|(_, &score)| score).reduce(f64::max);
        match last.and_then(deadline_of) {
            None => Store::delete(self, key),
            Some(last) if Some(last) == last_before => Ok(()),
            Some(last) => {
                self.expiries.insert(key.name.clone(), last);
                self.effects.push(Effect::PexpireAt { key: Memory::name(key), ms: last });
                Ok(())
            }
        }
    }
}
