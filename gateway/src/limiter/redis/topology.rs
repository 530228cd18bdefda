//! Where the limiter's commands go, apart from how they are spelled ([`super::dialect`]): one
//! server, the primary Redis Sentinel names (both a [`Managed`] connection, see
//! [`super::connection`] and [`super::sentinel`]), or a Redis Cluster, whose commands go to
//! the primary owning their key. Setting up the library (`FUNCTION LOAD`, `SCRIPT LOAD`) goes
//! to every primary ([`Topology::everywhere`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::AsyncConnectionConfig;
use tokio::sync::OnceCell;

use super::connection::{on_io, Link, Managed};
use super::{sentinel, ClientError, CLUSTER_COMMAND_RETRIES, COMMAND_QUEUE, LATE_REPLY_WAIT};
use crate::config::{Pem, Redacted, RedisSettings, RedisTarget};

#[derive(Clone)]
pub enum Topology {
    /// One server, or the primary Sentinel names.
    Server(Arc<Managed>),
    /// Connected on first use (and again after a failed first attempt), so the gateway
    /// starts while the cluster is still coming up.
    Cluster(Arc<ClusterNodes>),
}

pub struct ClusterNodes {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl Topology {
    /// Sets up the connections of `settings` without making any.
    pub fn new(settings: &RedisSettings) -> Result<Topology, ClientError> {
        let certs = settings.tls.as_ref().map(|tls| redis::TlsCertificates {
            client_tls: tls.client_cert_and_key.clone().map(|(Pem(client_cert), Redacted(Pem(client_key)))| {
                redis::ClientTlsConfig { client_cert, client_key }
            }),
            root_cert: tls.ca.clone().map(|Pem(ca)| ca),
        });
        // Replies are waited for by each call (`timeout`), and after it by the late-reply
        // watch: the connection's own bound is that watch's. The queue of commands waiting
        // for the connection's writer is long enough never to fill: when it was (the crate's
        // default is 50), a request finding it full had to wait for its turn on a busy worker
        // to hand its command over, and under 5,000 connections a third of the checks
        // timed out before they were even sent.
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(LATE_REPLY_WAIT))
            .set_pipeline_buffer_size(COMMAND_QUEUE);
        Ok(match &settings.target {
            RedisTarget::Server(url) => {
                let described = |source| ClientError { setting: format!("redis.url {url}"), source };
                let client = match certs {
                    None => redis::Client::open(url.expose()),
                    Some(certs) => redis::Client::build_with_tls(url.expose(), certs),
                }
                .map_err(described)?;
                Topology::Server(Managed::new(
                    "Redis",
                    Box::new(move || std::future::ready(Ok(client.clone())).boxed()),
                    connection_config,
                ))
            }
            RedisTarget::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(|node| node.expose()))
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(LATE_REPLY_WAIT)
                    .retries(CLUSTER_COMMAND_RETRIES);
                if settings.target.is_tls() {
                    builder = builder.tls(redis::TlsMode::Secure);
                }
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                let client =
                    builder.build().map_err(|source| ClientError { setting: "redis.cluster_nodes".into(), source })?;
                Topology::Cluster(Arc::new(ClusterNodes { client, conn: OnceCell::new() }))
            }
            RedisTarget::Sentinel(target) => {
                Topology::Server(sentinel::primary(target, connection_config, settings.connect_timeout)?)
            }
        })
    }

    /// A connection to send on, made now if need be.
    pub async fn ready(&self) -> redis::RedisResult<Ready> {
        match self {
            Topology::Server(managed) => Ok(Ready::Server(managed.clone(), managed.link().await?)),
            Topology::Cluster(cluster) => Ok(Ready::Cluster(cluster.connection().await?)),
        }
    }

    /// Runs `cmd` on the server holding `key` (a probe: no timeout here, the caller has one).
    pub async fn send_to_key(&self, cmd: redis::Cmd, key: &str) -> redis::RedisResult<redis::Value> {
        self.ready().await?.send(cmd, key, Arc::default()).await
    }

    /// Runs `cmd` on the one server, or on every primary of a Cluster (the reply of each, in a
    /// map by node, or the first error); for setting up the library.
    pub async fn everywhere(&self, cmd: redis::Cmd, all_must_succeed: bool) -> redis::RedisResult<redis::Value> {
        match self {
            Topology::Server(managed) => {
                let link = managed.link().await?;
                managed.clone().send_on(link, cmd, Arc::default()).await
            }
            Topology::Cluster(cluster) => {
                let mut conn = cluster.connection().await?;
                let policy = all_must_succeed.then_some(ResponsePolicy::AllSucceeded);
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, policy));
                on_io(async move { error_reply_as_error(conn.route_command(cmd, routing).await) }).await
            }
        }
    }
}

/// The cluster client hands an error reply back as a value; the one-server client (and every
/// caller here) takes it as an error.
fn error_reply_as_error(reply: redis::RedisResult<redis::Value>) -> redis::RedisResult<redis::Value> {
    match reply {
        Ok(redis::Value::ServerError(e)) => Err(e.into()),
        other => other,
    }
}

impl ClusterNodes {
    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        let client = self.client.clone();
        let conn = self.conn.get_or_try_init(|| on_io(async move { client.get_async_connection().await }));
        Ok(conn.await?.clone())
    }
}

/// A connection ready for one command.
pub enum Ready {
    Server(Arc<Managed>, Link),
    Cluster(ClusterConnection),
}

impl Ready {
    /// Sends `cmd` (to the primary owning `key`, on a Cluster: RL.CHECKALL's first argument
    /// is not a key, and the retry-free client would not follow a `MOVED`) and reads its
    /// reply. The future owns all it needs, so it can go on after the caller stopped waiting;
    /// `sent` is set once the command was handed to the connection.
    fn send(
        self,
        cmd: redis::Cmd,
        key: &str,
        sent: Arc<AtomicBool>,
    ) -> BoxFuture<'static, redis::RedisResult<redis::Value>> {
        match self {
            Ready::Server(managed, link) => managed.send_on(link, cmd, sent).boxed(),
            Ready::Cluster(mut conn) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                    key,
                    SlotAddr::Master,
                )));
                async move {
                    sent.store(true, Ordering::Relaxed);
                    error_reply_as_error(conn.route_command(cmd, routing).await)
                }
                .boxed()
            }
        }
    }

    /// [`Ready::send`], keeping what [`Call::timed_out`] needs.
    pub fn send_call(self, cmd: redis::Cmd, key: &str, sent: Arc<AtomicBool>) -> Call {
        let ready = match &self {
            Ready::Server(managed, link) => ReadyRef::Server(managed.clone(), link.id),
            Ready::Cluster(_) => ReadyRef::Cluster,
        };
        Call { ready, future: self.send(cmd, key, sent) }
    }
}

/// A call under way: its connection, and the future of its reply.
pub struct Call {
    ready: ReadyRef,
    pub future: BoxFuture<'static, redis::RedisResult<redis::Value>>,
}

impl Call {
    /// The call got no reply in time: its connection may be dead ([`Managed::timed_out`]; a
    /// Cluster manages its own).
    pub fn timed_out(&self) {
        if let ReadyRef::Server(managed, id) = &self.ready {
            managed.timed_out(*id);
        }
    }
}

/// The connection a call went out on.
enum ReadyRef {
    Server(Arc<Managed>, u64),
    Cluster,
}
