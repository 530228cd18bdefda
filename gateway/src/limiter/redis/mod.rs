//! The Redis behind [`RedisLimiter`]: one round trip per request (`RL.CHECK key limit window
//! COST cost BURST burst` for a policy with one limit, `RL.CHECKALL n key... (limit window
//! cost burst)...` for several, all charged or none), and the settlements and leases around
//! it. This module spells the commands and reads their replies; [`connection`] holds the
//! connections (one server, the primary Sentinel names ([`sentinel`]), or a Cluster), whose
//! I/O runs on a thread of its own. Keys are `<prefix>{<identity-hash>}:<policy>:<limit>`: the
//! hash tag puts all of one caller's limits in one slot, and a command goes to the primary of
//! its first key.
//!
//! **No command is ever sent twice** when it may have reached Redis: a retry could charge
//! twice (see [`connection`]).
//!
//! **A call the gateway gave up on takes nothing.** A call that gets no answer within
//! `redis.timeout_ms` fails (the request is answered as `failure_mode` says), but the command
//! may still run: Redis may be paused, or its reply slow. The gateway keeps listening for that
//! reply for [`LATE_REPLY_WAIT`], and when it says a check admitted (tokens taken) or a lease
//! was acquired, it gives them back (`RL.REFUND`, `RL.RELEASE`): a request answered `503` (or
//! forwarded unmetered) is not charged. Only a reply that never comes (the connection broke,
//! or Redis stayed away that long) leaves the outcome unknown: the command may have run once.

pub mod choose;
mod connection;
pub mod dialect;
mod sentinel;
mod topology;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::{ErrorKind, ServerErrorKind};
use rl_protocol::{AcquireReply, CheckAllReply, CheckReply, RefundReply};

use self::choose::Chosen;
use self::connection::io;
use self::dialect::Dialect;
use self::topology::Topology;
use super::{LimiterError, RateLimiter};
use crate::config::{Policy, Quota, RedisSettings};
use crate::lease::{Slot, CONCURRENT_NAME};
use crate::log_limit::{info_every, warn_every};
use crate::metrics::metrics;

/// The Redis client could not be set up from a setting (a URL it refuses, for instance).
#[derive(Debug)]
pub struct ClientError {
    /// The setting and, for one server, its URL (password hidden).
    pub setting: String,
    pub source: redis::RedisError,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.source)
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// How long a call the gateway gave up on is still listened to (see the module's comment).
/// Also the connections' own bound on a reply: one that never comes is given up then.
pub const LATE_REPLY_WAIT: Duration = Duration::from_secs(10);

/// The most calls listened to after their timeout at once (each holds a small task): beyond,
/// a late reply is not waited for, and the outcome is counted as unknown.
const MAX_LATE_CALLS: usize = 10_000;

/// Commands a connection queues for its writer (see [`RedisLimiter::new`]): more than the
/// requests a gateway holds at once (`max_connections`), each with a few calls.
const COMMAND_QUEUE: usize = 1 << 16;

/// Command retries of the cluster client: none. `RL.CHECK` is not idempotent, and a retry
/// after a dropped connection may run it a second time (the first may have been applied), so a
/// request could be charged twice. A `MOVED` after a resharding therefore fails that one
/// request (answered per `failure_mode`) while the client refreshes its slot map; the next
/// request goes to the right node.
pub const CLUSTER_COMMAND_RETRIES: u32 = 0;

/// Whether Redis ran the command and the module (or the library) refused it: `ERR` about its arguments (out of
/// the module's bounds) or about the value stored at the key (another type, `WRONGTYPE`, or a
/// string that is not limiter state). Redis answered, so this is no outage, and the same
/// command would be refused again. `ERR unknown command` (the module is not loaded) is not
/// one: that is a server the gateway cannot use, as when it is down.
fn is_module_refusal(e: &redis::RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::ResponseError) => !is_unknown_command(e),
        ErrorKind::Extension => e.code() == Some("WRONGTYPE"),
        _ => false,
    }
}

