//! An in-memory [`Store`] for unit tests: a map from key names to values, plus the list of
//! effects a Redis server would have replicated (`SET key value PXAT ms`, `DEL key`). Values
//! are stored encoded, exactly as Redis holds them, so reads go through the same strict
//! decoder as in the server.

use std::collections::BTreeMap;

use super::{Access, Store};
use crate::args::Args;
use crate::error::Error;
use crate::gcra::Tat;
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string value: limiter state, or anything an application stored.
    String(Vec<u8>),
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
}

#[derive(Default)]
pub struct Memory {
    values: BTreeMap<Vec<u8>, Value>,
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
            Some(Value::Other) => Err(Error::WrongType),
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
        self.effects.push(Effect::Del { key: String::from_utf8_lossy(&key.name).into_owned() });
        Ok(())
    }
}
