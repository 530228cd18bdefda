//! ml-api-rate-limiter: a Redis module with atomic GCRA rate-limit commands.
//!
//! This file is the registration table. The pure parts ([`gcra`], [`state`], [`args`]) know
//! nothing of Redis; [`ffi`] is the only place that calls the module API; each command in
//! [`commands`] reads top to bottom.
//!
//! A panic inside Redis aborts the server, so module code may not `unwrap`, `expect` or
//! index where input could reach (tests may).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

mod alloc;
pub mod args;
pub mod commands;
pub mod error;
pub mod ffi;
pub mod gcra;
pub mod state;
pub mod stats;

use std::ffi::CStr;
use std::os::raw::c_int;

use redis_module::{raw, redis_module, Context, RedisString, Status};

use crate::ffi::{run_command, Argv, RawCtx};

/// The ACL category the commands join where the server can add module categories
/// (Redis 7.4+, Valkey 8+): `ACL SETUSER gw on >secret ~* +@ratelimit`.
const ACL_CATEGORY: &CStr = c"ratelimit";

macro_rules! handler {
    ($name:ident, $body:path) => {
        extern "C" fn $name(ctx: RawCtx, argv: Argv, argc: c_int) -> c_int {
            // SAFETY: these are the arguments Redis passes to a command handler.
            unsafe { run_command(ctx, argv, argc, $body) }
        }
    };
}

handler!(rl_check, commands::check::run);
handler!(rl_checkall, commands::checkall::run);
handler!(rl_peek, commands::peek::run);
handler!(rl_refund, commands::refund::run);
handler!(rl_reset, commands::reset::run);
handler!(cl_throttle, commands::throttle::run);
handler!(rl_debug, commands::debug::run);

/// RL.CHECKALL's keys follow `numkeys`; Redis asks for them (COMMAND GETKEYS, Cluster slot
/// checks, ACL key patterns) by calling the handler in "keys position request" mode.
extern "C" fn rl_checkall_entry(ctx: RawCtx, argv: Argv, argc: c_int) -> c_int {
    let is_keys_request = unsafe { raw::RedisModule_IsKeysPositionRequest }.is_some_and(|f| unsafe { f(ctx) } != 0);
    if !is_keys_request {
        return rl_checkall(ctx, argv, argc);
    }
    // SAFETY: Redis's own arguments to this handler.
    let numkeys = unsafe { ffi::checkall_numkeys(argv, argc) };
    if let Some(key_at) = unsafe { raw::RedisModule_KeyAtPos } {
        for pos in 2..2 + numkeys {
            unsafe { key_at(ctx, pos as c_int) };
        }
    }
    raw::REDISMODULE_OK as c_int
}

type Handler = extern "C" fn(RawCtx, Argv, c_int) -> c_int;

/// Where a command's keys are, and what it does with them.
#[derive(Clone, Copy)]
enum Keys {
    /// One key, the first argument.
    First(u32),
    /// `numkeys` as the first argument, then that many keys.
    Counted(u32),
}

const READS: u32 = raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS;
const UPDATES: u32 = raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_ACCESS | raw::REDISMODULE_CMD_KEY_UPDATE;
const DELETES: u32 = raw::REDISMODULE_CMD_KEY_RM | raw::REDISMODULE_CMD_KEY_DELETE;

/// name, handler, flags, first key, last key, key step, key spec. The legacy key range serves
/// servers without key specs; RL.CHECKALL's keys follow `numkeys`, found by `getkeys-api`.
const COMMANDS: [(&CStr, Handler, &CStr, c_int, c_int, c_int, Keys); 6] = [
    (c"RL.CHECK", rl_check, c"write deny-oom fast", 1, 1, 1, Keys::First(UPDATES)),
    (c"RL.CHECKALL", rl_checkall_entry, c"write deny-oom fast getkeys-api", 2, 2, 1, Keys::Counted(UPDATES)),
    (c"RL.PEEK", rl_peek, c"readonly fast", 1, 1, 1, Keys::First(READS)),
    (c"RL.REFUND", rl_refund, c"write deny-oom fast", 1, 1, 1, Keys::First(UPDATES)),
    (c"RL.RESET", rl_reset, c"write fast", 1, 1, 1, Keys::First(DELETES)),
    (c"CL.THROTTLE", cl_throttle, c"write deny-oom fast", 1, 1, 1, Keys::First(UPDATES)),
];

