//! Choosing the commands ([`Dialect`]) for `redis.backend`, on first use, and installing the
//! library where it is used: `module` uses the module's commands as they are; `functions`
//! checks the library's version (`FCALL_RO rl_version 0`) on every primary and loads this
//! gateway's copy (`FUNCTION LOAD REPLACE`) where it is missing or older; `scripts` loads the
//! script (`SCRIPT LOAD`) for `EVALSHA`; `auto` tries the module (`RL.PEEK` on a probe key),
//! then Functions, then scripts (where `FUNCTION` is unknown, Redis 6.2, or refused to the
//! gateway's user), and logs the choice. The choice shows in `gateway_redis_backend` and in
//! `/readyz`.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::dialect::{self, library_version, script_source, Dialect, LIBRARY};
use super::topology::Topology;
use super::{limiter_error, probe_key};
use crate::config::BackendChoice;
use crate::limiter::LimiterError;
use crate::metrics::metrics;

/// What the gateway's Redis user needs to run the library (and, with `+function|load`, to
/// load it): the calls, and every command the library calls inside them (Redis checks those
/// against the caller's ACL too). Keys: `~<key_prefix>*`. Scripts (EVALSHA) need `+evalsha
/// +script|load` instead of the first three.
pub const LIBRARY_ACL: &str = "+fcall +fcall_ro +function|load +time +get +set +del +exists +type +pexpireat \
     +zadd +zrem +zscore +zcard +zcount +zrangebyscore +zrevrangebyscore +zremrangebyscore";

/// What an administrator runs when the gateway's user may not load the library.
pub const LOAD_BY_HAND: &str = "gateway load-functions --redis-url redis://<admin user>:<password>@<host>:<port> \
     (or: redis-cli -x FUNCTION LOAD REPLACE < functions/ratelimit.lua)";

pub struct Chosen {
    choice: BackendChoice,
    current: RwLock<Option<Arc<Dialect>>>,
    /// Held while choosing or installing: one at a time, the others wait for its outcome.
    choosing: tokio::sync::Mutex<()>,
}

impl Chosen {
    pub fn new(choice: BackendChoice) -> Chosen {
        Chosen { choice, current: RwLock::new(None), choosing: tokio::sync::Mutex::new(()) }
    }

    /// The commands in use, once chosen.
    pub fn current(&self) -> Option<Arc<Dialect>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, dialect: Dialect) -> Arc<Dialect> {
        let dialect = Arc::new(dialect);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(dialect.clone());
        metrics().redis_backend(dialect.name());
        dialect
    }

    /// Chooses the commands (see the module's comment), within `timeout`.
    pub async fn choose(
        &self,
        topology: &Topology,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Arc<Dialect>, LimiterError> {
        let _choosing = self.choosing.lock().await;
        if let Some(dialect) = self.current() {
            return Ok(dialect);
        }
        let chosen = tokio::time::timeout(timeout, choose(self.choice, topology, prefix))
            .await
            .map_err(|_| LimiterError::Timeout(timeout))??;
        tracing::info!(
            backend = chosen.name(),
            configured = self.choice.name(),
            library_version = library_version(),
            "rate limiting with the {}",
            match chosen {
                Dialect::Module => "ratelimit module's commands",
                Dialect::Functions => "ratelimit Functions library (FCALL)",
                Dialect::Script { .. } => "ratelimit library as a script (EVALSHA)",
            }
        );
        Ok(self.set(chosen))
    }

    /// The library `failed` used went missing on the server (it restarted empty, or its
    /// scripts were flushed): installs it again, unless another call already did.
    pub async fn reinstall(
        &self,
        topology: &Topology,
        failed: &Arc<Dialect>,
        timeout: Duration,
    ) -> Result<Arc<Dialect>, LimiterError> {
        let _choosing = self.choosing.lock().await;
        if let Some(current) = self.current().filter(|current| !Arc::ptr_eq(current, failed)) {
            return Ok(current);
        }
        tracing::warn!(backend = failed.name(), "the ratelimit library is missing on Redis; loading it again");
        let installing = async {
            match **failed {
                Dialect::Script { .. } => load_script(topology).await,
                _ => install_functions(topology, true).await,
            }
        };
        let dialect = tokio::time::timeout(timeout, installing).await.map_err(|_| LimiterError::Timeout(timeout))??;
        Ok(self.set(dialect))
    }
}

async fn choose(choice: BackendChoice, topology: &Topology, prefix: &str) -> Result<Dialect, LimiterError> {
    match choice {
        BackendChoice::Module => Ok(Dialect::Module),
        BackendChoice::Functions => install_functions(topology, false).await,
        BackendChoice::Scripts => load_script(topology).await,
        BackendChoice::Auto => {
            let probe = probe_key(prefix);
            let peek = Dialect::Module.command("RL.PEEK", &[&probe], |cmd| {
                cmd.arg(1).arg(1);
            });
            match topology.send_to_key(peek, &probe).await {
                Ok(_) => return Ok(Dialect::Module),
                // The module is not loaded; any other answer (a refusal, an outage) is not a
                // reason to look further.
                Err(e) if dialect::is_unknown_command(&e) => {}
                Err(e) => return Err(limiter_error(e, &Dialect::Module)),
            }
            match install_functions(topology, false).await {
                Err(LimiterError::LibraryMissing(why)) => {
                    tracing::info!(reason = %why, "Redis Functions unusable here; using the library as a script");
                    load_script(topology).await
                }
                installed => installed,
            }
        }
    }
}