fn limiter_error(e: redis::RedisError, dialect: &Dialect) -> LimiterError {
    let missing = is_unknown_command(&e) || dialect::is_missing(&e);
    if missing && *dialect == Dialect::Module {
        LimiterError::ModuleMissing(e)
    } else if missing {
        LimiterError::LibraryMissing(e.to_string())
    } else if *dialect != Dialect::Module && dialect::is_refused(&e) {
        LimiterError::LibraryMissing(format!(
            "the gateway's Redis user may not run a command the library calls ({e}); it needs {}",
            choose::LIBRARY_ACL
        ))
    } else if is_module_refusal(&e) {
        LimiterError::Rejected(e)
    } else {
        LimiterError::Redis(e)
    }
}

/// Why a command got no reply.
enum Failed {
    /// An error reply, or a broken connection.
    Redis(redis::RedisError),
    /// No connection, or no reply, within this long.
    Timeout(Duration),
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failed::Redis(e) => write!(f, "{e}"),
            Failed::Timeout(limit) => write!(f, "no connection or no reply within {} ms", limit.as_millis()),
        }
    }
}

fn is_unknown_command(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && e.detail().is_some_and(|detail| detail.starts_with("unknown command"))
}

/// What a call takes, given back when its reply comes after the gateway gave up on it.
struct Undo {
    /// The call's name in `gateway_redis_late_replies_total`.
    command: &'static str,
    give_back: GiveBack,
}

enum GiveBack {
    /// A check (RL.CHECK, RL.CHECKALL) that admitted: `RL.REFUND` of each cost on its key.
    Tokens(Vec<(String, Quota, u64)>),
    /// An RL.ACQUIRE that acquired: `RL.RELEASE` of the lease.
    Lease { key: String, id: String },
}

/// Whether a reply says the command took something: RL.CHECK's, RL.CHECKALL's and
/// RL.ACQUIRE's replies all begin with `1` when it did (admitted, acquired).
fn took_something(reply: &redis::Value) -> bool {
    matches!(reply, redis::Value::Array(items) if matches!(items.first(), Some(redis::Value::Int(1))))
}

#[derive(Clone)]
pub struct RedisLimiter {
    topology: Topology,
    /// The commands in use (`redis.backend`), chosen on first use.
    chosen: Arc<Chosen>,
    /// The longest a call waits for a connection to be made (none is sent meanwhile).
    connect_timeout: Duration,
    /// The longest a call waits for its reply once sent.
    timeout: Duration,
    prefix: String,
}

impl RedisLimiter {
    /// Sets up the connection without waiting for Redis: the gateway starts (and `/readyz`
    /// reports not ready) while Redis is still coming up.
    pub fn new(settings: &RedisSettings) -> Result<Self, ClientError> {
        Ok(RedisLimiter {
            topology: Topology::new(settings)?,
            chosen: Arc::new(Chosen::new(settings.backend)),
            connect_timeout: settings.connect_timeout,
            timeout: settings.timeout,
            prefix: settings.key_prefix.clone(),
        })
    }

    /// The Redis key of one limit of one identity under one policy.
    pub fn key(&self, policy: &Policy, quota: &Quota, identity_hash: &str) -> String {
        key(&self.prefix, policy, quota, identity_hash)
    }

    /// Runs the command `build` spells for the commands in use and decodes its answer (an
    /// error reply is a Redis error, or a refusal by the module or library; an answer of the
    /// wrong shape a [`LimiterError::Reply`]). Waits up to `connect_timeout` for a
    /// connection, then `timeout` for the reply; a call that times out after it was sent is
    /// listened to for its late reply, and what it took is given back (`undo`). A call the
    /// server could not run because the library is missing there (it restarted empty, its
    /// script cache was flushed) ran nothing: the library is installed again and the command
    /// sent once more.
    async fn query<T: redis::FromRedisValue>(
        &self,
        build: impl Fn(&Dialect) -> redis::Cmd,
        key: &str,
    ) -> Result<T, LimiterError> {
        self.query_undoable(build, key, None::<fn() -> Undo>).await
    }

    /// [`RedisLimiter::query`] of a command that takes something: `undo` says what, and is
    /// made only when the call times out (the hot path clones no key for it).
    async fn query_undoable<T: redis::FromRedisValue>(
        &self,
        build: impl Fn(&Dialect) -> redis::Cmd,
        key: &str,
        undo: Option<impl Fn() -> Undo>,
    ) -> Result<T, LimiterError> {
        let dialect = self.dialect().await?;
        let value = match self.send(build(&dialect), key, undo.as_ref()).await {
            Err(Failed::Redis(e)) if *dialect != Dialect::Module && dialect::is_missing(&e) => {
                let dialect = self.chosen.reinstall(&self.topology, &dialect, self.setup_timeout()).await?;
                self.send(build(&dialect), key, undo.as_ref()).await
            }
            sent => sent,
        };
        match value {
            Ok(value) => T::from_redis_value(value).map_err(LimiterError::Reply),
            Err(Failed::Redis(e)) => Err(limiter_error(e, &dialect)),
            Err(Failed::Timeout(limit)) => Err(LimiterError::Timeout(limit)),
        }
    }

