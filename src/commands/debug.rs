//! `RL.DEBUG PANIC | CLOCK nanos | CLOCK REAL`: test hooks, registered only with the
//! `debug-commands` module argument (production configs never pass it).
//! - `PANIC` panics on purpose, to prove the FFI guard turns a bug into an error reply
//!   instead of aborting Redis.
//! - `CLOCK nanos` freezes the module's clock at `nanos` since the epoch (`REAL` thaws it),
//!   so that a test can run the module and the Functions library (`functions/ratelimit.lua`,
//!   given the same frozen clock) at the very same instant and compare them exactly.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::args::Args;
use crate::error::Error;
use crate::reply::Reply;
use crate::store::Store;

const USAGE: &str = "RL.DEBUG PANIC | RL.DEBUG CLOCK nanos | RL.DEBUG CLOCK REAL";

/// The frozen clock in nanoseconds; 0 while the server's clock is used.
static FROZEN_NANOS: AtomicU64 = AtomicU64::new(0);

/// The frozen clock, if `RL.DEBUG CLOCK` froze it.
pub fn frozen_clock() -> Option<u64> {
    match FROZEN_NANOS.load(Ordering::Relaxed) {
        0 => None,
        nanos => Some(nanos),
    }
}

pub fn run<S: Store>(_store: &mut S, line: &S::Line, _now: u64) -> Result<Reply, Error> {
    match (line.get(1), line.get(2), line.count()) {
        (Some(word), None, 2) if word.eq_ignore_ascii_case(b"PANIC") => panic!("RL.DEBUG PANIC asked for a panic"),
        (Some(word), Some(value), 3) if word.eq_ignore_ascii_case(b"CLOCK") => {
            let nanos = if value.eq_ignore_ascii_case(b"REAL") {
                0
            } else {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok())
                    .filter(|&nanos| nanos > 0 && nanos <= i64::MAX as u64)
                    .ok_or(Error::NotPositive { name: "nanos" })?
            };
            FROZEN_NANOS.store(nanos, Ordering::Relaxed);
            Ok(Reply::Int(1))
        }
        _ => Err(Error::Arity { usage: USAGE }),
    }
}
