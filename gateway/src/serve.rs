//! Running a router on a socket (HTTP/1.1, with a request-header timeout and a cap on open
//! connections) until SIGTERM or Ctrl-C, then draining in-flight requests. The gateway and the
//! demo model both run this way.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::Service;

use crate::log_limit::Throttle;
use crate::metrics::metrics;

/// How long in-flight requests may take to finish after the shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request's headers, unless configured otherwise.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_millis(crate::config::DEFAULT_CLIENT_HEADER_TIMEOUT_MS);

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// How a server treats its clients' connections.
#[derive(Clone, Copy, Debug)]
pub struct Connections {
    /// How long a client may take to send a request's headers, also the idle time allowed
    /// between requests on a kept-alive connection; then its connection is closed.
    pub header_timeout: Duration,
    /// How long a write to a client may wait (the client is not reading, its socket is full);
    /// then the connection is closed ([`WriteTimeout`]).
    pub write_timeout: Duration,
    /// The most client connections open at once; a new one beyond is closed at once.
    pub max: usize,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            write_timeout: Duration::from_millis(crate::config::DEFAULT_CLIENT_WRITE_TIMEOUT_MS),
            max: crate::config::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A client connection whose writes must make progress. A client that stops reading (and
/// keeps sending requests, or waits on a large answer) fills its socket, and the server's next
/// write waits; nothing else would ever end such a connection, which keeps its place among
/// `max_connections` and whatever the answer holds (a concurrency lease, a connection to the
/// model). After `limit` without a byte written, writes fail and the connection ends, as
/// nginx's `send_timeout` does.
pub struct WriteTimeout<T> {
    io: T,
    limit: Duration,
    /// Set while a write waits: when it fires.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteTimeout<T> {
    pub fn new(io: T, limit: Duration) -> Self {
        WriteTimeout { io, limit, stalled: None }
    }

    /// After a write or flush: progress clears the timer; waiting starts it (once) and fails
    /// when it fires.
    fn check<R>(&mut self, cx: &mut Context<'_>, result: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let limit = self.limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {} ms (client_write_timeout_ms)", limit.as_millis()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// File descriptors kept aside from client connections: the listener, Redis and Sentinel
/// connections, logs, the blocking pool's files.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises this process's soft limit on open files to its hard limit (where it is lower), and
/// says how many client connections fit in it: `wanted`, or fewer (logged) when there are not
/// two descriptors for each (the client's and a connection to the model it may hold) besides
/// a few kept for the process itself (`RESERVED_DESCRIPTORS`). So the server refuses connections of its own accord rather than
/// failing to accept them with "Too many open files".
pub fn connections_that_fit(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the limit on open files; assuming max_connections fits");
            return wanted;
        }
    };
    let fit = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS) / 2).unwrap_or(usize::MAX).max(1);
    if fit < wanted {
        tracing::warn!(
            max_connections = wanted,
            open_files_limit = limit,
            serving_at_most = fit,
            "max_connections needs two file descriptors per connection; raise the hard limit on open files \
             (ulimit -Hn, LimitNOFILE=) to serve more"
        );
        return fit;
    }
    wanted
}

/// One open client connection, counted in `open` while it lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        metrics().connection_opened(1);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics().connection_opened(-1);
    }
}

/// Binds `addr` and serves `router` over HTTP/1.1 (with the peer address available as
/// `ConnectInfo`) until a shutdown signal, then waits up to [`DRAIN_TIMEOUT`] for open
/// requests. At most `connections.max` clients are connected at once: a connection beyond is
/// closed as soon as it is accepted (so it fails fast, where waiting in the backlog would hang).
pub async fn run(what: &str, addr: SocketAddr, router: Router, connections: Connections) -> std::io::Result<()> {
    static REFUSED: Throttle = Throttle::new();
    static ACCEPT_FAILED: Throttle = Throttle::new();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, max_connections = connections.max, "{what} listening on http://{local}");
    let open = Arc::new(AtomicUsize::new(0));
    let (header_timeout, write_timeout) = (connections.header_timeout, connections.write_timeout);

    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received, draining open requests");
        let _ = tx.send(true);
    });
    let mut tasks = JoinSet::new();
    let mut stop = rx.clone();
    loop {
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    if let Some(left_out) = ACCEPT_FAILED.allow() {
                        tracing::warn!(error = %e, left_out, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if open.load(Ordering::Relaxed) >= connections.max {
            drop(stream);
            metrics().connection_refused();
            if let Some(left_out) = REFUSED.allow() {
                tracing::warn!(%peer, max_connections = connections.max, left_out, "connection refused: max_connections are open");
            }
            continue;
        }
        let counted = Counted::new(&open);
        let _ = stream.set_nodelay(true);
        // The peer goes into each request's extensions, as an `Extension(ConnectInfo(peer))`
        // layer would put it, without building a layered copy of the whole router per
        // connection. Cloning the router is an `Arc` clone; a `Router` is always ready, so it
        // is called without `poll_ready`.
        let router = router.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            Service::call(&mut router.clone(), request)
        });
        let mut stop = rx.clone();
        tasks.spawn(async move {
            let _counted = counted;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(WriteTimeout::new(stream, write_timeout)), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while tasks.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!("requests still open after {DRAIN_TIMEOUT:?}; stopping anyway");
        tasks.abort_all();
    }
    tracing::info!("{what} stopped");
    Ok(())
}
