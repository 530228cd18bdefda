//! What the module's command bodies run on in [`MemoryLimiter`](super::MemoryLimiter): a
//! command line ([`Line`]) and a keyspace in a map ([`Keyspace`]), through the module's own
//! `Store` and `LeaseStore` traits, which are all a body may touch. Only storage lives here
//! (which key holds what); every decision is the module's.
//!
//! Keys do not expire: a bucket whose TAT has passed holds exactly what a missing key holds
//! (a full bucket), and a lease set whose leases have all ended what a missing set holds, in
//! every answer of the commands, so the expiries Redis sets change no reply.

use std::collections::BTreeMap;
use std::fmt::Display;

use rl::args::Args;
use rl::error::Error;
use rl::gcra::Tat;
use rl::lease::LeaseView;
use rl::store::{Access, LeaseStore, Store};

/// A command line, as the Redis client would send it: the name, then each argument as text.
pub struct Line(Vec<Vec<u8>>);

impl Line {
    pub fn new(command: &str) -> Line {
        Line(vec![command.as_bytes().to_vec()])
    }

    pub fn arg(mut self, arg: impl Display) -> Line {
        self.0.push(arg.to_string().into_bytes());
        self
    }

    pub fn command(&self) -> &[u8] {
        self.0.first().map_or(&[], Vec::as_slice)
    }

    fn text(&self, index: usize) -> Result<String, Error> {
        self.get(index).map(|bytes| String::from_utf8_lossy(bytes).into_owned()).ok_or(Error::Internal)
    }

    fn bytes(&self, index: usize) -> Result<Vec<u8>, Error> {
        self.get(index).map(<[u8]>::to_vec).ok_or(Error::Internal)
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
enum Value {
    /// A bucket's theoretical arrival time.
    Bucket(Tat),
    /// A lease set: id -> deadline in ms.
    Leases(BTreeMap<Vec<u8>, u64>),
}

#[derive(Default)]
pub struct Keyspace(BTreeMap<String, Value>);

impl Keyspace {
    /// The TAT stored under `key`, if it holds a bucket.
    pub fn bucket(&self, key: &str) -> Option<Tat> {
        match self.0.get(key) {
            Some(Value::Bucket(tat)) => Some(*tat),
            _ => None,
        }
    }

    /// The keys that hold a bucket.
    pub fn buckets(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter(|(_, v)| matches!(v, Value::Bucket(_))).map(|(k, _)| k.as_str())
    }

    /// Leases of the set `key` live at `now_ms`.
    pub fn live_leases(&self, key: &str, now_ms: u64) -> usize {
        match self.0.get(key) {
            Some(Value::Leases(set)) => set.values().filter(|&&deadline| deadline > now_ms).count(),
            _ => 0,
        }
    }

    fn leases(&self, key: &str) -> Result<Option<&BTreeMap<Vec<u8>, u64>>, Error> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Leases(set)) => Ok(Some(set)),
            Some(Value::Bucket(_)) => Err(Error::WrongType),
        }
    }

    fn leases_mut(&mut self, key: &str) -> Result<Option<&mut BTreeMap<Vec<u8>, u64>>, Error> {
        match self.0.get_mut(key) {
            None => Ok(None),
            Some(Value::Leases(set)) => Ok(Some(set)),
            Some(Value::Bucket(_)) => Err(Error::WrongType),
        }
    }
}

impl Store for Keyspace {
    type Line = Line;
    type Key = String;

    fn open(&mut self, line: &Line, index: usize, _access: Access) -> Result<String, Error> {
        line.text(index)
    }

    fn read(&self, key: &String) -> Result<Option<Tat>, Error> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bucket(tat)) => Ok(Some(*tat)),
            Some(Value::Leases(_)) => Err(Error::WrongType),
        }
    }

    fn write(&mut self, key: &String, tat: &Tat) -> Result<(), Error> {
        self.0.insert(key.clone(), Value::Bucket(*tat));
        Ok(())
    }

    fn delete(&mut self, key: &String) -> Result<(), Error> {
        self.0.remove(key);
        Ok(())
    }
}

impl LeaseStore for Keyspace {
    fn read_leases(&self, key: &String, line: &Line, id_index: usize, now_ms: u64) -> Result<LeaseView, Error> {
        let Some(set) = self.leases(key)? else { return Ok(LeaseView::default()) };
        let live = set.values().filter(|&&deadline| deadline > now_ms).count();
        Ok(LeaseView {
            live: u64::try_from(live).map_err(|_| Error::Internal)?,
            expired: u64::try_from(set.len() - live).map_err(|_| Error::Internal)?,
            held: set.get(&line.bytes(id_index)?).copied(),
            last: set.values().max().copied(),
        })
    }

    fn live_deadline(&self, key: &String, now_ms: u64, rank: u64) -> Result<Option<u64>, Error> {
        let Some(set) = self.leases(key)? else { return Ok(None) };
        let mut live: Vec<u64> = set.values().copied().filter(|&deadline| deadline > now_ms).collect();
        live.sort_unstable();
        let index = usize::try_from(rank).map_err(|_| Error::Internal)?.checked_sub(1).ok_or(Error::Internal)?;
        Ok(live.get(index).copied())
    }

    fn purge_leases(&mut self, key: &String, now_ms: u64) -> Result<(), Error> {
        if let Some(set) = self.leases_mut(key)? {
            set.retain(|_, deadline| *deadline > now_ms);
        }
        Ok(())
    }

    fn put_lease(&mut self, key: &String, line: &Line, id_index: usize, deadline_ms: u64) -> Result<(), Error> {
        let id = line.bytes(id_index)?;
        match self.leases_mut(key)? {
            Some(set) => {
                set.insert(id, deadline_ms);
            }
            None => {
                self.0.insert(key.clone(), Value::Leases(BTreeMap::from([(id, deadline_ms)])));
            }
        }
        Ok(())
    }

    fn remove_lease(&mut self, key: &String, line: &Line, id_index: usize) -> Result<(), Error> {
        let id = line.bytes(id_index)?;
        if let Some(set) = self.leases_mut(key)? {
            set.remove(&id);
        }
        Ok(())
    }

    fn settle_leases(&mut self, key: &String, _last_before: Option<u64>) -> Result<(), Error> {
        if self.leases(key)?.is_some_and(BTreeMap::is_empty) {
            self.0.remove(key);
        }
        Ok(())
    }
}
