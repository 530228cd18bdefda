//! ml-api-rate-limiter: a Redis module with atomic GCRA rate-limit commands.
//!
//! This file is the table of commands and little else. The pure parts ([`gcra`], [`state`],
//! [`args`], [`reply`]) know nothing of Redis; each command in [`commands`] reads top to
//! bottom and reaches state only through the [`store::Store`] trait; [`ffi`] is the only
//! place that calls the module API (a unit test there fails if anything else names one of
//! its functions).
//!
//! A panic inside Redis aborts the server, so module code may not `unwrap`, `expect` or
//! index where input could reach (tests may): `unwrap` and `expect` are denied for the
//! whole workspace (Cargo.toml), indexing here.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod args;
pub mod commands;
pub mod error;
pub mod ffi;
/// The fuzz targets' bodies (see `fuzz/`); not part of the module's API.
#[doc(hidden)]
pub mod fuzz_targets;
pub mod gcra;
pub mod lease;
pub mod reply;
pub mod state;
pub mod stats;
pub mod store;

use crate::ffi::register::KeyAccess::{Delete, Read, Update};
use crate::ffi::register::{handler, CommandSpec, Keys};

// The commands are registered through the raw module API rather than redis-module's
// `#[command]` macro: that macro's registration needs SetCommandACLCategories (Redis 7.2+) and
// refuses to load without it, as do `redis_command!`'s ACL-category arguments, and we support
// Redis 7.0. `ffi::register` adds key specs, `getkeys-api` and the `ratelimit` ACL category only
// where the server has them. Each command's legacy first/last/step key range and
// `getkeys-api` flag are derived from its `keys`.
pub(crate) const COMMANDS: [CommandSpec; 9] = [
    CommandSpec {
        name: c"RL.CHECK",
        handler: handler!(commands::check::run),
        flags: "write deny-oom fast",
        keys: Keys::First(Update),
    },
    CommandSpec {
        name: c"RL.CHECKALL",
        handler: handler!(commands::checkall::run, key_positions: commands::checkall::key_positions),
        flags: "write deny-oom fast",
        keys: Keys::Counted(Update),
    },
    CommandSpec {
        name: c"RL.PEEK",
        handler: handler!(commands::peek::run),
        flags: "readonly fast",
        keys: Keys::First(Read),
    },
    CommandSpec {
        name: c"RL.REFUND",
        handler: handler!(commands::refund::run),
        flags: "write deny-oom fast",
        keys: Keys::First(Update),
    },
    CommandSpec {
        name: c"RL.RESET",
        handler: handler!(commands::reset::run),
        flags: "write fast",
        keys: Keys::First(Delete),
    },
    // The lease commands purge expired leases as they go: at most `lease::MAX_LEASES` members
    // per call (amortised one per lease ever taken), so they are not flagged `fast`.
    CommandSpec {
        name: c"RL.ACQUIRE",
        handler: handler!(commands::acquire::run),
        flags: "write deny-oom",
        keys: Keys::First(Update),
    },
    CommandSpec {
        name: c"RL.RELEASE",
        handler: handler!(commands::release::run),
        flags: "write",
        keys: Keys::First(Update),
    },
    CommandSpec {
        name: c"RL.RENEW",
        handler: handler!(commands::renew::run),
        // Not `deny-oom`, like RL.RELEASE: under memory pressure a holder must still be able
        // to keep its slot (a refused renewal would let its lease end and over-admit).
        flags: "write",
        keys: Keys::First(Update),
    },
    CommandSpec {
        name: c"CL.THROTTLE",
        handler: handler!(commands::throttle::run),
        flags: "write deny-oom fast",
        keys: Keys::First(Update),
    },
];

/// Registered only with the module argument `debug-commands`, for the tests of the panic guard.
pub(crate) const DEBUG_COMMAND: CommandSpec =
    CommandSpec { name: c"RL.DEBUG", handler: handler!(commands::debug::run), flags: "readonly", keys: Keys::None };
