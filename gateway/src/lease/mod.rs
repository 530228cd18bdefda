//! Concurrency leases (`RL.ACQUIRE` / `RL.RENEW` / `RL.RELEASE`): a request holds one slot of a
//! [`Slot`] from the moment the rate limits admit it until its response body ends, the client
//! goes away (the body is dropped) or the upstream fails (the error answer's body ends).
//!
//! A [`Lease`] is a guard: while it lives a task renews it every `lease_ms / 3`; dropping it
//! stops the renewals and spawns one `RL.RELEASE` (fire and forget, never awaited by the
//! response, and exactly once, since a value is dropped once). A gateway that dies without
//! releasing loses nothing for good: its leases end `lease_ms` after their last renewal.
//! [`LeasedBody`] carries the leases inside a response body and drops them when it ends.

mod admit;
mod body;
mod hint;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rl_protocol::AcquireReply;

use crate::limiter::{LimiterError, RateLimiter};
use crate::log_limit::warn_every;
use crate::metrics::metrics;

pub use admit::{append_items, refusal_answer, take_leases, Refusal, UpstreamLimits};
pub use body::LeasedBody;
pub use hint::{hold_times, HoldTimes};

/// Which set of slots a lease is taken in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// One caller's requests in flight under one policy: `<prefix>{<hash>}:<policy>:concurrent`,
    /// in the same Cluster slot as the caller's rate limits.
    Caller { policy: String, identity_hash: String },
    /// Every request in flight to the upstream, across all gateways: `<prefix>upstream:concurrent`.
    Upstream,
}

impl Slot {
    /// `caller` or `upstream`: the `slot` label of `gateway_leases_in_flight`.
    pub fn kind(&self) -> &'static str {
        match self {
            Slot::Caller { .. } => "caller",
            Slot::Upstream => "upstream",
        }
    }
}

/// The name of a caller's lease set under a policy (`<policy>:concurrent`), so no limit of a
/// policy with `max_concurrent` may have this name.
pub const CONCURRENT_NAME: &str = "concurrent";

/// `max_concurrent` and `lease_ms` of a policy (or of `[upstream]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concurrency {
    /// Slots, 1..=10000.
    pub max: u64,
    /// How long a lease lives without renewal, in ms (1..=86400000).
    pub lease_ms: u64,
}

/// A lease id unique to this request across every gateway: a random 64-bit prefix chosen once
/// per process, then a counter (`gw-<16 hex>-<n>`).
pub fn new_id() -> String {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let process = *PROCESS.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let random = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        match random {
            Ok(()) => u64::from_le_bytes(bytes),
            // No system randomness: the clock still tells processes apart in practice.
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0)),
        }
    });
    format!("gw-{process:016x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A held lease: renewed while it lives, released (once) when dropped.
pub struct Lease<L: RateLimiter> {
    inner: Option<Held<L>>,
}

struct Held<L: RateLimiter> {
    limiter: L,
    slot: Arc<Slot>,
    id: Arc<str>,
    renewals: tokio::task::JoinHandle<()>,
    acquired_at: Instant,
    /// Set once its request went on to the model: only such holds tell how long a slot
    /// stays taken (one dropped because the next lease was refused does not).
    served: bool,
}

impl<L: RateLimiter> Lease<L> {
    /// Tries to take a slot of `slot`: `Ok(Ok(lease))` when taken, `Ok(Err(reply))` when all
    /// `max` are in use.
    pub async fn acquire(
        limiter: &L,
        slot: Slot,
        concurrency: Concurrency,
    ) -> Result<Result<Lease<L>, AcquireReply>, LimiterError> {
        let id: Arc<str> = new_id().into();
        let reply = limiter.acquire(&slot, concurrency.max, concurrency.lease_ms, &id).await?;
        if !reply.acquired {
            return Ok(Err(reply));
        }
        metrics().lease_held(slot.kind(), 1);
        let slot = Arc::new(slot);
        let renewals = tokio::spawn(renew(limiter.clone(), slot.clone(), id.clone(), concurrency.lease_ms));
        let held = Held { limiter: limiter.clone(), slot, id, renewals, acquired_at: Instant::now(), served: false };
        Ok(Ok(Lease { inner: Some(held) }))
    }

    /// Its request went on to the model: its hold counts in the retry hints ([`HoldTimes`]).
    pub fn serving(&mut self) {
        if let Some(held) = &mut self.inner {
            held.served = true;
        }
    }
}

/// Renews every `lease_ms / 3` (at least 1 ms) until the lease is gone: the task is aborted
/// when the lease is dropped, and stops by itself when a renewal finds the lease ended.
async fn renew<L: RateLimiter>(limiter: L, slot: Arc<Slot>, id: Arc<str>, lease_ms: u64) {
    let every = Duration::from_millis((lease_ms / 3).max(1));
    loop {
        tokio::time::sleep(every).await;
        match limiter.renew(&slot, &id, lease_ms).await {
            Ok(true) => {}
            Ok(false) => {
                warn_every!(?slot, %id, "lease ended before its request did: no longer renewed");
                return;
            }
            // A failed renewal is tried again at the next tick; the lease is still live for now.
            Err(e) => warn_every!(?slot, %id, error = %e, "lease renewal failed"),
        }
    }
}

impl<L: RateLimiter> Drop for Lease<L> {
    fn drop(&mut self) {
        let Some(Held { limiter, slot, id, renewals, acquired_at, served }) = self.inner.take() else { return };
        renewals.abort();
        if served {
            hold_times().record(&slot, acquired_at.elapsed());
        }
        // No longer in flight here, whether or not the release below reaches Redis.
        metrics().lease_held(slot.kind(), -1);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime (shutdown): the lease ends by itself after lease_ms.
            return;
        };
        runtime.spawn(async move {
            match limiter.release(&slot, &id).await {
                Ok(released) => tracing::debug!(?slot, %id, released, "lease released"),
                Err(e) => warn_every!(?slot, %id, error = %e, "lease release failed; it ends by itself"),
            }
        });
    }
}

#[cfg(test)]
mod tests;
