//! Where command bodies keep limiter state: a small trait with two implementations, the Redis
//! keyspace (`ffi::Keyspace`, one open Redis key per [`Store::Key`]) and, in unit tests, an
//! in-memory map that records every write and delete (`store/memory.rs`).
//!
//! Command bodies are generic over it (monomorphised, never `dyn`) and take the clock reading
//! as a value, so the code that runs inside Redis is the code the unit tests run.

use crate::args::Args;
use crate::error::Error;
use crate::gcra::Tat;

#[cfg(test)]
pub mod memory;

/// How a command uses a key it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only reads it (RL.PEEK); writing or deleting it is refused.
    Read,
    /// Reads it and may write or delete it.
    Write,
}

/// Limiter state by key. Every method may fail with an [`Error`] that is sent as the reply;
/// the command bodies read and decide every key before their first write, so such an error
/// has changed nothing.
pub trait Store {
    /// The command line as this store receives it; keys are named by their position in it.
    type Line: Args + ?Sized;
    /// An open key.
    type Key;

    /// Opens the key named by argument `index` of `line`.
    fn open(&mut self, line: &Self::Line, index: usize, access: Access) -> Result<Self::Key, Error>;

    /// The stored TAT: `None` for a missing key, [`Error::WrongType`] for a value of another
    /// type, [`Error::NotLimiterState`] for a string that is not limiter state.
    fn read(&self, key: &Self::Key) -> Result<Option<Tat>, Error>;

    /// Stores `tat` with an absolute expiry at [`Tat::expiry_millis`], signals the change to
    /// WATCH and keyspace-event subscribers, and replicates exactly that effect
    /// (`SET key value PXAT ms`).
    fn write(&mut self, key: &Self::Key, tat: &Tat) -> Result<(), Error>;

    /// Deletes the key, signals it, and replicates `DEL key`.
    fn delete(&mut self, key: &Self::Key) -> Result<(), Error>;
}
