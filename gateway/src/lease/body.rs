//! [`LeasedBody`]: a response body that holds leases until it ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::Frame;

use super::Lease;
use crate::limiter::RateLimiter;

/// Passes `inner` through unchanged; drops its leases (releasing them) at the end of the
/// stream, on an error from it, or when the body itself is dropped (a client that went away).
pub struct LeasedBody<L: RateLimiter> {
    inner: Body,
    leases: Vec<Lease<L>>,
}

impl<L: RateLimiter> LeasedBody<L> {
    pub fn new(inner: Body, mut leases: Vec<Lease<L>>) -> Self {
        leases.iter_mut().for_each(Lease::serving);
        LeasedBody { inner, leases }
    }
}

impl<L: RateLimiter> HttpBody for LeasedBody<L> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.leases.clear(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.leases.clear(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
