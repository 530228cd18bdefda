//! The one Redis round trip per request: `RL.CHECK key limit window COST cost BURST burst` for
//! a policy with one limit, `RL.CHECKALL n key... (limit window cost burst)...` for several
//! (all charged or none), over a multiplexed connection that reconnects by itself: to one
//! server, to a Redis Cluster, or to the primary Redis Sentinel names (asked again whenever a
//! command fails in a way that may mean the primary changed). Keys are `<prefix>{<identity-hash>}:<policy>:<limit>`: the
//! hash tag puts all of one caller's limits in one slot, and the cluster client routes the
//! command by its first key. No command is ever retried: a retry could charge twice.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ErrorKind, IntoConnectionInfo, ProtocolVersion, PushKind, RedisConnectionInfo,
    ServerErrorKind,
};
use rl_protocol::{AcquireReply, CheckAllReply, CheckReply, RefundReply};
use tokio::sync::OnceCell;

use super::{LimiterError, RateLimiter};
use crate::config::{Pem, Policy, Quota, Redacted, RedisSettings, RedisTarget, RedisUrl, SentinelTarget};
use crate::lease::{Slot, CONCURRENT_NAME};

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

#[derive(Clone)]
enum Backend {
    Single(ConnectionManager),
    /// Connected on first use (and again after a failed first attempt), so the gateway
    /// starts while the cluster is still coming up.
    Cluster(Arc<ClusterBackend>),
    Sentinel(Arc<SentinelBackend>),
}