    /// The commands in use, chosen (and the library installed) now if need be.
    async fn dialect(&self) -> Result<Arc<Dialect>, LimiterError> {
        match self.chosen.current() {
            Some(dialect) => Ok(dialect),
            None => self.chosen.choose(&self.topology, &self.prefix, self.setup_timeout()).await,
        }
    }

    /// The longest choosing the commands and installing the library may take.
    fn setup_timeout(&self) -> Duration {
        self.connect_timeout + 4 * self.timeout.max(Duration::from_millis(250))
    }

    /// Sends `cmd` once: its reply, or why there is none.
    async fn send(&self, cmd: redis::Cmd, key: &str, undo: Option<&impl Fn() -> Undo>) -> Result<redis::Value, Failed> {
        let ready = match tokio::time::timeout(self.connect_timeout, self.topology.ready()).await {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => return Err(Failed::Redis(e)),
            Err(_) => return Err(Failed::Timeout(self.connect_timeout)),
        };
        let sent = Arc::new(AtomicBool::new(false));
        let mut call = ready.send_call(cmd, key, sent.clone());
        match tokio::time::timeout(self.timeout, &mut call.future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failed::Redis(e)),
            Err(_) => {
                call.timed_out();
                if let Some(undo) = undo.filter(|_| sent.load(Ordering::Relaxed)) {
                    self.listen_late(call.future, undo());
                }
                Err(Failed::Timeout(self.timeout))
            }
        }
    }

    /// Waits (on the Redis I/O thread) for the reply of a call the caller gave up on, and gives
    /// back what it took.
    fn listen_late(&self, call: BoxFuture<'static, redis::RedisResult<redis::Value>>, undo: Undo) {
        static LISTENING: AtomicUsize = AtomicUsize::new(0);
        if LISTENING.fetch_add(1, Ordering::Relaxed) >= MAX_LATE_CALLS {
            LISTENING.fetch_sub(1, Ordering::Relaxed);
            metrics().late_reply(undo.command, "unknown");
            return;
        }
        let this = self.clone();
        io().spawn(async move {
            let outcome = match tokio::time::timeout(LATE_REPLY_WAIT, call).await {
                Ok(Ok(reply)) if took_something(&reply) => match this.give_back(undo.give_back).await {
                    true => "given_back",
                    false => "give_back_failed",
                },
                Ok(Ok(_)) => "nothing_taken",
                Ok(Err(_)) | Err(_) => "unknown",
            };
            LISTENING.fetch_sub(1, Ordering::Relaxed);
            info_every!(command = undo.command, outcome, "late reply of a call that had timed out");
            metrics().late_reply(undo.command, outcome);
        });
    }

    /// Gives back what a timed-out call took; whether all of it surely was. Nobody waits on
    /// this, and the link that was too slow for the call is likely slow still, so each give-back
    /// has up to [`LATE_REPLY_WAIT`]: to find a connection (trying again while it cannot, since
    /// nothing was sent then) and for its reply. It is sent once, like every command: one whose
    /// reply never comes leaves the charge unknown (counted `give_back_failed`), never given
    /// back twice.
    async fn give_back(&self, give_back: GiveBack) -> bool {
        let dialect = match self.dialect().await {
            Ok(dialect) => dialect,
            Err(e) => {
                warn_every!(error = %e, "could not give back what a timed-out call took");
                return false;
            }
        };
        match give_back {
            GiveBack::Tokens(costs) => {
                let mut all = true;
                for (key, quota, cost) in costs.into_iter().filter(|(_, _, cost)| *cost > 0) {
                    let refund = refund_cmd(&dialect, &key, &quota, cost);
                    let given = self.send_patiently(refund, &key, LATE_REPLY_WAIT).await;
                    if let Err(e) = given.and_then(|value| {
                        <RefundReply as redis::FromRedisValue>::from_redis_value(value)
                            .map(drop)
                            .map_err(|e| Failed::Redis(e.into()))
                    }) {
                        warn_every!(error = %e, %key, cost, "could not give back what a timed-out check took");
                        all = false;
                    }
                }
                all
            }
            GiveBack::Lease { key, id } => {
                match self.send_patiently(release_cmd(&dialect, &key, &id), &key, LATE_REPLY_WAIT).await {
                    Ok(_) => true,
                    Err(e) => {
                        warn_every!(error = %e, %key, %id, "could not release the lease a timed-out call took; it ends by itself");
                        false
                    }
                }
            }
        }
    }

    /// Sends `cmd` once, as soon as there is a connection for it, and waits for its reply,
    /// all within `patience`. While no connection can be had (or the command failed before it
    /// was handed to one), nothing was sent, so it tries again every [`PATIENT_RETRY`].
    async fn send_patiently(&self, cmd: redis::Cmd, key: &str, patience: Duration) -> Result<redis::Value, Failed> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let not_sent = match tokio::time::timeout(left.min(self.connect_timeout), self.topology.ready()).await {
                Ok(Ok(ready)) => {
                    let sent = Arc::new(AtomicBool::new(false));
                    let mut call = ready.send_call(cmd.clone(), key, sent.clone());
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match tokio::time::timeout(left, &mut call.future).await {
                        Ok(Ok(value)) => return Ok(value),
                        Ok(Err(e)) if !sent.load(Ordering::Relaxed) => Failed::Redis(e),
                        Ok(Err(e)) => return Err(Failed::Redis(e)),
                        Err(_) => {
                            call.timed_out();
                            return Err(Failed::Timeout(patience));
                        }
                    }
                }
                Ok(Err(e)) => Failed::Redis(e),
                Err(_) => Failed::Timeout(self.connect_timeout),
            };
            if tokio::time::Instant::now() + PATIENT_RETRY >= deadline {
                return Err(not_sent);
            }
            tokio::time::sleep(PATIENT_RETRY).await;
        }
    }
}

