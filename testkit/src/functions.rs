//! The Functions library (`functions/ratelimit.lua`): its source, loading it into a server, and
//! calling its functions with the module's command lines, so a test can run the same line on
//! either backend.
//!
//! For exact comparisons with the module, [`freeze_clock`] stops both clocks at the
//! same nanosecond: the module's with `RL.DEBUG CLOCK` (a server started with
//! `module_args("debug-commands")`), the library's by loading it with its `TIME` read
//! replaced by reads of two test keys ([`source_with_test_clock`]); nothing else in the
//! library is changed.

use std::path::PathBuf;

use redis::{ConnectionLike, Value};

/// Whether the tests run with the library in place of the module (`RL_TEST_BACKEND=functions`):
/// a server the harness would start with the module gets the library instead (loaded with
/// `FUNCTION LOAD`), and the typed commands ([`crate::commands`]) and [`crate::command_calls`]
/// of the module's commands call and count its functions. For running the gateway's suites
/// against a server without the module; the module's own tests never set it.
pub fn library_instead_of_module() -> bool {
    std::env::var("RL_TEST_BACKEND").is_ok_and(|backend| backend == "functions")
}

/// The library's source as the repository holds it.
pub fn source() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../functions/ratelimit.lua");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The keys the test clock is read from (seconds, microseconds), as `TIME` answers.
pub const TEST_CLOCK_KEYS: [&str; 2] = ["rl-test-clock:s", "rl-test-clock:us"];

/// The source with each `redis.call('TIME')` reading [`TEST_CLOCK_KEYS`] instead.
pub fn source_with_test_clock() -> String {
    let source = source();
    let time = "redis.call('TIME')";
    assert_eq!(source.matches(time).count(), 1, "the library reads TIME in one place");
    let test_time =
        format!("{{redis.call('GET', '{}'), redis.call('GET', '{}')}}", TEST_CLOCK_KEYS[0], TEST_CLOCK_KEYS[1]);
    source.replace(time, &test_time)
}

/// The source as a script for `EVAL`/`EVALSHA` (servers without Functions): the shebang line
/// blanked, everything else as it is.
pub fn script_source(source: &str) -> String {
    match source.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => format!("\n{rest}"),
        _ => source.to_string(),
    }
}

/// `FUNCTION LOAD REPLACE source`: the library's name.
pub fn load(con: &mut impl ConnectionLike, source: &str) -> String {
    redis::cmd("FUNCTION").arg("LOAD").arg("REPLACE").arg(source).query(con).unwrap()
}

/// The library's function for a module command, and how many of the line's words after the
/// name are keys (`None`: RL.CHECKALL, whose count is its first argument).
pub fn function_of(command: &str) -> (&'static str, Option<usize>) {
    match command.to_ascii_uppercase().as_str() {
        "RL.CHECK" => ("rl_check", Some(1)),
        "RL.CHECKALL" => ("rl_checkall", None),
        "RL.PEEK" => ("rl_peek", Some(1)),
        "RL.REFUND" => ("rl_refund", Some(1)),
        "RL.RESET" => ("rl_reset", Some(1)),
        "CL.THROTTLE" => ("cl_throttle", Some(1)),
        "RL.ACQUIRE" => ("rl_acquire", Some(1)),
        "RL.RELEASE" => ("rl_release", Some(1)),
        "RL.RENEW" => ("rl_renew", Some(1)),
        other => panic!("no library function for {other}"),
    }
}

/// How a module command line is sent to the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// The module's command as written.
    Module,
    /// `FCALL function numkeys key... args...` (`FCALL_RO` for RL.PEEK).
    Functions,
    /// `EVALSHA sha numkeys key... function args...`, the script loaded beforehand.
    Script,
}

/// The command that runs `line` (`[name, args...]`, a module command line) in `dialect`.
/// `sha` is the script's, for [`Dialect::Script`].
pub fn command(line: &[Vec<u8>], dialect: Dialect, sha: &str) -> redis::Cmd {
    let name = String::from_utf8_lossy(&line[0]).to_string();
    if dialect == Dialect::Module {
        let mut cmd = redis::cmd(&name);
        for word in &line[1..] {
            cmd.arg(word.as_slice());
        }
        return cmd;
    }
    let (function, keys) = function_of(&name);
    let rest = &line[1..];
    // RL.CHECKALL's numkeys becomes the call's key count; a line whose count is no number is
    // sent with none, and the library refuses it as the module does.
    let (numkeys, words): (usize, &[Vec<u8>]) = match keys {
        Some(n) => (n.min(rest.len()), rest),
        None => {
            let numkeys = rest
                .first()
                .and_then(|w| std::str::from_utf8(w).ok())
                .and_then(|w| w.parse::<usize>().ok())
                .filter(|&n| n < rest.len());
            match numkeys {
                Some(n) => (n, &rest[1..]),
                None => (0, rest),
            }
        }
    };
    let mut cmd = match dialect {
        Dialect::Functions if function == "rl_peek" => redis::cmd("FCALL_RO"),
        Dialect::Functions => redis::cmd("FCALL"),
        _ => redis::cmd("EVALSHA"),
    };
    match dialect {
        Dialect::Script => {
            cmd.arg(sha).arg(numkeys);
            for key in &words[..numkeys] {
                cmd.arg(key.as_slice());
            }
            cmd.arg(function);
        }
        _ => {
            cmd.arg(function).arg(numkeys);
            for key in &words[..numkeys] {
                cmd.arg(key.as_slice());
            }
        }
    }
    for word in &words[numkeys..] {
        cmd.arg(word.as_slice());
    }
    cmd
}

/// Runs `cmd` and returns its reply, an error reply as `Value::ServerError`'s text in a
/// `SimpleString` prefixed `ERROR: ` (so replies and errors compare as one value).
pub fn reply(con: &mut impl ConnectionLike, cmd: &redis::Cmd) -> Value {
    match con.req_command(cmd) {
        Ok(Value::ServerError(e)) => Value::SimpleString(format!("ERROR: {}", error_text(&e.into()))),
        Ok(value) => value,
        Err(e) => Value::SimpleString(format!("ERROR: {}", error_text(&e))),
    }
}

/// An error reply's whole text, code first (`ERR ...`, `WRONGTYPE ...`).
pub fn error_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => e.to_string(),
    }
}

/// Freezes the module's clock (`RL.DEBUG CLOCK`) and the test clock of a library loaded from
/// [`source_with_test_clock`] at `nanos` (a multiple of 1000: the library's clock is TIME's
/// microseconds).
pub fn freeze_clock(con: &mut impl ConnectionLike, nanos: u64) {
    assert_eq!(nanos % 1000, 0, "TIME has microseconds");
    let micros = nanos / 1000;
    let _: () = redis::cmd("MSET")
        .arg(TEST_CLOCK_KEYS[0])
        .arg(micros / 1_000_000)
        .arg(TEST_CLOCK_KEYS[1])
        .arg(micros % 1_000_000)
        .query(con)
        .unwrap();
    let _: i64 = redis::cmd("RL.DEBUG").arg("CLOCK").arg(nanos).query(con).unwrap();
}
