//! `RL.DEBUG PANIC`: panics on purpose, to prove the FFI guard turns a bug into an error
//! reply instead of aborting Redis. Registered only with the `debug-commands` module argument.

use crate::args::Args;
use crate::error::Error;
use crate::reply::Reply;
use crate::store::Store;

pub fn run<S: Store>(_store: &mut S, line: &S::Line, _now: u64) -> Result<Reply, Error> {
    match line.get(1) {
        Some(word) if word.eq_ignore_ascii_case(b"PANIC") => panic!("RL.DEBUG PANIC asked for a panic"),
        _ => Err(Error::Arity { usage: "RL.DEBUG PANIC" }),
    }
}