/// How often [`RedisLimiter::send_patiently`] tries again to find a connection.
const PATIENT_RETRY: Duration = Duration::from_millis(100);

/// `RL.REFUND key limit window amount BURST burst`.
fn refund_cmd(dialect: &Dialect, key: &str, q: &Quota, tokens: u64) -> redis::Cmd {
    dialect.command("RL.REFUND", &[key], |cmd| {
        cmd.arg(q.limit).arg(q.window).arg(amount(tokens)).arg("BURST").arg(q.burst);
    })
}

/// `RL.RELEASE key id`.
fn release_cmd(dialect: &Dialect, key: &str, id: &str) -> redis::Cmd {
    dialect.command("RL.RELEASE", &[key], |cmd| {
        cmd.arg(id);
    })
}

/// A count of tokens as the module takes it: an integer up to `i64::MAX`. A larger one (an
/// LLM request with `max_tokens` near 2^64, a model reporting absurd usage) is sent as
/// `i64::MAX`, which the module answers exactly as it would the real amount: a check can
/// never fit (refused, never admitted), a forced charge is capped at one burst of debt, a
/// refund fills the bucket. Sending it unchanged would get an argument error instead.
fn amount(tokens: u64) -> u64 {
    tokens.min(i64::MAX.unsigned_abs())
}

/// The key `/readyz` (and the choice of commands) peeks at: never written.
pub fn probe_key(prefix: &str) -> String {
    format!("{prefix}__readyz__")
}

/// `<prefix>{<identity-hash>}:<policy>:<limit>`, e.g. `rl:{3fa9...}:chat:tokens`.
pub fn key(prefix: &str, policy: &Policy, quota: &Quota, identity_hash: &str) -> String {
    format!("{prefix}{{{identity_hash}}}:{}:{}", policy.name, quota.name)
}

/// The lease set of `slot`: `<prefix>{<identity-hash>}:<policy>:concurrent` (the caller's
/// Cluster slot) or `<prefix>upstream:concurrent` (one key for the whole fleet).
pub fn lease_key(prefix: &str, slot: &Slot) -> String {
    match slot {
        Slot::Caller { policy, identity_hash } => format!("{prefix}{{{identity_hash}}}:{policy}:{CONCURRENT_NAME}"),
        Slot::Upstream => format!("{prefix}upstream:{CONCURRENT_NAME}"),
    }
}

