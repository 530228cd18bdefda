//! How the limiter's commands are spelled for the server at hand, apart from where they go
//! ([`super::topology`]): the module's own commands (`RL.CHECK key ...`), the Functions
//! library's functions (`FCALL rl_check 1 key ...`, Redis 7+ and Valkey), or the same library
//! run as a script (`EVALSHA sha 1 key rl_check ...`, Redis 6.2, where Functions are missing).
//! The arguments after the key count, the replies and the errors are the same in all three.
//!
//! Which one a gateway uses is `redis.backend`: `module`, `functions`, `scripts`, or `auto`,
//! which probes by calling (never `MODULE LIST` or `COMMAND`, which hosted services often
//! block): the module's `RL.PEEK`; else the library's `rl_version`, loading the library with
//! `FUNCTION LOAD REPLACE` when it is missing or older than the gateway's copy; else, where
//! `FUNCTION` is unknown or refused, the script (`SCRIPT LOAD`).

use std::sync::OnceLock;

/// The library, as the repository's `functions/ratelimit.lua`.
pub const LIBRARY: &str = include_str!("../../../../functions/ratelimit.lua");

/// The library's version (`local VERSION = '<n>'` in its source): a server holding an older
/// one gets this copy.
pub fn library_version() -> u64 {
    static VERSION: OnceLock<u64> = OnceLock::new();
    *VERSION.get_or_init(|| {
        LIBRARY
            .lines()
            .find_map(|line| line.strip_prefix("local VERSION = '")?.strip_suffix('\'')?.parse().ok())
            .unwrap_or(0)
    })
}

/// The library as a script for `EVAL`/`EVALSHA`: its shebang line (which `EVAL` refuses)
/// blanked, so line numbers in errors stay those of the file.
pub fn script_source() -> &'static str {
    static SCRIPT: OnceLock<String> = OnceLock::new();
    SCRIPT.get_or_init(|| match LIBRARY.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => format!("\n{rest}"),
        _ => LIBRARY.to_string(),
    })
}

/// The commands in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dialect {
    Module,
    Functions,
    /// The library run by `EVALSHA` with this SHA1.
    Script {
        sha: String,
    },
}

/// The names `gateway_redis_backend{backend}` and the log use.
pub const DIALECT_NAMES: [&str; 3] = ["module", "functions", "scripts"];

impl Dialect {
    pub fn name(&self) -> &'static str {
        match self {
            Dialect::Module => DIALECT_NAMES[0],
            Dialect::Functions => DIALECT_NAMES[1],
            Dialect::Script { .. } => DIALECT_NAMES[2],
        }
    }

    /// The module command `name` on `keys`, its other arguments written by `args`:
    /// `name key args` (`RL.CHECKALL numkeys keys args`), `FCALL function numkeys keys args`
    /// (`FCALL_RO` for `RL.PEEK`, which writes nothing), or `EVALSHA sha numkeys keys function
    /// args`.
    pub fn command(&self, name: &'static str, keys: &[&str], args: impl FnOnce(&mut redis::Cmd)) -> redis::Cmd {
        let mut cmd;
        match self {
            Dialect::Module => {
                cmd = redis::cmd(name);
                if name == "RL.CHECKALL" {
                    cmd.arg(keys.len());
                }
                cmd.arg(keys);
            }
            Dialect::Functions => {
                cmd = redis::cmd(if name == "RL.PEEK" { "FCALL_RO" } else { "FCALL" });
                cmd.arg(function_of(name)).arg(keys.len()).arg(keys);
            }
            Dialect::Script { sha } => {
                cmd = redis::cmd("EVALSHA");
                cmd.arg(sha.as_str()).arg(keys.len()).arg(keys).arg(function_of(name));
            }
        }
        args(&mut cmd);
        cmd
    }
}

/// The library's function for a module command.
pub fn function_of(command: &str) -> &'static str {
    match command {
        "RL.CHECK" => "rl_check",
        "RL.CHECKALL" => "rl_checkall",
        "RL.PEEK" => "rl_peek",
        "RL.REFUND" => "rl_refund",
        "RL.RESET" => "rl_reset",
        "CL.THROTTLE" => "cl_throttle",
        "RL.ACQUIRE" => "rl_acquire",
        "RL.RELEASE" => "rl_release",
        _ => "rl_renew",
    }
}

