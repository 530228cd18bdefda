//! The one Redis round trip per request: `RL.CHECK <prefix><policy>:<identity-hash> limit
//! window BURST burst`, over a multiplexed connection that reconnects by itself: to one
//! server, or to a Redis Cluster (each key lives on one node; the client routes it there).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use rl_protocol::CheckReply;
use tokio::sync::OnceCell;

use crate::config::{redact_url, Policy, RedisSettings};

/// Redis did not answer, or answered something other than a decision.
#[derive(Debug)]
pub enum LimiterError {
    Timeout(Duration),
    Redis(redis::RedisError),
    /// The answer is not the shape of an `RL.CHECK` reply.
    Reply(redis::ParsingError),
}

impl fmt::Display for LimiterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimiterError::Timeout(d) => write!(f, "redis did not answer within {} ms", d.as_millis()),
            LimiterError::Redis(e) => write!(f, "redis error: {e}"),
            LimiterError::Reply(r) => write!(f, "unexpected reply from RL.CHECK: {r}"),
        }
    }
}

impl std::error::Error for LimiterError {}

#[derive(Clone)]
enum Backend {
    Single(ConnectionManager),
    /// Connected on first use (and again after a failed first attempt), so the gateway
    /// starts while the cluster is still coming up.
    Cluster(Arc<ClusterBackend>),
}

struct ClusterBackend {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// Command retries of the cluster client: none. `RL.CHECK` is not idempotent, and a retry
/// after a dropped connection may run it a second time (the first may have been applied), so a
/// request could be charged twice. A `MOVED` after a resharding therefore fails that one
/// request (answered per `failure_mode`) while the client refreshes its slot map; the next
/// request goes to the right node.
pub const CLUSTER_COMMAND_RETRIES: u32 = 0;

#[derive(Clone)]
pub struct Limiter {
    backend: Backend,
    /// The longest one call may take: answer timeout plus connection timeout.
    timeout: Duration,
    prefix: String,
}

impl Limiter {
    /// Sets up the connection without waiting for Redis: the gateway starts (and `/readyz`
    /// reports not ready) while Redis is still coming up.
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        let certs = settings.tls.as_ref().map(|tls| redis::TlsCertificates {
            client_tls: tls
                .client_cert_and_key_pem
                .clone()
                .map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key }),
            root_cert: tls.ca_pem.clone(),
        });
        let backend = if settings.cluster_nodes.is_empty() {
            let described = |e: redis::RedisError| format!("redis.url {}: {e}", redact_url(&settings.url));
            let client = match certs {
                None => redis::Client::open(settings.url.as_str()),
                Some(certs) => redis::Client::build_with_tls(settings.url.as_str(), certs),
            }
            .map_err(described)?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(settings.timeout))
                .set_connection_timeout(Some(settings.connect_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            Backend::Single(ConnectionManager::new_lazy_with_config(client, config).map_err(described)?)
        } else {
            let mut builder = ClusterClientBuilder::new(settings.cluster_nodes.iter().map(String::as_str))
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.timeout)
                .retries(CLUSTER_COMMAND_RETRIES);
            if settings.cluster_nodes.iter().all(|n| n.starts_with("rediss://")) {
                builder = builder.tls(redis::TlsMode::Secure);
            }
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(|e| format!("redis.cluster_nodes: {e}"))?;
            Backend::Cluster(Arc::new(ClusterBackend { client, conn: OnceCell::new() }))
        };
        // The connection enforces both timeouts itself; this outer bound is a safety net
        // that also covers a (re)connection made for this very call.
        let timeout = settings.timeout + settings.connect_timeout;
        Ok(Limiter { backend, timeout, prefix: settings.key_prefix.clone() })
    }

    /// The Redis key for one identity under one policy.
    pub fn key(&self, policy: &Policy, identity_hash: &str) -> String {
        format!("{}{}:{}", self.prefix, policy.name, identity_hash)
    }

    /// Takes one token from the identity's bucket for `policy`.
    pub async fn check(&self, policy: &Policy, identity_hash: &str) -> Result<CheckReply, LimiterError> {
        let mut cmd = redis::cmd("RL.CHECK");
        cmd.arg(self.key(policy, identity_hash)).arg(policy.limit).arg(policy.window).arg("BURST").arg(policy.burst);
        self.query(&cmd).await
    }

    /// Whether Redis answers and has the module: a read-only `RL.PEEK` on a probe key.
    pub async fn ready(&self) -> Result<(), LimiterError> {
        let mut cmd = redis::cmd("RL.PEEK");
        cmd.arg(format!("{}__readyz__", self.prefix)).arg(1).arg(1);
        let _: CheckReply = self.query(&cmd).await?;
        Ok(())
    }

    /// Runs `cmd` within the timeout and decodes its answer (an error reply is a Redis error,
    /// an answer of the wrong shape a [`LimiterError::Reply`]).
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LimiterError> {
        let call = async {
            match &self.backend {
                Backend::Single(conn) => cmd.query_async::<redis::Value>(&mut conn.clone()).await,
                Backend::Cluster(cluster) => {
                    let conn = cluster.conn.get_or_try_init(|| cluster.client.get_async_connection()).await?;
                    cmd.query_async::<redis::Value>(&mut conn.clone()).await
                }
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => T::from_redis_value(value).map_err(LimiterError::Reply),
            Ok(Err(e)) => Err(LimiterError::Redis(e)),
            Err(_) => Err(LimiterError::Timeout(self.timeout)),
        }
    }
}

/// Whole seconds, rounded up: a client told to wait this long is never early.
pub fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}