/// Declares a command's key spec (Redis 7.0+), so that ACL key permissions know what it does:
/// a user with read-only access to `rl:*` (`%R~rl:*`) may run RL.PEEK there and nothing that
/// writes. Redis copies the spec; nothing here has to outlive the call.
///
/// # Safety
/// Call during `RedisModule_OnLoad`, after the command was created.
unsafe fn declare_keys(ctx: *mut raw::RedisModuleCtx, name: &CStr, keys: Keys) {
    let (Some(get), Some(set_info)) = (raw::RedisModule_GetCommand, raw::RedisModule_SetCommandInfo) else {
        return;
    };
    let command = get(ctx, name.as_ptr());
    if command.is_null() {
        return;
    }
    let (flags, find_keys_type, fk) = match keys {
        Keys::First(flags) => (
            flags,
            raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE,
            raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
                range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 { lastkey: 0, keystep: 1, limit: 0 },
            },
        ),
        Keys::Counted(flags) => (
            flags,
            raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_KEYNUM,
            raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
                keynum: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_2 {
                    keynumidx: 0,
                    firstkey: 1,
                    keystep: 1,
                },
            },
        ),
    };
    let spec = raw::RedisModuleCommandKeySpec {
        notes: std::ptr::null(),
        flags: u64::from(flags),
        begin_search_type: raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX,
        bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
            index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 { pos: 1 },
        },
        find_keys_type,
        fk,
    };
    // The list ends with an all-zero spec.
    let mut specs = [spec, std::mem::zeroed()];
    let version = raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
    };
    let mut info: raw::RedisModuleCommandInfo = std::mem::zeroed();
    info.version = &version;
    info.key_specs = specs.as_mut_ptr();
    set_info(command, &info);
}

/// `loadmodule librl.so debug-commands` also registers RL.DEBUG, which exists to prove in tests
/// that the panic guard works; production configs never pass it.
const DEBUG_COMMANDS_ARG: &str = "debug-commands";

fn init(ctx: &Context, args: &[RedisString]) -> Status {
    let debug = args.iter().any(|a| a.as_slice().eq_ignore_ascii_case(DEBUG_COMMANDS_ARG.as_bytes()));
    if !ffi::init_strings() {
        return Status::Err;
    }
    let ctx = ctx.ctx;
    unsafe {
        // Commands signal the keys they really modify: a refused check must not disturb WATCH.
        // The module keeps no data of its own, so replicas may load the RDB asynchronously
        // (`repl-diskless-load swapdb`).
        if let Some(set_options) = raw::RedisModule_SetModuleOptions {
            let options =
                raw::REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED | raw::REDISMODULE_OPTIONS_HANDLE_REPL_ASYNC_LOAD;
            set_options(ctx, options as c_int);
        }
        let with_category = match raw::RedisModule_AddACLCategory {
            Some(add) => add(ctx, ACL_CATEGORY.as_ptr()) == raw::REDISMODULE_OK as c_int,
            None => false,
        };
        let Some(create) = raw::RedisModule_CreateCommand else { return Status::Err };
        for (name, handler, flags, first, last, step, keys) in COMMANDS {
            if create(ctx, name.as_ptr(), Some(handler), flags.as_ptr(), first, last, step)
                != raw::REDISMODULE_OK as c_int
            {
                return Status::Err;
            }
            declare_keys(ctx, name, keys);
            if with_category {
                if let (Some(get), Some(set_categories)) =
                    (raw::RedisModule_GetCommand, raw::RedisModule_SetCommandACLCategories)
                {
                    let command = get(ctx, name.as_ptr());
                    if !command.is_null() {
                        set_categories(command, ACL_CATEGORY.as_ptr());
                    }
                }
            }
        }
        if debug
            && create(ctx, c"RL.DEBUG".as_ptr(), Some(rl_debug), c"readonly".as_ptr(), 0, 0, 0)
                != raw::REDISMODULE_OK as c_int
        {
            return Status::Err;
        }
        if let Some(register_info) = raw::RedisModule_RegisterInfoFunc {
            register_info(ctx, Some(stats::info));
        }
    }
    Status::Ok
}

redis_module! {
    name: "ratelimit",
    version: 1,
    allocator: (alloc::ModuleAlloc, alloc::ModuleAlloc),
    data_types: [],
    init: init,
}