struct ClusterBackend {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// The primary that Sentinel names, and a connection to it. Sentinel is asked on the first
/// command, and again after any command whose failure may mean that this is no longer the
/// primary (the connection broke or timed out, or the server answered `READONLY` because it
/// was demoted): that command fails (it is not retried, see [`CLUSTER_COMMAND_RETRIES`]),
/// the next one goes to whichever server Sentinel names then. It is also asked again as soon
/// as a sentinel announces a new primary ([`watch_switches`]): an old primary that still
/// runs keeps accepting commands until Sentinel demotes it, seconds later, and what it takes
/// then is lost when it resyncs as a replica.
struct SentinelBackend {
    /// Held while asking, so that the requests failing at once during a failover ask
    /// Sentinel one after the other (the first that connects serves the rest) instead of
    /// all together.
    sentinel: tokio::sync::Mutex<SentinelClient>,
    connection_config: AsyncConnectionConfig,
    /// The primary's AUTH (and database), for a connection to an announced primary.
    primary_auth: RedisConnectionInfo,
    primary: Mutex<Option<Primary>>,
    connections_made: AtomicU64,
}

#[derive(Clone)]
struct Primary {
    /// Which connection this is, so that a late failure on an old one does not drop a newer.
    id: u64,
    conn: MultiplexedConnection,
}

impl SentinelBackend {
    fn current(&self) -> Option<Primary> {
        self.primary.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn connection(&self) -> redis::RedisResult<Primary> {
        if let Some(primary) = self.current() {
            return Ok(primary);
        }
        let mut sentinel = self.sentinel.lock().await;
        if let Some(primary) = self.current() {
            return Ok(primary);
        }
        // The client checks that the server Sentinel names calls itself a primary (ROLE).
        let client = sentinel.async_get_client().await?;
        self.connect(&client, "the primary Sentinel names").await
    }

    /// Connects to the primary through `client` and makes it the current connection.
    async fn connect(&self, client: &redis::Client, which: &str) -> redis::RedisResult<Primary> {
        let conn = client.get_multiplexed_async_connection_with_config(&self.connection_config).await?;
        let primary = Primary { id: self.connections_made.fetch_add(1, Ordering::Relaxed), conn };
        *self.primary.lock().unwrap_or_else(PoisonError::into_inner) = Some(primary.clone());
        tracing::info!(connection = primary.id, address = %client.get_connection_info().addr(), "connected to {which}");
        Ok(primary)
    }

    /// A sentinel announced `host:port` as the new primary: connect there directly (asking
    /// the sentinels now might reach one that has not heard yet and still names the old
    /// one), or, failing that, leave the next command to ask Sentinel.
    async fn switch_to(&self, host: &str, port: u16) {
        let _asking = self.sentinel.lock().await;
        let info = (host, port).into_connection_info().map(|info| info.set_redis_settings(self.primary_auth.clone()));
        let connected = match info.and_then(redis::Client::open) {
            Ok(client) => self.connect(&client, "the primary a sentinel announced").await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = connected {
            self.forget(None, &format!("cannot connect to the announced primary: {e}"));
        }
    }

    async fn query(&self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let primary = self.connection().await?;
        let result = cmd.query_async::<redis::Value>(&mut primary.conn.clone()).await;
        if let Err(e) = &result {
            if primary_may_have_changed(e) {
                self.forget(Some(primary.id), &e.to_string());
            }
        }
        result
    }

    /// Drops the connection (only connection `id`, if given, so that a late failure on an old
    /// connection leaves a newer one alone): the next command asks Sentinel again.
    fn forget(&self, id: Option<u64>, why: &str) {
        let mut current = self.primary.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(primary) = current.as_ref().filter(|p| id.is_none_or(|id| p.id == id)) {
            tracing::warn!(connection = primary.id, reason = why, "asking Sentinel for the primary again");
            *current = None;
        }
    }
}

/// The channel on which every sentinel announces a failover:
/// `<master name> <old ip> <old port> <new ip> <new port>`.
const SWITCH_CHANNEL: &str = "+switch-master";

/// The pause before subscribing to the next sentinel after one went away.
const SWITCH_WATCH_PAUSE: Duration = Duration::from_millis(200);

/// Listens to the sentinels in turn (one at a time, the next when one goes away) for
/// [`SWITCH_CHANNEL`] about `master`, and drops the backend's connection on each, until the
/// backend is dropped.
async fn watch_switches(backend: Weak<SentinelBackend>, sentinels: Vec<RedisUrl>, master: String, timeout: Duration) {
    for sentinel in sentinels.iter().cycle() {
        if backend.strong_count() == 0 {
            return;
        }
        if let Err(e) = listen_for_switches(&backend, sentinel, &master, timeout).await {
            tracing::debug!(%sentinel, error = %e, "cannot listen to this sentinel for failovers");
        }
        tokio::time::sleep(SWITCH_WATCH_PAUSE).await;
    }
}

/// Subscribes to [`SWITCH_CHANNEL`] on one sentinel (RESP3, so the replies come as pushes on
/// an ordinary connection) until it goes away.
async fn listen_for_switches(
    backend: &Weak<SentinelBackend>,
    sentinel: &RedisUrl,
    master: &str,
    timeout: Duration,
) -> redis::RedisResult<()> {
    let info = sentinel.expose().into_connection_info()?;
    let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3))?;
    let (sender, mut pushes) = tokio::sync::mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(sender);
    let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    conn.subscribe(SWITCH_CHANNEL).await?;
    while let Some(push) = pushes.recv().await {
        let Some(backend) = backend.upgrade() else { return Ok(()) };
        match push.kind {
            PushKind::Disconnection => break,
            PushKind::Message => {
                if let Some((host, port)) = announced_primary(&push.data, master) {
                    backend.switch_to(&host, port).await;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The new primary's host and port, when a `message` push (`[channel, payload]`) announces
/// one for `master`.
fn announced_primary(data: &[redis::Value], master: &str) -> Option<(String, u16)> {
    let Some(redis::Value::BulkString(payload)) = data.last() else { return None };
    let payload = std::str::from_utf8(payload).ok()?;
    match payload.split(' ').collect::<Vec<_>>()[..] {
        [name, _old_host, _old_port, host, port] if name == master => Some((host.to_string(), port.parse().ok()?)),
        _ => None,
    }
}

/// A failure after which the server may no longer be the primary: a broken, refused or
/// timed-out connection (it died, or hangs while Sentinel promotes another), or `READONLY`
/// (it came back as a replica). An error reply of the module is not one.
fn primary_may_have_changed(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// Whether Redis ran the command and the module refused it: `ERR` about its arguments (out of
/// the module's bounds) or about the value stored at the key (another type, `WRONGTYPE`, or a
/// string that is not limiter state). Redis answered, so this is no outage, and the same
/// command would be refused again. `ERR unknown command` (the module is not loaded) is not
/// one: that is a server the gateway cannot use, as when it is down.
fn is_module_refusal(e: &redis::RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::ResponseError) => {
            !e.detail().is_some_and(|detail| detail.starts_with("unknown command"))
        }
        ErrorKind::Extension => e.code() == Some("WRONGTYPE"),
        _ => false,
    }
}

/// How the single-server connection reconnects after it broke: the first attempt at once,
/// then two more 25 ms and 50 ms later (each doubled at most by jitter), and no delay above
/// 100 ms. A request arriving while Redis is down waits for these attempts (well within
/// `timeout + connect_timeout`) and fails; when Redis is back, the attempt under way (or the
/// one the next request starts at once) connects within about 100 ms, so the gateway admits
/// requests again within a second. (The crate's defaults, 100 ms doubling over six attempts,
/// could keep a request waiting for seconds.) These are attempts to connect, not command
/// retries: no command is ever sent twice.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(25);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_RETRIES: usize = 2;

/// Command retries of the cluster client: none. `RL.CHECK` is not idempotent, and a retry
/// after a dropped connection may run it a second time (the first may have been applied), so a
/// request could be charged twice. A `MOVED` after a resharding therefore fails that one
/// request (answered per `failure_mode`) while the client refreshes its slot map; the next
/// request goes to the right node.
pub const CLUSTER_COMMAND_RETRIES: u32 = 0;

#[derive(Clone)]
pub struct RedisLimiter {
    backend: Backend,
    /// The longest one call may take: answer timeout plus connection timeout.
    timeout: Duration,
    prefix: String,
}

impl RedisLimiter {
    /// Sets up the connection without waiting for Redis: the gateway starts (and `/readyz`
    /// reports not ready) while Redis is still coming up.
    pub fn new(settings: &RedisSettings) -> Result<Self, ClientError> {
        let certs = settings.tls.as_ref().map(|tls| redis::TlsCertificates {
            client_tls: tls.client_cert_and_key.clone().map(|(Pem(client_cert), Redacted(Pem(client_key)))| {
                redis::ClientTlsConfig { client_cert, client_key }
            }),
            root_cert: tls.ca.clone().map(|Pem(ca)| ca),
        });
        let backend = match &settings.target {
            RedisTarget::Server(url) => {
                let described = |source| ClientError { setting: format!("redis.url {url}"), source };
                let client = match certs {
                    None => redis::Client::open(url.expose()),
                    Some(certs) => redis::Client::build_with_tls(url.expose(), certs),
                }
                .map_err(described)?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(settings.timeout))
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_exponent_base(2.0)
                    .set_min_delay(RECONNECT_MIN_DELAY)
                    .set_number_of_retries(RECONNECT_RETRIES)
                    .set_max_delay(RECONNECT_MAX_DELAY);
                Backend::Single(ConnectionManager::new_lazy_with_config(client, config).map_err(described)?)
            }
            RedisTarget::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(|node| node.expose()))
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.timeout)
                    .retries(CLUSTER_COMMAND_RETRIES);
                if settings.target.is_tls() {
                    builder = builder.tls(redis::TlsMode::Secure);
                }
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                let client =
                    builder.build().map_err(|source| ClientError { setting: "redis.cluster_nodes".into(), source })?;
                Backend::Cluster(Arc::new(ClusterBackend { client, conn: OnceCell::new() }))
            }
            RedisTarget::Sentinel(target) => {
                let backend = Arc::new(sentinel_backend(target, settings)?);
                // Needs a runtime; without one (only in tests of the setup itself) the
                // failures of commands alone lead to the new primary.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let watch = watch_switches(
                        Arc::downgrade(&backend),
                        target.sentinels.clone(),
                        target.master.clone(),
                        settings.connect_timeout,
                    );
                    runtime.spawn(watch);
                }
                Backend::Sentinel(backend)
            }
        };
        // The connection enforces both timeouts itself; this outer bound is a safety net
        // that also covers a (re)connection made for this very call.
        let timeout = settings.timeout + settings.connect_timeout;
        Ok(RedisLimiter { backend, timeout, prefix: settings.key_prefix.clone() })
    }

    /// The Redis key of one limit of one identity under one policy.
    pub fn key(&self, policy: &Policy, quota: &Quota, identity_hash: &str) -> String {
        key(&self.prefix, policy, quota, identity_hash)
    }

    /// Runs `cmd` within the timeout and decodes its answer (an error reply is a Redis error,
    /// an answer of the wrong shape a [`LimiterError::Reply`]). On a cluster it goes to the
    /// primary owning `key` (so RL.CHECKALL, whose first argument is not a key, needs no
    /// `MOVED` round trip, which the retry-free client would not follow).
    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd, key: &str) -> Result<T, LimiterError> {
        let call = async {
            match &self.backend {
                Backend::Single(conn) => cmd.query_async::<redis::Value>(&mut conn.clone()).await,
                Backend::Cluster(cluster) => {
                    let conn = cluster.conn.get_or_try_init(|| cluster.client.get_async_connection()).await?;
                    let route = Route::with_key(key, SlotAddr::Master);
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                    conn.clone().route_command(cmd, routing).await
                }
                Backend::Sentinel(sentinel) => sentinel.query(&cmd).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => T::from_redis_value(value).map_err(LimiterError::Reply),
            Ok(Err(e)) if is_module_refusal(&e) => Err(LimiterError::Rejected(e)),
            Ok(Err(e)) => Err(LimiterError::Redis(e)),
            Err(_) => Err(LimiterError::Timeout(self.timeout)),
        }
    }
}

