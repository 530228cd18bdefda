//! The `ratelimit` module's commands as a contract, for the module and for its clients (the
//! gateway, the tests):
//!
//! - [`bounds`]: what the module accepts as arguments, in one place. The module checks its
//!   arguments against these, and the gateway checks its configuration against the same, at
//!   start and on reload, so a setting the module would refuse never starts.
//! - the replies as typed values ([`CheckReply`], [`CheckAllReply`], ...), decoded with the
//!   `redis` crate (the default feature `replies`; the module itself, which writes replies and
//!   never reads them, builds without it).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod bounds;
#[cfg(feature = "replies")]
mod replies;

#[cfg(feature = "replies")]
pub use replies::{AcquireReply, CheckAllReply, CheckReply, RefundReply, ThrottleReply};
