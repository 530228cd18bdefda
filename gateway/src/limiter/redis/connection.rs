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
//! attempt at a time, shared by every command waiting for it). A command is never sent
//! twice, except one that cannot have left: when the connection had already closed (Redis
//! restarted while the gateway was idle), the command fails at once, on its first poll, and it
//! is then sent once on a new connection. A failure on the first poll alone does not prove
//! that: the command is handed to the writer thread, which may send it, see its reply lost
//! and fail it before the first poll returns (a test that cut the connection after the reply
//! saw it charged twice). So the command is sent again only when the connection had also been
//! idle for [`IDLE_BEFORE_RESEND`]: a connection Redis closed while idle, whose writer had long
//! stopped. A busy connection that breaks fails its commands (`failure_mode` decides).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};

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

/// How to make a connection (to one server, or to whichever Sentinel names).
pub type Connect = Box<dyn Fn() -> BoxFuture<'static, RedisResult<MultiplexedConnection>> + Send + Sync>;

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
    connect: Connect,
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

/// How long a connection must have had no reply before a command failing on its first poll
/// is taken as never sent (see the module's comment).
pub const IDLE_BEFORE_RESEND: Duration = Duration::from_millis(100);

/// A connection and its number (a late failure on an old connection must not drop a newer one).
#[derive(Clone)]
pub struct Link {
    pub id: u64,
    pub conn: MultiplexedConnection,
    made_at: Instant,
    /// When it last had a reply, in ms after `made_at`.
    last_reply_ms: Arc<AtomicU64>,
}

impl Link {
    /// No reply (nor the connection made) for at least `for_at_least`.
    fn idle(&self, for_at_least: Duration) -> bool {
        let last = self.made_at + Duration::from_millis(self.last_reply_ms.load(Ordering::Relaxed));
        last.elapsed() >= for_at_least
    }

    fn replied(&self) {
        let ms = u64::try_from(self.made_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_reply_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

impl Managed {
    pub fn new(what: &'static str, connect: Connect) -> Arc<Managed> {
        Arc::new(Managed {
            what,
            connect,
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
                return Ok(link.clone());
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
        let connecting = (self.connect)();
        let result = on_io(connecting).await;
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

    fn install(&self, state: &mut State, conn: MultiplexedConnection) -> Link {
        let link = Link {
            id: self.made.fetch_add(1, Ordering::Relaxed),
            conn,
            made_at: Instant::now(),
            last_reply_ms: Arc::default(),
        };
        state.link = Some(link.clone());
        tracing::info!(connection = link.id, "connected to {}", self.what);
        link
    }

    /// Makes `conn` the connection (one made elsewhere, e.g. to a primary a sentinel announced).
    pub fn replace(&self, conn: MultiplexedConnection) {
        let mut state = self.state();
        self.replaced.fetch_add(1, Ordering::Relaxed);
        state.failed = None;
        self.install(&mut state, conn);
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

    /// Sends `cmd` on `link` and reads its reply (see the module's comment on what is sent
    /// again); `sent` is set when the command is handed to a connection.
    pub async fn send_on(
        self: Arc<Self>,
        link: Link,
        cmd: redis::Cmd,
        sent: Arc<AtomicBool>,
    ) -> RedisResult<redis::Value> {
        sent.store(true, Ordering::Relaxed);
        let first = std::pin::pin!(query(link.conn.clone(), &cmd));
        let (first_poll, result) = FirstPoll { future: first, polled: false }.await;
        let (link, result) = match result {
            Err(e) if first_poll && e.is_connection_dropped() && link.idle(IDLE_BEFORE_RESEND) => {
                // The connection had closed while idle, before the command was handed to it.
                self.forget(Some(link.id), &e);
                let link = self.link().await?;
                let result = query(link.conn.clone(), &cmd).await;
                (link, result)
            }
            result => (link, result),
        };
        match &result {
            Err(e) if connection_may_be_broken(e) => self.forget(Some(link.id), e),
            _ => link.replied(),
        }
        result
    }
}

async fn query(mut conn: MultiplexedConnection, cmd: &redis::Cmd) -> RedisResult<redis::Value> {
    cmd.query_async::<redis::Value>(&mut conn).await
}

/// A (pinned) future's output, and whether it came on the first poll.
struct FirstPoll<'a, F> {
    future: Pin<&'a mut F>,
    polled: bool,
}

impl<F: Future> Future for FirstPoll<'_, F> {
    type Output = (bool, F::Output);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let first = !self.polled;
        self.polled = true;
        self.future.as_mut().poll(cx).map(|output| (first, output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_poll_tells_an_immediate_answer_from_a_later_one() {
        let now = std::pin::pin!(async { 5 });
        assert_eq!(FirstPoll { future: now, polled: false }.await, (true, 5));
        let later = std::pin::pin!(async {
            tokio::task::yield_now().await;
            6
        });
        assert_eq!(FirstPoll { future: later, polled: false }.await, (false, 6));
    }

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