impl RateLimiter for RedisLimiter {
    async fn check(&self, policy: &Policy, identity_hash: &str, costs: &[u64]) -> Result<CheckAllReply, LimiterError> {
        let keys: Vec<String> = policy.limits.iter().map(|q| self.key(policy, q, identity_hash)).collect();
        let first = keys.first().cloned().unwrap_or_default();
        let cost = |i: usize| amount(costs.get(i).copied().unwrap_or(1));
        let undo = |command| {
            let keys = &keys;
            move || Undo {
                command,
                give_back: GiveBack::Tokens(
                    keys.iter()
                        .zip(&policy.limits)
                        .enumerate()
                        .map(|(i, (k, q))| (k.clone(), q.clone(), cost(i)))
                        .collect(),
                ),
            }
        };
        match policy.limits.as_slice() {
            [q] => {
                let build = |d: &Dialect| {
                    d.command("RL.CHECK", &[&first], |cmd| {
                        cmd.arg(q.limit).arg(q.window).arg("COST").arg(cost(0)).arg("BURST").arg(q.burst);
                    })
                };
                let reply: CheckReply = self.query_undoable(build, &first, Some(undo("check"))).await?;
                Ok(CheckAllReply { allowed: reply.allowed, retry_after_ms: reply.retry_after_ms, limits: vec![reply] })
            }
            limits => {
                let names: Vec<&str> = keys.iter().map(String::as_str).collect();
                let build = |d: &Dialect| {
                    d.command("RL.CHECKALL", &names, |cmd| {
                        for (i, q) in limits.iter().enumerate() {
                            cmd.arg(q.limit).arg(q.window).arg(cost(i)).arg(q.burst);
                        }
                    })
                };
                self.query_undoable(build, &first, Some(undo("checkall"))).await
            }
        }
    }

    async fn refund(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        tokens: u64,
    ) -> Result<RefundReply, LimiterError> {
        let q = policy.limits.get(index).ok_or(LimiterError::NoSuchLimit(index))?;
        let key = self.key(policy, q, identity_hash);
        self.query(|d| refund_cmd(d, &key, q, tokens), &key).await
    }

    async fn force(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        tokens: u64,
    ) -> Result<CheckReply, LimiterError> {
        let q = policy.limits.get(index).ok_or(LimiterError::NoSuchLimit(index))?;
        let key = self.key(policy, q, identity_hash);
        let build = |d: &Dialect| {
            d.command("RL.CHECK", &[&key], |cmd| {
                cmd.arg(q.limit).arg(q.window).arg("COST").arg(amount(tokens)).arg("BURST").arg(q.burst).arg("FORCE");
            })
        };
        self.query(build, &key).await
    }

    async fn check_shared(&self, quota: &Quota, cost: u64, keep: u64) -> Result<CheckReply, LimiterError> {
        let key = format!("{}upstream:{}", self.prefix, quota.name);
        let build = |d: &Dialect| {
            d.command("RL.CHECK", &[&key], |cmd| {
                cmd.arg(quota.limit).arg(quota.window).arg("COST").arg(amount(cost)).arg("BURST").arg(quota.burst);
                cmd.arg("KEEP").arg(amount(keep));
            })
        };
        let undo =
            || Undo { command: "check_shared", give_back: GiveBack::Tokens(vec![(key.clone(), quota.clone(), cost)]) };
        self.query_undoable(build, &key, Some(undo)).await
    }

    async fn acquire(&self, slot: &Slot, max: u64, lease_ms: u64, id: &str) -> Result<AcquireReply, LimiterError> {
        let key = lease_key(&self.prefix, slot);
        let build = |d: &Dialect| {
            d.command("RL.ACQUIRE", &[&key], |cmd| {
                cmd.arg(max).arg(lease_ms).arg("ID").arg(id);
            })
        };
        let undo = || Undo { command: "acquire", give_back: GiveBack::Lease { key: key.clone(), id: id.to_string() } };
        self.query_undoable(build, &key, Some(undo)).await
    }

    async fn release(&self, slot: &Slot, id: &str) -> Result<bool, LimiterError> {
        let key = lease_key(&self.prefix, slot);
        self.query::<i64>(|d| release_cmd(d, &key, id), &key).await.map(|n| n == 1)
    }