/// The version each primary's library answers (`FCALL_RO rl_version 0`): every leaf of the
/// reply (one server's, or a Cluster's map of them).
fn versions(value: &redis::Value, found: &mut Vec<u64>) {
    match value {
        redis::Value::BulkString(bytes) => {
            found.push(std::str::from_utf8(bytes).ok().and_then(|v| v.parse().ok()).unwrap_or(0))
        }
        redis::Value::SimpleString(text) => found.push(text.parse().unwrap_or(0)),
        redis::Value::Int(n) => found.push(u64::try_from(*n).unwrap_or(0)),
        redis::Value::Array(items) | redis::Value::Set(items) => items.iter().for_each(|v| versions(v, found)),
        redis::Value::Map(pairs) => pairs.iter().for_each(|(_, v)| versions(v, found)),
        _ => found.push(0),
    }
}

/// Loads the library where it is missing or older than this gateway's copy (`force`: in any
/// case). `LibraryMissing` when the server has no Functions, or refuses them to this user.
async fn install_functions(topology: &Topology, force: bool) -> Result<Dialect, LimiterError> {
    let ours = library_version();
    if !force {
        let mut version = redis::cmd("FCALL_RO");
        version.arg("rl_version").arg(0);
        match topology.everywhere(version, false).await {
            Ok(reply) => {
                let mut found = Vec::new();
                versions(&reply, &mut found);
                if !found.is_empty() && found.iter().all(|&v| v >= ours) {
                    return Ok(Dialect::Functions);
                }
            }
            Err(e) if dialect::is_missing(&e) => {}
            Err(e) if dialect::is_unknown_command(&e) => {
                return Err(LimiterError::LibraryMissing(format!("this Redis has no Functions (Redis 7+): {e}")))
            }
            Err(e) if dialect::is_refused(&e) => {
                return Err(LimiterError::LibraryMissing(format!("FCALL is refused to the gateway's Redis user: {e}")))
            }
            Err(e) => return Err(limiter_error(e, &Dialect::Functions)),
        }
    }
    let mut load = redis::cmd("FUNCTION");
    load.arg("LOAD").arg("REPLACE").arg(LIBRARY);
    match topology.everywhere(load, true).await {
        Ok(_) => {
            tracing::info!(version = ours, "loaded the ratelimit Functions library (FUNCTION LOAD REPLACE)");
            Ok(Dialect::Functions)
        }
        Err(e) if dialect::is_refused(&e) => Err(LimiterError::LibraryMissing(format!(
            "the gateway's Redis user may not load the ratelimit library ({e}); an administrator runs once: {LOAD_BY_HAND}"
        ))),
        Err(e) if dialect::is_unknown_command(&e) => {
            Err(LimiterError::LibraryMissing(format!("this Redis has no Functions (Redis 7+): {e}")))
        }
        Err(e) => Err(limiter_error(e, &Dialect::Functions)),
    }
}

/// `SCRIPT LOAD` of the library on every primary: its SHA1, for `EVALSHA`.
async fn load_script(topology: &Topology) -> Result<Dialect, LimiterError> {
    let mut load = redis::cmd("SCRIPT");
    load.arg("LOAD").arg(script_source());
    match topology.everywhere(load, true).await {
        Ok(redis::Value::BulkString(sha)) => Ok(Dialect::Script { sha: String::from_utf8_lossy(&sha).into_owned() }),
        Ok(redis::Value::SimpleString(sha)) => Ok(Dialect::Script { sha }),
        Ok(other) => Err(LimiterError::LibraryMissing(format!("SCRIPT LOAD answered {other:?}"))),
        Err(e) if dialect::is_refused(&e) => Err(LimiterError::LibraryMissing(format!(
            "the gateway's Redis user may run neither the ratelimit module, nor its Functions library, nor scripts \
             ({e}); allow EVALSHA and SCRIPT, or have an administrator load the library: {LOAD_BY_HAND}"
        ))),
        Err(e) => Err(limiter_error(e, &Dialect::Script { sha: String::new() })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_one_server_or_every_primary() {
        let mut found = Vec::new();
        versions(&redis::Value::BulkString(b"3".to_vec()), &mut found);
        assert_eq!(found, [3]);
        let mut found = Vec::new();
        let cluster = redis::Value::Map(vec![
            (redis::Value::SimpleString("a:1".into()), redis::Value::BulkString(b"2".to_vec())),
            (redis::Value::SimpleString("b:2".into()), redis::Value::BulkString(b"x".to_vec())),
        ]);
        versions(&cluster, &mut found);
        assert_eq!(found, [2, 0]);
    }
}
