//! The module's commands, sent from a test and answered as typed replies ([`crate::reply`]).
//!
//! Two families:
//! - [`check`], [`peek`] and [`tokens`] take a limiter's settings as numbers and always send
//!   both options (`COST`, `BURST`): for tests about the limiter, not the argument syntax;
//! - [`rl_check`], [`rl_peek`], [`rl_checkall`], [`rl_refund`] and [`cl_throttle`] send the
//!   arguments exactly as written (`&["k", "5", "1000", "cost", "4"]`, or any other
//!   [`redis::ToRedisArgs`]): for tests where the spelling, order or absence of an option is
//!   the point.
//!
//! Every helper panics with the command and the error when the server refuses it or the reply
//! does not decode; a test that expects an error sends the command itself and looks at it.

use redis::{ConnectionLike, FromRedisValue, ToRedisArgs};

use crate::reply::{AcquireReply, CheckAllReply, CheckReply, RefundReply, ThrottleReply};

/// `name args...`, decoded as `T` (as `FCALL` of the library's function where the library
/// stands in for the module, [`crate::functions::library_instead_of_module`]).
fn run<T: FromRedisValue>(con: &mut impl ConnectionLike, name: &str, args: impl ToRedisArgs) -> T {
    let mut cmd = redis::cmd(name);
    cmd.arg(args);
    if crate::functions::library_instead_of_module() {
        let line: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        cmd = crate::functions::command(&line, crate::functions::Dialect::Functions, "");
    }
    cmd.query(con).unwrap_or_else(|e| panic!("{}: {e}", describe(&cmd)))
}

/// A command line for failure messages, e.g. `RL.CHECK k 5 1000`.
pub(crate) fn describe(cmd: &redis::Cmd) -> String {
    cmd.args_iter()
        .map(|arg| match arg {
            redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            _ => "?".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `RL.CHECK args...`, the arguments as written.
pub fn rl_check(con: &mut impl ConnectionLike, args: impl ToRedisArgs) -> CheckReply {
    run(con, "RL.CHECK", args)
}

/// `RL.PEEK args...`, the arguments as written.
pub fn rl_peek(con: &mut impl ConnectionLike, args: impl ToRedisArgs) -> CheckReply {
    run(con, "RL.PEEK", args)
}

/// `RL.CHECKALL args...`, the arguments as written (`numkeys key... limit window cost burst...`).
pub fn rl_checkall(con: &mut impl ConnectionLike, args: impl ToRedisArgs) -> CheckAllReply {
    run(con, "RL.CHECKALL", args)
}

/// `RL.REFUND args...`, the arguments as written.
pub fn rl_refund(con: &mut impl ConnectionLike, args: impl ToRedisArgs) -> RefundReply {
    run(con, "RL.REFUND", args)
}

/// `RL.RESET key`: how many keys it removed (0 or 1).
pub fn rl_reset(con: &mut impl ConnectionLike, key: impl ToRedisArgs) -> u64 {
    run(con, "RL.RESET", key)
}

/// `CL.THROTTLE args...` (`key max_burst count_per_period period [quantity]`), as written.
pub fn cl_throttle(con: &mut impl ConnectionLike, args: impl ToRedisArgs) -> ThrottleReply {
    run(con, "CL.THROTTLE", args)
}

/// `RL.ACQUIRE key max lease_ms ID id`.
pub fn rl_acquire(con: &mut impl ConnectionLike, key: &str, max: u64, lease_ms: u64, id: &str) -> AcquireReply {
    run(con, "RL.ACQUIRE", (key, max, lease_ms, "ID", id))
}

/// `RL.RELEASE key id`: whether a live lease was released.
pub fn rl_release(con: &mut impl ConnectionLike, key: &str, id: &str) -> bool {
    run::<i64>(con, "RL.RELEASE", (key, id)) == 1
}

/// `RL.RENEW key id lease_ms`: whether a live lease was renewed.
pub fn rl_renew(con: &mut impl ConnectionLike, key: &str, id: &str, lease_ms: u64) -> bool {
    run::<i64>(con, "RL.RENEW", (key, id, lease_ms)) == 1
}

/// `RL.CHECK key limit window COST cost BURST burst`.
pub fn check(con: &mut impl ConnectionLike, key: &str, limit: u64, window: u64, cost: u64, burst: u64) -> CheckReply {
    rl_check(con, (key, limit, window, "COST", cost, "BURST", burst))
}

/// `RL.PEEK key limit window BURST burst`: what a cost-1 request would get, taking nothing.
pub fn peek(con: &mut impl ConnectionLike, key: &str, limit: u64, window: u64, burst: u64) -> CheckReply {
    rl_peek(con, (key, limit, window, "BURST", burst))
}

/// Whole tokens in the bucket now, by RL.PEEK ([`CheckReply::tokens`]).
pub fn tokens(con: &mut impl ConnectionLike, key: &str, limit: u64, window: u64, burst: u64) -> u64 {
    peek(con, key, limit, window, burst).tokens()
}