    async fn renew(&self, slot: &Slot, id: &str, lease_ms: u64) -> Result<bool, LimiterError> {
        let key = lease_key(&self.prefix, slot);
        let build = |d: &Dialect| {
            d.command("RL.RENEW", &[&key], |cmd| {
                cmd.arg(id).arg(lease_ms);
            })
        };
        self.query::<i64>(build, &key).await.map(|n| n == 1)
    }

    /// A read-only `RL.PEEK` on a probe key: Redis answers and has the module (or the
    /// library, whichever is in use).
    async fn ready(&self) -> Result<(), LimiterError> {
        let probe = probe_key(&self.prefix);
        let build = |d: &Dialect| {
            d.command("RL.PEEK", &[&probe], |cmd| {
                cmd.arg(1).arg(1);
            })
        };
        let _: CheckReply = self.query(build, &probe).await?;
        Ok(())
    }

    fn backend(&self) -> Option<&'static str> {
        self.chosen.current().map(|dialect| dialect.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a server sends as `line` (RESP, e.g. `-ERR ...`).
    fn server_error(line: &str) -> redis::RedisError {
        let value = redis::parse_redis_value(format!("{line}\r\n").as_bytes()).unwrap();
        value.extract_error().unwrap_err()
    }

    #[test]
    fn only_the_module_s_own_refusals_count_as_refusals_not_outages() {
        for refusal in [
            "-ERR cost must be a non-negative integer",
            "-ERR burst * window / limit must not exceed 100 years",
            "-ERR key holds a string that is not rate-limiter state; it was left unchanged",
            "-WRONGTYPE Operation against a key holding the wrong kind of value",
        ] {
            assert!(is_module_refusal(&server_error(refusal)), "{refusal}");
        }
        for outage in [
            "-ERR unknown command 'RL.CHECK', with args beginning with: 'k'",
            "-LOADING Redis is loading the dataset in memory",
            "-READONLY You can't write against a read only replica.",
            "-OOM command not allowed when used memory > 'maxmemory'.",
            "-BUSY Redis is busy running a script.",
            "-NOPERM User gw has no permissions to run the 'rl.check' command",
            "-MASTERDOWN Link with MASTER is down",
        ] {
            assert!(!is_module_refusal(&server_error(outage)), "{outage}");
        }
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!is_module_refusal(&io));
    }

    #[test]
    fn amounts_beyond_what_the_module_takes_are_sent_as_its_largest() {
        assert_eq!(amount(5), 5);
        assert_eq!(amount(i64::MAX as u64), i64::MAX as u64);
        assert_eq!(amount(u64::MAX), i64::MAX as u64);
    }
}

/// Known answers for the Redis key names, the digests in them computed outside this code
/// (see `identity::known_answers`): renaming a key gives every caller a fresh bucket on deploy.
/// `tests/keys.rs` finds the same names in a real Redis behind a real gateway.
#[cfg(test)]
mod known_answers {
    use super::*;
    use crate::identity::{Hasher, Identity};

    #[test]
    fn key_names_of_each_kind() {
        let hash = Hasher::new(b"known-answer-secret").hash(&Identity::ApiKey(b"known-answer-key".to_vec()));
        let mut policy = Policy::simple("chat", &["/v1/chat/completions"], 100, 60, 100);
        policy.limits.push(Quota { name: "tokens".into(), ..policy.limits[0].clone() });
        let names: Vec<String> = policy.limits.iter().map(|q| key("rl:", &policy, q, &hash)).collect();
        assert_eq!(
            names,
            [
                "rl:{23a75a9f55bc2c3151ebeb5a22e31c51}:chat:requests",
                "rl:{23a75a9f55bc2c3151ebeb5a22e31c51}:chat:tokens"
            ]
        );
        let caller = Slot::Caller { policy: "chat".into(), identity_hash: hash.clone() };
        assert_eq!(lease_key("rl:", &caller), "rl:{23a75a9f55bc2c3151ebeb5a22e31c51}:chat:concurrent");
        assert_eq!(lease_key("rl:", &Slot::Upstream), "rl:upstream:concurrent");
        assert_eq!(lease_key("test:", &Slot::Upstream), "test:upstream:concurrent");
        assert_eq!(key("", &policy, &policy.limits[0], &hash), "{23a75a9f55bc2c3151ebeb5a22e31c51}:chat:requests");
    }
}