/// A client of the sentinels (nothing is connected yet) for the primary of `target`, whose
/// connections keep the answer and connection timeouts of `settings`.
fn sentinel_backend(target: &SentinelTarget, settings: &RedisSettings) -> Result<SentinelBackend, ClientError> {
    let described = |source| ClientError { setting: format!("redis.sentinels {:?}", target.sentinels), source };
    let primary_auth = match &target.master_password {
        Some(Redacted(password)) => RedisConnectionInfo::default().set_password(password.as_str()),
        None => RedisConnectionInfo::default(),
    };
    let primary_info = SentinelNodeConnectionInfo::default().set_redis_connection_info(primary_auth.clone());
    let sentinels: Vec<&str> = target.sentinels.iter().map(|url| url.expose()).collect();
    let client =
        SentinelClient::build(sentinels, target.master.as_str(), Some(primary_info), SentinelServerType::Master)
            .map_err(described)?;
    let connection_config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(settings.timeout))
        .set_connection_timeout(Some(settings.connect_timeout));
    Ok(SentinelBackend {
        sentinel: tokio::sync::Mutex::new(client),
        connection_config,
        primary_auth,
        primary: Mutex::new(None),
        connections_made: AtomicU64::new(0),
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
        match policy.limits.as_slice() {
            [q] => {
                let mut cmd = redis::cmd("RL.CHECK");
                cmd.arg(&first).arg(q.limit).arg(q.window).arg("COST").arg(cost(0)).arg("BURST").arg(q.burst);
                let reply: CheckReply = self.query(cmd, &first).await?;
                Ok(CheckAllReply { allowed: reply.allowed, retry_after_ms: reply.retry_after_ms, limits: vec![reply] })
            }
            limits => {
                let mut cmd = redis::cmd("RL.CHECKALL");
                cmd.arg(keys.len()).arg(&keys);
                for (i, q) in limits.iter().enumerate() {
                    cmd.arg(q.limit).arg(q.window).arg(cost(i)).arg(q.burst);
                }
                self.query(cmd, &first).await
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
        let mut cmd = redis::cmd("RL.REFUND");
        cmd.arg(&key).arg(q.limit).arg(q.window).arg(amount(tokens)).arg("BURST").arg(q.burst);
        self.query(cmd, &key).await
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
        let mut cmd = redis::cmd("RL.CHECK");
        cmd.arg(&key).arg(q.limit).arg(q.window).arg("COST").arg(amount(tokens)).arg("BURST").arg(q.burst).arg("FORCE");
        self.query(cmd, &key).await
    }

    async fn check_shared(&self, quota: &Quota, cost: u64, keep: u64) -> Result<CheckReply, LimiterError> {
        let key = format!("{}upstream:{}", self.prefix, quota.name);
        let mut cmd = redis::cmd("RL.CHECK");
        cmd.arg(&key).arg(quota.limit).arg(quota.window).arg("COST").arg(amount(cost)).arg("BURST").arg(quota.burst);
        cmd.arg("KEEP").arg(amount(keep));
        self.query(cmd, &key).await
    }

    async fn acquire(&self, slot: &Slot, max: u64, lease_ms: u64, id: &str) -> Result<AcquireReply, LimiterError> {
        let key = lease_key(&self.prefix, slot);
        let mut cmd = redis::cmd("RL.ACQUIRE");
        cmd.arg(&key).arg(max).arg(lease_ms).arg("ID").arg(id);
        self.query(cmd, &key).await
    }

    async fn release(&self, slot: &Slot, id: &str) -> Result<bool, LimiterError> {
        let key = lease_key(&self.prefix, slot);
        let mut cmd = redis::cmd("RL.RELEASE");
        cmd.arg(&key).arg(id);
        self.query::<i64>(cmd, &key).await.map(|n| n == 1)
    }

    async fn renew(&self, slot: &Slot, id: &str, lease_ms: u64) -> Result<bool, LimiterError> {
        let key = lease_key(&self.prefix, slot);
        let mut cmd = redis::cmd("RL.RENEW");
        cmd.arg(&key).arg(id).arg(lease_ms);
        self.query::<i64>(cmd, &key).await.map(|n| n == 1)
    }

    /// A read-only `RL.PEEK` on a probe key: Redis answers and has the module.
    async fn ready(&self) -> Result<(), LimiterError> {
        let probe = format!("{}__readyz__", self.prefix);
        let mut cmd = redis::cmd("RL.PEEK");
        cmd.arg(&probe).arg(1).arg(1);
        let _: CheckReply = self.query(cmd, &probe).await?;
        Ok(())
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

    #[test]
    fn a_switch_announcement_names_the_new_primary_of_its_master_only() {
        let push = |payload: &str| {
            vec![redis::Value::BulkString(SWITCH_CHANNEL.into()), redis::Value::BulkString(payload.into())]
        };
        let switch = push("rl 127.0.0.1 6379 10.0.0.2 6380");
        assert_eq!(announced_primary(&switch, "rl"), Some(("10.0.0.2".to_string(), 6380)));
        assert_eq!(announced_primary(&switch, "other"), None);
        assert_eq!(announced_primary(&push("rl 127.0.0.1 6379 10.0.0.2"), "rl"), None);
        assert_eq!(announced_primary(&push("rl 127.0.0.1 6379 10.0.0.2 port"), "rl"), None);
        assert_eq!(announced_primary(&[], "rl"), None);
    }
}