/// The server no longer has what this dialect calls (it restarted empty, or the library was
/// deleted, or its script cache flushed): the command did not run, so it can be sent again
/// once the library is back.
pub fn is_missing(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
        || e.detail().is_some_and(|detail| detail.starts_with("Function not found") || detail.contains("NOSCRIPT"))
}

/// The server does not know a command at all (`ERR unknown command 'FCALL'`, as Redis 6.2 says
/// of Functions, or of the module's commands where it is not loaded).
pub fn is_unknown_command(e: &redis::RedisError) -> bool {
    e.detail().is_some_and(|detail| detail.to_ascii_lowercase().starts_with("unknown command"))
}

/// The gateway's user may not run a command (`NOPERM`), or one the library calls inside
/// (Redis: `The user executing the script can't run this command or subcommand`; Valkey:
/// `ACL failure in script: User gw has no permissions to run the 'time' command`).
pub fn is_refused(e: &redis::RedisError) -> bool {
    e.code() == Some("NOPERM")
        || e.detail().is_some_and(|detail| {
            detail.starts_with("NOPERM")
                || detail.contains("can't run this command")
                || detail.starts_with("ACL failure in script")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).to_string(),
                _ => "<other>".to_string(),
            })
            .collect()
    }

    #[test]
    fn each_dialect_spells_a_command_with_the_same_arguments_after_the_key_count() {
        let args = |cmd: &mut redis::Cmd| {
            cmd.arg(5).arg(60).arg("COST").arg(2);
        };
        assert_eq!(
            words(&Dialect::Module.command("RL.CHECK", &["k"], args)),
            ["RL.CHECK", "k", "5", "60", "COST", "2"]
        );
        assert_eq!(
            words(&Dialect::Functions.command("RL.CHECK", &["k"], args)),
            ["FCALL", "rl_check", "1", "k", "5", "60", "COST", "2"]
        );
        assert_eq!(
            words(&Dialect::Script { sha: "abc".into() }.command("RL.CHECK", &["k"], args)),
            ["EVALSHA", "abc", "1", "k", "rl_check", "5", "60", "COST", "2"]
        );
        let spec = |cmd: &mut redis::Cmd| {
            cmd.arg(1).arg(2).arg(3).arg(4).arg(1).arg(2).arg(3).arg(4);
        };
        assert_eq!(
            words(&Dialect::Module.command("RL.CHECKALL", &["a", "b"], spec))[..4],
            ["RL.CHECKALL", "2", "a", "b"]
        );
        assert_eq!(
            words(&Dialect::Functions.command("RL.CHECKALL", &["a", "b"], spec))[..5],
            ["FCALL", "rl_checkall", "2", "a", "b"]
        );
        assert_eq!(words(&Dialect::Functions.command("RL.PEEK", &["k"], |_| {}))[..2], ["FCALL_RO", "rl_peek"]);
    }

    #[test]
    fn the_library_carries_its_version_and_its_script_keeps_its_line_numbers() {
        assert!(library_version() >= 1, "local VERSION = '<n>' in functions/ratelimit.lua");
        assert!(LIBRARY.starts_with("#!lua name=ratelimit\n"));
        assert!(script_source().starts_with('\n'));
        assert_eq!(script_source().lines().count(), LIBRARY.lines().count());
    }

    #[test]
    fn missing_library_unknown_commands_and_refusals_are_told_apart() {
        let error = |line: &str| {
            redis::parse_redis_value(format!("{line}\r\n").as_bytes()).unwrap().extract_error().unwrap_err()
        };
        assert!(is_missing(&error("-ERR Function not found")));
        assert!(is_missing(&error("-NOSCRIPT No matching script. Please use EVAL.")));
        assert!(!is_missing(&error("-ERR unknown command 'FCALL', with args beginning with: ")));
        assert!(is_unknown_command(&error("-ERR unknown command 'FCALL', with args beginning with: ")));
        assert!(is_unknown_command(&error("-ERR unknown command `FUNCTION`, with args beginning with: ")));
        assert!(is_refused(&error("-NOPERM User gw has no permissions to run the 'function|load' command")));
        assert!(is_refused(&error(
            "-ERR The user executing the script can't run this command or subcommand script: rl_peek, on @user_function:1."
        )));
        assert!(is_refused(&error(
            "-ERR ACL failure in script: User gw has no permissions to run the 'time' command script: rl_peek, on @user_function:1."
        )));
        assert!(!is_refused(&error("-ERR Function not found")));
    }
}
