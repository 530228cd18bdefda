//! `RL.DEBUG PANIC`: panics on purpose, to prove the FFI guard turns a bug into an error
//! reply instead of aborting Redis. Registered only with the `debug-commands` module argument.

use crate::args::Args;
use crate::error::Error;
use crate::ffi::{Ctx, RawArgs, Reply};

pub fn run(_ctx: Ctx, args: &RawArgs) -> Result<Reply, Error> {
    match args.get(1) {
        Some(word) if word.eq_ignore_ascii_case(b"PANIC") => panic!("RL.DEBUG PANIC asked for a panic"),
        _ => Err(Error::Arity { usage: "RL.DEBUG PANIC" }),
    }
}
