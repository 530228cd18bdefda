//! Running a router on a socket (HTTP/1.1, with a request-header timeout) until SIGTERM or
//! Ctrl-C, then draining in-flight requests. The gateway and the demo model both run this way.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::Service;

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

/// Binds `addr` and serves `router` over HTTP/1.1 (with the peer address available as
/// `ConnectInfo`) until a shutdown signal, then waits up to [`DRAIN_TIMEOUT`] for open
/// requests. A client gets `header_timeout` to send each request's headers (also the idle time
/// allowed between requests on a kept-alive connection); then its connection is closed.
pub async fn run(what: &str, addr: SocketAddr, router: Router, header_timeout: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "{what} listening on http://{local}");

    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received, draining open requests");
        let _ = tx.send(true);
    });
    let mut connections = JoinSet::new();
    let mut stop = rx.clone();
    loop {
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
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
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
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
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!("requests still open after {DRAIN_TIMEOUT:?}; stopping anyway");
        connections.abort_all();
    }
    tracing::info!("{what} stopped");
    Ok(())
}
