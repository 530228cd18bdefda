//! The Envoy rate limit service's gRPC listener, bounded: Envoy keeps a few HTTP/2
//! connections to it, each carrying many calls at once, but the port may be reached by
//! anything on the network, and tonic's defaults bound neither the calls on one connection nor
//! the connections.
//!
//! - At most [`MAX_STREAMS_PER_CONNECTION`] calls in flight on one connection: HTTP/2 makes a
//!   client beyond that wait for one of its calls to end, so a flood of streams queues in the
//!   client, not in the service's memory.
//! - At most `max_connections` connections at once (the HTTP listener's setting, counted
//!   apart); one more is closed at once, counted in `gateway_connections_refused_total`.
//! - A peer that vanished without closing is pinged every [`KEEPALIVE_INTERVAL`] and dropped
//!   after [`KEEPALIVE_TIMEOUT`] without an answer, giving back its place.
//! - Headers are bounded by hyper (16 KiB), messages by tonic (4 MiB).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::grpc::RateLimitServiceServer;
use crate::limiter::RateLimiter;
use crate::log_limit::Throttle;
use crate::metrics::metrics;

/// Calls in flight on one connection. Envoy's rate limit filter opens a few connections and
/// has far fewer calls in flight on each; a connection asking more waits (HTTP/2 flow).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// How often an idle connection's peer is pinged (HTTP/2 PING).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` until `shutdown` resolves, with the bounds above.
pub async fn serve<L: RateLimiter>(
    listener: TcpListener,
    service: RateLimitServiceServer<super::grpc::Rls<L>>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    static REFUSED: Throttle = Throttle::new();
    let places = Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let incoming = TcpListenerStream::new(listener).filter_map(move |accepted| match accepted {
        Ok(stream) => match places.clone().try_acquire_owned() {
            Ok(place) => {
                // Without it a small answer's last frame (the trailers) waits for the peer's
                // delayed ACK, ~40 ms: longer than Envoy's default 20 ms for the call. (tonic
                // sets it only on connections it accepts itself.)
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                Some(Ok(Counted { stream, _place: place }))
            }
            Err(_) => {
                // Dropped here: closed at once, before any byte is read.
                metrics().connection_refused();
                if let Some(left_out) = REFUSED.allow() {
                    tracing::warn!(
                        max_connections,
                        left_out,
                        "Envoy listener: connection refused, max_connections are open"
                    );
                }
                None
            }
        },
        Err(e) => Some(Err(e)),
    });
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// An accepted connection holding its place among `max_connections` until it is dropped.
struct Counted {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
