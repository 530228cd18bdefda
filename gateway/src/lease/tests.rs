use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;

use super::*;
use crate::limiter::memory::MemoryLimiter;

const ONE: Concurrency = Concurrency { max: 1, lease_ms: 300 };

async fn take(limiter: &MemoryLimiter) -> Lease<MemoryLimiter> {
    Lease::acquire(limiter, Slot::Upstream, ONE).await.unwrap().unwrap()
}

/// The release is spawned: give it a moment.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn a_full_slot_refuses_and_a_dropped_lease_frees_it() {
    let limiter = MemoryLimiter::new();
    let lease = take(&limiter).await;
    let refused = Lease::acquire(&limiter, Slot::Upstream, ONE).await.unwrap().err().unwrap();
    assert_eq!((refused.acquired, refused.in_flight, refused.max, refused.retry_after_ms), (false, 1, 1, 300));
    drop(lease);
    settle().await;
    assert_eq!(limiter.in_flight(&Slot::Upstream), 0);
    assert!(Lease::acquire(&limiter, Slot::Upstream, ONE).await.unwrap().is_ok());
}

#[tokio::test]
async fn a_leased_body_releases_when_it_ends() {
    let limiter = MemoryLimiter::new();
    let body = LeasedBody::new(Body::from("answer"), vec![take(&limiter).await]);
    assert_eq!(limiter.in_flight(&Slot::Upstream), 1);
    assert_eq!(Body::new(body).collect().await.unwrap().to_bytes(), "answer");
    settle().await;
    assert_eq!(limiter.in_flight(&Slot::Upstream), 0);
}

/// A body that never sends anything (a slow stream).
struct Pending;

impl axum::body::HttpBody for Pending {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test]
async fn a_leased_body_dropped_unfinished_releases_too() {
    let limiter = MemoryLimiter::new();
    let body = LeasedBody::new(Body::new(Pending), vec![take(&limiter).await]);
    drop(body);
    settle().await;
    assert_eq!(limiter.in_flight(&Slot::Upstream), 0, "a client that went away frees the slot");
}

#[tokio::test]
async fn a_held_lease_is_renewed_past_lease_ms() {
    let limiter = MemoryLimiter::new();
    let _lease = take(&limiter).await;
    limiter.advance(Duration::from_millis(250));
    // A renewal every 100 ms (lease_ms / 3) moves the deadline to 250 + 300 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    limiter.advance(Duration::from_millis(250));
    assert_eq!(limiter.in_flight(&Slot::Upstream), 1, "renewed: live at 500 ms of a 300 ms lease");
}

#[test]
fn lease_ids_are_unique() {
    let (a, b) = (new_id(), new_id());
    assert_ne!(a, b);
    assert!(a.starts_with("gw-") && a.len() <= 256, "{a}");
}

/// Polls (real time) until `condition`, for at most 2 s.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Redis unreachable while a request runs: its renewals fail (logged, tried again), so its
/// lease lapses `lease_ms` after the last one that worked and the slot may go to another
/// request (the price of an outage, bounded by `lease_ms`); once Redis is back the next
/// renewal finds the lease ended and the renewals stop, and the request itself goes on.
#[tokio::test]
async fn failing_renewals_let_the_lease_lapse_and_one_found_ended_stops_the_renewals() {
    use crate::limiter::faulty::{Faulty, Op};
    let limiter = Faulty::new(MemoryLimiter::new());
    let lease = Lease::acquire(&limiter, Slot::Upstream, ONE).await.unwrap().unwrap();
    limiter.fail(Op::Renew, true);
    assert!(eventually(|| limiter.calls(Op::Renew) >= 2).await, "renewals go on after a failure");
    limiter.inner.advance(Duration::from_millis(301));
    assert_eq!(limiter.inner.in_flight(&Slot::Upstream), 0, "lapsed: never renewed");
    let other = Lease::acquire(&limiter, Slot::Upstream, ONE).await.unwrap();
    assert!(other.is_ok(), "the slot went to another request");
    limiter.fail(Op::Renew, false);
    let tried = limiter.calls(Op::Renew);
    assert!(eventually(|| limiter.calls(Op::Renew) > tried + 1).await, "the other lease renews too");
    // The first lease's task stopped at its first answer `ended`; only the other's go on.
    let (before, wait) = (limiter.calls(Op::Renew), Duration::from_millis(350));
    tokio::time::sleep(wait).await;
    let renewed = limiter.calls(Op::Renew) - before;
    assert!((1..=4).contains(&renewed), "one lease renewing every 100 ms for 350 ms (3), not two (6-7): {renewed}");
    drop(lease);
    settle().await;
    assert_eq!(limiter.inner.in_flight(&Slot::Upstream), 1, "releasing the lapsed lease frees nothing of the other's");
}

/// A release that cannot reach Redis leaves the slot taken until its lease ends by itself.
#[tokio::test]
async fn a_failed_release_frees_the_slot_when_lease_ms_has_passed() {
    use crate::limiter::faulty::{Faulty, Op};
    let limiter = Faulty::new(MemoryLimiter::new());
    limiter.fail(Op::Release, true);
    drop(Lease::acquire(&limiter, Slot::Upstream, ONE).await.unwrap().unwrap());
    assert!(eventually(|| limiter.calls(Op::Release) == 1).await, "released once, not retried");
    assert_eq!(limiter.inner.in_flight(&Slot::Upstream), 1);
    assert!(Lease::acquire(&limiter, Slot::Upstream, ONE).await.unwrap().is_err(), "still held");
    limiter.inner.advance(Duration::from_millis(301));
    assert!(Lease::acquire(&limiter, Slot::Upstream, ONE).await.unwrap().is_ok(), "free after lease_ms");
}
