//! Where command bodies keep limiter state: a small trait with two implementations, the Redis
//! keyspace (`ffi::Keyspace`, one open Redis key per [`Store::Key`]) and, in unit tests, an
//! in-memory map that records every write and delete (`store/memory.rs`).
//!
//! Command bodies are generic over it (monomorphised, never `dyn`) and take the clock reading
//! as a value, so the code that runs inside Redis is the code the unit tests run.

use crate::args::Args;
use crate::error::Error;
use crate::gcra::Tat;
use crate::lease::LeaseView;

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

/// The lowest deadline a lease set may hold, in ms since the epoch (September 2001): every
/// deadline a server clock produces is later, while application sorted sets (scores,
/// counters, ranks) use smaller numbers, so they are refused as not lease state.
pub const MIN_DEADLINE_MS: f64 = 1e12;

/// The highest: 2^53, the last integer every double holds exactly.
pub const MAX_DEADLINE_MS: f64 = 9_007_199_254_740_992.0;

/// Whether a score read from a sorted set can be a lease deadline: an integer within
/// [`MIN_DEADLINE_MS`]..=[`MAX_DEADLINE_MS`]; then it is that many milliseconds.
pub fn deadline_of(score: f64) -> Option<u64> {
    // The range check first: it also refuses NaN and the infinities.
    if (MIN_DEADLINE_MS..=MAX_DEADLINE_MS).contains(&score) && score.fract() == 0.0 {
        // Exact: an integer below 2^53.
        Some(score as u64)
    } else {
        None
    }
}

/// Lease sets by key: a Redis sorted set with one member per lease id, scored by its
/// deadline in milliseconds since the epoch, plus the marker [`crate::lease::MARKER`] scored
/// [`crate::lease::MARKER_SCORE`] (0), written with the set's first lease. The lease commands'
/// ids are named by their position on the line, like keys.
///
/// A sorted set is taken as lease state only when it holds the marker scored 0 (one O(1)
/// lookup), no other member scored at or below 0, at most [`crate::lease::MAX_LEASES`] leases
/// (which the lease commands never exceed), and its lowest and highest lease scores are
/// deadlines ([`deadline_of`]); anything else, such as an application's log of millisecond
/// timestamps, is [`Error::NotLeaseState`], read before any write.
pub trait LeaseStore: Store {
    /// What the set holds at `now_ms` for the id at argument `id_index`: `Default` for a
    /// missing key, [`Error::WrongType`] for another type, [`Error::NotLeaseState`] for a
    /// sorted set that is not lease state.
    fn read_leases(&self, key: &Self::Key, line: &Self::Line, id_index: usize, now_ms: u64)
        -> Result<LeaseView, Error>;

    /// The deadline of the `rank`-th live lease at `now_ms` (1 = the earliest), if there are
    /// that many (a rank is at most [`crate::lease::MAX_LEASES`]). Only after [`Self::read_leases`].
    fn live_deadline(&self, key: &Self::Key, now_ms: u64, rank: u64) -> Result<Option<u64>, Error>;

    /// Removes every lease whose deadline is at or before `now_ms` (at most
    /// [`crate::lease::MAX_LEASES`]; never the marker), and replicates
    /// `ZREMRANGEBYSCORE key 1 now_ms`.
    fn purge_leases(&mut self, key: &Self::Key, now_ms: u64) -> Result<(), Error>;

    /// Stores the id at `id_index` with `deadline_ms`, and replicates `ZADD key deadline id`;
    /// on a missing key, creates the set with its marker: `ZADD key 0 <marker> deadline id`.
    fn put_lease(&mut self, key: &Self::Key, line: &Self::Line, id_index: usize, deadline_ms: u64)
        -> Result<(), Error>;

    /// Removes the id at `id_index`, and replicates `ZREM key id`.
    fn remove_lease(&mut self, key: &Self::Key, line: &Self::Line, id_index: usize) -> Result<(), Error>;

    /// Ends a call that changed the set: deletes the key when no lease is left (only the
    /// marker; replicates `DEL key`), else sets it to expire with its last lease
    /// (`PEXPIREAT key <highest deadline>`, replicated) unless that is still `last_before`.
    fn settle_leases(&mut self, key: &Self::Key, last_before: Option<u64>) -> Result<(), Error>;
}
