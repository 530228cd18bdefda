//! Connections to Redis, apart from what is sent on them ([`super`]): to one server, to the
//! primary Sentinel names ([`super::sentinel`]), or to a Cluster.
//!
//! **Their own thread.** Every connection's I/O (the task of a multiplexed connection that
//! writes commands and reads replies, a Cluster's tasks) runs on one thread of its own
//! ([`io`]), not on the workers that serve HTTP. Under load the workers have thousands of
//! requests ready to run, and a connection task queued behind them got its turn so late that a
//! healthy Redis's replies were read after `redis.timeout_ms` (1.7% of requests under 5,000
//! connections got `503`). On its own thread it reads a reply as soon as it arrives, and a
//! request that gets its turn late still finds its reply there.
//!
//! **Reconnecting.** [`Managed`] holds one server's connection, makes it on first use, and
//! drops it after an error that may mean it broke; the next command connects again (one
//! attempt at a time, shared by every command waiting for it). **A command is handed to a
//! connection once and never sent again**: once handed over, nothing on this side can tell
//! whether it left (the writer runs on the I/O thread, and may send it, lose its reply and fail
//! it before the caller even looks), and a resent `RL.CHECK` could charge twice. What makes
//! this safe after Redis restarted while the gateway was idle is knowing the connection is dead
//! *before* handing it a command: connections speak RESP3, whose client reports the end of the
//! connection as soon as the I/O thread reads it ([`Link::closed`]), and a link known closed is
//! replaced before use. (A server that refuses `HELLO 3` gets RESP2 connections without that
//! report: there the first command after such a restart fails, as `failure_mode` says.)

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ErrorKind, ProtocolVersion, PushInfo, PushKind, RedisError, RedisResult, ServerErrorKind,
};

/// The runtime of the Redis I/O thread (started on first use).
pub fn io() -> &'static tokio::runtime::Handle {
    static IO: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    IO.get_or_init(|| {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("redis-io".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => {
                    let _ = handle_tx.send(Some(runtime.handle().clone()));
                    runtime.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the Redis I/O thread; Redis I/O runs on the workers");
                    let _ = handle_tx.send(None);
                }
            }
        });
        let handle = spawned.ok().and_then(|_| handle_rx.recv().ok().flatten());
        // Without a thread of its own (never seen), the I/O runs where it is started.
        handle.unwrap_or_else(tokio::runtime::Handle::current)
    })
}

/// Runs `future` on the Redis I/O thread, so that the connections it makes live there.
pub async fn on_io<T: Send + 'static>(future: impl Future<Output = RedisResult<T>> + Send + 'static) -> RedisResult<T> {
    match io().spawn(future).await {
        Ok(result) => result,
        Err(e) => Err(RedisError::from(std::io::Error::other(format!("the Redis I/O task failed: {e}")))),
    }
}

/// A failure after which the connection may be broken, or the server no longer the one to
/// use: a broken, refused or timed-out connection, or `READONLY` (a primary demoted to a
/// replica). An error reply of the module is not one.
pub fn connection_may_be_broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// Where to connect now: one server, or whichever Sentinel names (asked on each call).
pub type Locate = Box<dyn Fn() -> BoxFuture<'static, RedisResult<redis::Client>> + Send + Sync>;

/// After a failed attempt to connect, commands fail at once for this long instead of each
/// trying again (a flood of requests during an outage would otherwise be a flood of connects);
/// the first command after it tries again. Also the longest a recovered Redis waits for the
/// gateway to notice.
const CONNECT_PAUSE: Duration = Duration::from_millis(25);

/// See [`Managed::timed_out`].
const KEEP_AFTER_TIMEOUT: Duration = Duration::from_secs(1);

/// One server's connection: made on first use, replaced after it broke.
pub struct Managed {
    /// What the connection is to, for the log.
    what: &'static str,
    locate: Locate,
    config: AsyncConnectionConfig,
    /// Set when the server refused `HELLO 3`: connections then speak RESP2.
    resp2_only: Arc<AtomicBool>,
    state: Mutex<State>,
    made: AtomicU64,
    /// Bumped by [`Managed::replace`]: an attempt that began before a replacement (it may
    /// have asked Sentinel before the failover) does not install what it found.
    replaced: AtomicU64,
}

#[derive(Default)]
struct State {
    link: Option<Link>,
    /// The attempt to connect under way, awaited by every command that needs it.
    attempt: Option<Shared<BoxFuture<'static, RedisResult<Link>>>>,
    /// The last failed attempt: its time and error.
    failed: Option<(Instant, RedisError)>,
}

