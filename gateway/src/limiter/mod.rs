//! The limits behind each request, reached through [`RateLimiter`]: one `RL.CHECK` (a policy
//! with one limit) or one `RL.CHECKALL` (several) on Redis ([`RedisLimiter`]), or in unit
//! tests an in-memory stand-in (`memory::MemoryLimiter`).

#[cfg(test)]
pub mod faulty;
#[cfg(test)]
pub mod memory;
mod metered;
pub(crate) mod redis;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use rl_protocol::{AcquireReply, CheckAllReply, CheckReply, RefundReply};

use crate::config::{Policy, Quota};
use crate::lease::Slot;

pub use self::metered::Metered;
pub use self::redis::choose::LIBRARY_ACL;
pub use self::redis::{ClientError, RedisLimiter, CLUSTER_COMMAND_RETRIES};

/// Where the buckets live. The gateway picks one implementation at start and uses it for
/// every request, so the trait is used through generics (static dispatch, no boxed future per
/// request) and need not be object safe.
pub trait RateLimiter: Clone + Send + Sync + Unpin + 'static {
    /// Takes `costs[i]` from the bucket of limit `i` of `policy` for `identity_hash`, all of
    /// them or (when any limit refuses) none, and says what is left: one row per limit, in
    /// the policy's order. `costs` has one entry per limit.
    fn check(
        &self,
        policy: &Policy,
        identity_hash: &str,
        costs: &[u64],
    ) -> impl Future<Output = Result<CheckAllReply, LimiterError>> + Send;

    /// Gives `amount` back to limit `index` of `policy` for `identity_hash` (`RL.REFUND`), never
    /// above its burst.
    fn refund(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        amount: u64,
    ) -> impl Future<Output = Result<RefundReply, LimiterError>> + Send;

    /// Charges `amount` on limit `index` whatever is left (`RL.CHECK ... FORCE`): a debt the
    /// caller pays back by waiting.
    fn force(
        &self,
        policy: &Policy,
        identity_hash: &str,
        index: usize,
        amount: u64,
    ) -> impl Future<Output = Result<CheckReply, LimiterError>> + Send;

    /// Takes `cost` from the shared bucket `quota` (not per caller: `<prefix>upstream:<name>`)
    /// only if at least `keep` tokens remain after it (`RL.CHECK ... KEEP keep`).
    fn check_shared(
        &self,
        quota: &Quota,
        cost: u64,
        keep: u64,
    ) -> impl Future<Output = Result<CheckReply, LimiterError>> + Send;

    /// Takes one of `max` slots of `slot` for the lease `id`, living `lease_ms` (`RL.ACQUIRE`).
    fn acquire(
        &self,
        slot: &Slot,
        max: u64,
        lease_ms: u64,
        id: &str,
    ) -> impl Future<Output = Result<AcquireReply, LimiterError>> + Send;

    /// Ends the lease `id` (`RL.RELEASE`): `true` if it was live.
    fn release(&self, slot: &Slot, id: &str) -> impl Future<Output = Result<bool, LimiterError>> + Send;

    /// Makes the live lease `id` end `lease_ms` from now (`RL.RENEW`): `false` if it had ended.
    fn renew(&self, slot: &Slot, id: &str, lease_ms: u64) -> impl Future<Output = Result<bool, LimiterError>> + Send;

    /// Whether the limiter answers (for `/readyz` and the start-up probe); takes nothing.
    fn ready(&self) -> impl Future<Output = Result<(), LimiterError>> + Send;

    /// Which commands answer (`module`, `functions`, `scripts`), once known; `None` for a
    /// limiter without a choice.
    fn backend(&self) -> Option<&'static str> {
        None
    }
}

/// The limiter did not answer in time, or answered something other than a decision.
#[derive(Debug)]
pub enum LimiterError {
    Timeout(Duration),
    Redis(::redis::RedisError),
    /// Redis answered `ERR unknown command`: the ratelimit module is not loaded there. An
    /// outage for the gateway (it cannot limit), but one that restarting Redis will not fix.
    ModuleMissing(::redis::RedisError),
    /// The Functions library cannot be used or installed (no Functions on this server, or the
    /// gateway's user may not load it: the text says what an administrator runs). Like
    /// [`LimiterError::ModuleMissing`], an outage that waiting will not end.
    LibraryMissing(String),
    /// The module ran and refused the command: its arguments are out of its bounds, or the
    /// key holds something that is not limiter state. Not an outage (Redis answered), so never
    /// a reason to forward a request unmetered; the same command would be refused again.
    Rejected(::redis::RedisError),
    /// The answer is not the shape of the command's reply.
    Reply(::redis::ParsingError),
    /// A settlement named a limit the policy does not have (a bug, never a client's doing).
    NoSuchLimit(usize),
}

impl LimiterError {
    /// Whether the limiter could not be asked (down, slow, broken): `failure_mode` decides
    /// then. A refusal by the module itself ([`LimiterError::Rejected`]) or a reply of the
    /// wrong shape is a fault of this gateway or of the data, never answered by forwarding
    /// unmetered.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            LimiterError::Timeout(_)
                | LimiterError::Redis(_)
                | LimiterError::ModuleMissing(_)
                | LimiterError::LibraryMissing(_)
        )
    }
}

impl fmt::Display for LimiterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimiterError::Timeout(d) => write!(f, "redis did not answer within {} ms", d.as_millis()),
            LimiterError::Redis(e) => write!(f, "redis error: {e}"),
            LimiterError::ModuleMissing(e) => {
                write!(f, "redis answers but the ratelimit module is not loaded there (loadmodule librl.so): {e}")
            }
            LimiterError::LibraryMissing(why) => write!(f, "the ratelimit Functions library cannot be used: {why}"),
            LimiterError::Rejected(e) => write!(f, "the ratelimit module refused the command: {e}"),
            LimiterError::Reply(r) => write!(f, "unexpected reply from the ratelimit module: {r}"),
            LimiterError::NoSuchLimit(i) => write!(f, "the policy has no limit #{i}"),
        }
    }
}

impl std::error::Error for LimiterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LimiterError::Timeout(_) | LimiterError::NoSuchLimit(_) | LimiterError::LibraryMissing(_) => None,
            LimiterError::Redis(e) | LimiterError::Rejected(e) | LimiterError::ModuleMissing(e) => Some(e),
            LimiterError::Reply(e) => Some(e),
        }
    }
}