/// A connection and its number (a late failure on an old connection must not drop a newer one).
#[derive(Clone)]
pub struct Link {
    pub id: u64,
    pub conn: MultiplexedConnection,
    made_at: Instant,
    /// Set by the connection's client as soon as it sees the connection end (RESP3 only).
    closed: Option<Arc<AtomicBool>>,
}

impl Link {
    /// Known to have ended: a command handed to it now would fail without being sent.
    pub fn closed(&self) -> bool {
        self.closed.as_ref().is_some_and(|closed| closed.load(Ordering::Acquire))
    }
}

/// The server does not know `HELLO` (the client recognises only the spelling of Redis 5, a
/// renamed command is answered as Redis 7 spells it).
fn refuses_resp3(e: &RedisError) -> bool {
    e.kind() == ErrorKind::RESP3NotSupported
        || (e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
            && e.detail().is_some_and(|detail| detail.to_ascii_lowercase().starts_with("unknown command 'hello'")))
}

/// A connection just made, and what reports its end.
pub struct Dialed {
    conn: MultiplexedConnection,
    closed: Option<Arc<AtomicBool>>,
}

/// Connects to `client`'s server with `config`: over RESP3 with a report of the connection's
/// end, or over RESP2 without one when `resp2_only` is set, or set now because the server
/// refused `HELLO 3`. Runs on the I/O thread.
async fn dial(
    client: redis::Client,
    config: AsyncConnectionConfig,
    resp2_only: Arc<AtomicBool>,
) -> RedisResult<Dialed> {
    if !resp2_only.load(Ordering::Relaxed) {
        let info = client.get_connection_info().clone();
        let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3))?;
        let closed = Arc::new(AtomicBool::new(false));
        let reported = closed.clone();
        let watched = config.clone().set_push_sender(move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                reported.store(true, Ordering::Release);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        match client.get_multiplexed_async_connection_with_config(&watched).await {
            Ok(conn) => return Ok(Dialed { conn, closed: Some(closed) }),
            Err(e) if refuses_resp3(&e) => {
                tracing::warn!(
                    "Redis refused HELLO 3 (RESP3): connections speak RESP2, and a connection Redis closed \
                     while the gateway was idle is noticed only when a command fails on it"
                );
                resp2_only.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let conn = client.get_multiplexed_async_connection_with_config(&config).await?;
    Ok(Dialed { conn, closed: None })
}

impl Managed {
    pub fn new(what: &'static str, locate: Locate, config: AsyncConnectionConfig) -> Arc<Managed> {
        Arc::new(Managed {
            what,
            locate,
            config,
            resp2_only: Arc::default(),
            state: Mutex::new(State::default()),
            made: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection, made now if there is none.
    pub async fn link(self: &Arc<Self>) -> RedisResult<Link> {
        let attempt = {
            let mut state = self.state();
            if let Some(link) = &state.link {
                if !link.closed() {
                    return Ok(link.clone());
                }
                tracing::info!(connection = link.id, "the connection to {} was closed; connecting again", self.what);
                state.link = None;
            }
            if let Some((at, error)) = &state.failed {
                if at.elapsed() < CONNECT_PAUSE {
                    return Err(error.clone());
                }
            }
            match &state.attempt {
                Some(attempt) => attempt.clone(),
                None => {
                    let this = self.clone();
                    let attempt = async move { this.attempt().await }.boxed().shared();
                    state.attempt = Some(attempt.clone());
                    attempt
                }
            }
        };
        attempt.await
    }

    /// One attempt to connect, on the I/O thread; its outcome is recorded for every command.
    async fn attempt(self: Arc<Self>) -> RedisResult<Link> {
        let replaced = self.replaced.load(Ordering::Relaxed);
        let result = on_io(self.dial_located()).await;
        let mut state = self.state();
        state.attempt = None;
        match result {
            Ok(_) if self.replaced.load(Ordering::Relaxed) != replaced => match &state.link {
                Some(link) => Ok(link.clone()),
                None => Err(RedisError::from(std::io::Error::other("the connection was replaced meanwhile"))),
            },
            Ok(conn) => {
                state.failed = None;
                Ok(self.install(&mut state, conn))
            }
            Err(e) => {
                tracing::debug!(error = %e, what = self.what, "cannot connect to Redis");
                state.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Asks where to connect, and connects there.
    fn dial_located(&self) -> impl Future<Output = RedisResult<Dialed>> + Send + 'static {
        let locating = (self.locate)();
        let (config, resp2_only) = (self.config.clone(), self.resp2_only.clone());
        async move { dial(locating.await?, config, resp2_only).await }
    }

    /// Connects to `client`'s server (on the I/O thread) without installing the connection.
    pub async fn dial_to(&self, client: redis::Client) -> RedisResult<Dialed> {
        on_io(dial(client, self.config.clone(), self.resp2_only.clone())).await
    }

    fn install(&self, state: &mut State, dialed: Dialed) -> Link {
        let link = Link {
            id: self.made.fetch_add(1, Ordering::Relaxed),
            conn: dialed.conn,
            made_at: Instant::now(),
            closed: dialed.closed,
        };
        state.link = Some(link.clone());
        tracing::info!(connection = link.id, "connected to {}", self.what);
        link
    }

    /// Makes `dialed` the connection (one made elsewhere, e.g. to a primary a sentinel
    /// announced, by [`Managed::dial_to`]).
    pub fn replace(&self, dialed: Dialed) {
        let mut state = self.state();
        self.replaced.fetch_add(1, Ordering::Relaxed);
        state.failed = None;
        self.install(&mut state, dialed);
    }

    /// Drops connection `id` (or whichever there is, for `None`): the next command connects again.
    pub fn forget(&self, id: Option<u64>, why: &dyn std::fmt::Display) {
        let mut state = self.state();
        if let Some(link) = state.link.as_ref().filter(|link| id.is_none_or(|id| link.id == id)) {
            tracing::warn!(connection = link.id, reason = %why, "dropping the connection to {}", self.what);
            state.link = None;
        }
    }

    /// A command on connection `id` got no reply in time. The connection may be dead (a network
    /// partition leaves it open, silent) or no longer the primary's (a hung primary Sentinel
    /// replaces), or Redis may merely be slow or paused: it is dropped, so the next command
    /// connects again, unless it is younger than [`KEEP_AFTER_TIMEOUT`] (a paused Redis would
    /// otherwise get a new connection per request).
    pub fn timed_out(&self, id: u64) {
        let mut state = self.state();
        if let Some(link) =
            state.link.as_ref().filter(|link| link.id == id && link.made_at.elapsed() >= KEEP_AFTER_TIMEOUT)
        {
            tracing::warn!(
                connection = link.id,
                "dropping the connection to {} after a command timed out on it",
                self.what
            );
            state.link = None;
        }
    }

    /// Sends `cmd` on `link` (once: see the module's comment) and reads its reply; `sent` is
    /// set when the command is handed to the connection.
    pub async fn send_on(
        self: Arc<Self>,
        link: Link,
        cmd: redis::Cmd,
        sent: Arc<AtomicBool>,
    ) -> RedisResult<redis::Value> {
        sent.store(true, Ordering::Relaxed);
        let mut conn = link.conn.clone();
        let result = cmd.query_async::<redis::Value>(&mut conn).await;
        if let Err(e) = &result {
            if connection_may_be_broken(e) {
                self.forget(Some(link.id), e);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn io_runs_on_a_thread_of_its_own() {
        let name = on_io(async { Ok(std::thread::current().name().map(str::to_string)) }).await.unwrap();
        assert_eq!(name.as_deref(), Some("redis-io"));
    }

    #[tokio::test]
    async fn a_failed_connect_is_shared_and_not_retried_at_once() {
        let attempts = Arc::new(AtomicU64::new(0));
        let counted = attempts.clone();
        let managed = Managed::new(
            "nowhere",
            Box::new(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
                }
                .boxed()
            }),
            AsyncConnectionConfig::new(),
        );
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                tokio::spawn({
                    let managed = managed.clone();
                    async move { managed.link().await.map(|l| l.id) }
                })
            })
            .collect();
        for w in waiting {
            assert!(w.await.unwrap().unwrap_err().is_connection_refusal());
        }
        assert_eq!(attempts.load(Ordering::Relaxed), 1, "one attempt for all five");
        assert!(managed.link().await.is_err());
        assert_eq!(attempts.load(Ordering::Relaxed), 1, "within the pause, no new attempt");
        tokio::time::sleep(CONNECT_PAUSE).await;
        assert!(managed.link().await.is_err());
        assert_eq!(attempts.load(Ordering::Relaxed), 2, "after it, one more");
    }
}
