//! Loading the module: the command handlers Redis calls, the commands of the table in
//! `lib.rs` created with their flags, legacy key range and key specs, answers to key-position
//! requests, the `ratelimit` ACL category, and the `INFO ratelimit` section.
//!
//! Everything newer than Redis 7.0 is looked up at load time and used only when the server
//! has it, so one binary loads on Redis 7.0, 7.2+ and Valkey.

use std::ffi::{CStr, CString};
use std::ops::Range;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::{raw, Context, RedisString, Status};

use super::{key, run_command, Argv, Body, RawArgs, RawCtx};
use crate::error::MAX_ECHOED_BYTES;
use crate::stats;

/// One command of the module: what `lib.rs`'s table lists.
pub struct CommandSpec {
    pub name: &'static CStr,
    /// Made by `handler!` from the command's body.
    pub handler: Handler,
    /// Redis command flags (`write deny-oom fast`, ...); `getkeys-api` is added for
    /// [`Keys::Counted`].
    pub flags: &'static str,
    pub keys: Keys,
}

/// Where a command's keys are, and what it does with them. The legacy first/last/step key
/// range, the `getkeys-api` flag and the key spec are all derived from this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// No keys.
    None,
    /// One key, the first argument.
    First(KeyAccess),
    /// `numkeys` as the first argument, then that many keys; the handler names them when Redis
    /// asks (`getkeys-api`), so it must be made with `handler!(body, key_positions: ...)`.
    Counted(KeyAccess),
}

/// What a command does with its keys, for ACL key permissions (`%R~rl:*` allows only reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAccess {
    Read,
    Update,
    Delete,
}

impl Keys {
    /// The legacy `(first key, last key, step)`, for servers and clients without key specs.
    /// A counted command declares its first key; Redis asks the handler for the others.
    pub fn legacy_range(self) -> (c_int, c_int, c_int) {
        match self {
            Keys::None => (0, 0, 0),
            Keys::First(_) => (1, 1, 1),
            Keys::Counted(_) => (2, 2, 1),
        }
    }

    /// The command flags to register: `flags`, plus `getkeys-api` for a counted command.
    pub fn flags(self, flags: &str) -> String {
        match self {
            Keys::Counted(_) => format!("{flags} getkeys-api"),
            Keys::None | Keys::First(_) => flags.to_owned(),
        }
    }
}

impl KeyAccess {
    fn key_spec_flags(self) -> u32 {
        match self {
            KeyAccess::Read => raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS,
            KeyAccess::Update => {
                raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_ACCESS | raw::REDISMODULE_CMD_KEY_UPDATE
            }
            KeyAccess::Delete => raw::REDISMODULE_CMD_KEY_RM | raw::REDISMODULE_CMD_KEY_DELETE,
        }
    }
}

/// A command handler as Redis calls it.
#[derive(Clone, Copy)]
pub struct Handler {
    pub call: extern "C" fn(RawCtx, Argv, c_int) -> c_int,
    /// Whether it answers key-position requests, as a [`Keys::Counted`] command's must.
    pub answers_key_positions: bool,
}

/// The [`Handler`] of a command body: `handler!(commands::check::run)`, or for a command
/// whose keys Redis asks for, `handler!(body, key_positions: fn(&line) -> Range<usize>)`.
macro_rules! handler {
    ($body:expr) => {{
        extern "C" fn handler(
            ctx: $crate::ffi::RawCtx,
            argv: $crate::ffi::Argv,
            argc: ::std::os::raw::c_int,
        ) -> ::std::os::raw::c_int {
            // SAFETY: these are the arguments Redis passes to a command handler.
            unsafe { $crate::ffi::run_command(ctx, argv, argc, $body) }
        }
        $crate::ffi::register::Handler { call: handler, answers_key_positions: false }
    }};
    ($body:expr, key_positions: $positions:expr) => {{
        extern "C" fn handler(
            ctx: $crate::ffi::RawCtx,
            argv: $crate::ffi::Argv,
            argc: ::std::os::raw::c_int,
        ) -> ::std::os::raw::c_int {
            // SAFETY: these are the arguments Redis passes to a command handler.
            unsafe { $crate::ffi::register::run_or_name_keys(ctx, argv, argc, $positions, $body) }
        }
        $crate::ffi::register::Handler { call: handler, answers_key_positions: true }
    }};
}
pub(crate) use handler;

/// Where a command's keys are on its line (`commands::checkall::key_positions`).
pub type KeyPositions = fn(&RawArgs) -> Range<usize>;

/// Redis asks a `getkeys-api` command for its keys (COMMAND GETKEYS, Cluster slot checks, ACL
/// key patterns) by calling its handler in "keys position request" mode: then this names the
/// keys `positions` finds; otherwise it runs the command.
///
/// # Safety
/// `ctx`, `argv` and `argc` must be the arguments Redis passed to a command handler.
pub unsafe fn run_or_name_keys(ctx: RawCtx, argv: Argv, argc: c_int, positions: KeyPositions, body: Body) -> c_int {
    let is_keys_request = raw::RedisModule_IsKeysPositionRequest.is_some_and(|f| f(ctx) != 0);
    if !is_keys_request {
        return run_command(ctx, argv, argc, body);
    }
    let args = RawArgs::new(argv, argc);
    // Behind the panic guard too: a bug here declares no keys instead of aborting the server.
    let positions = catch_unwind(AssertUnwindSafe(|| positions(&args))).unwrap_or(0..0);
    if let Some(key_at) = raw::RedisModule_KeyAtPos {
        for pos in positions {
            if let Ok(pos) = c_int::try_from(pos) {
                key_at(ctx, pos);
            }
        }
    }
    raw::REDISMODULE_OK as c_int
}

/// The ACL category the commands join where the server can add module categories
/// (Redis 7.4+, Valkey 8+): `ACL SETUSER gw on >secret ~* +@ratelimit`.
const ACL_CATEGORY: &CStr = c"ratelimit";

/// `loadmodule librl.so debug-commands` also registers the debug command, which exists to
/// prove in tests that the panic guard works; production configs never pass it.
const DEBUG_COMMANDS_ARG: &str = "debug-commands";

/// The module's OnLoad, after redis-module has bound the API: creates `commands` (and
/// `debug_command` when the module argument asks for it) and the INFO section.
/// The module's name (`MODULE LIST`, `INFO ratelimit`).
pub const MODULE_NAME: &CStr = c"ratelimit";
const MODULE_VERSION: c_int = 1;

/// Called by Redis when it loads the module: [`on_load`] with `lib.rs`'s table.
///
/// # Safety
/// Only Redis calls it, with its context and arguments.
#[no_mangle]
#[allow(non_snake_case)]
pub unsafe extern "C" fn RedisModule_OnLoad(ctx: RawCtx, argv: *mut *mut raw::RedisModuleString, argc: c_int) -> c_int {
    unsafe { on_load(ctx, argv, argc, &crate::COMMANDS, &crate::DEBUG_COMMAND) }
}

/// What Redis calls when it loads the module (`--loadmodule`, `MODULE LOAD`), written here
/// rather than by redis-module's `redis_module!` macro for one thing the macro cannot do: say
/// why a second load fails. Redis refuses it inside `RedisModule_Init` (the name is taken),
/// before any module code runs, and logs only "initialization failed"; the module API is bound
/// by then, so the reason can be logged here. The rest is what the macro did for this module:
/// the module context, the arguments, then [`load`].
///
/// # Safety
/// Redis calls it with its context and arguments, once per load.
pub unsafe fn on_load(
    ctx: RawCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    commands: &[CommandSpec],
    debug_command: &CommandSpec,
) -> c_int {
    let status = unsafe {
        raw::Export_RedisModule_Init(ctx, MODULE_NAME.as_ptr(), MODULE_VERSION, raw::REDISMODULE_APIVER_1 as c_int)
    };
    if status == raw::Status::Err as c_int {
        let busy = match unsafe { raw::RedisModule_IsModuleNameBusy } {
            Some(is_busy) => (unsafe { is_busy(MODULE_NAME.as_ptr()) }) != 0,
            None => false,
        };
        if busy {
            if let Some(log) = unsafe { raw::RedisModule_Log } {
                let message = c"ratelimit not loaded: a module named ratelimit is loaded already (MODULE LIST); \
                    MODULE UNLOAD ratelimit first to load another build";
                unsafe { log(ctx, c"warning".as_ptr(), c"%s".as_ptr(), message.as_ptr()) };
            }
        }
        return raw::Status::Err as c_int;
    }
    let context = Context::new(ctx);
    let _ = redis_module::MODULE_CONTEXT.set_context(&context);
    let args = redis_module::decode_args(ctx, argv, argc);
    load(&context, &args, commands, debug_command) as c_int
}

pub fn load(ctx: &Context, args: &[RedisString], commands: &[CommandSpec], debug_command: &CommandSpec) -> Status {
    // An argument the module does not know (a typo of `debug-commands`, say) is refused, not
    // ignored: Redis says only that the module failed to load, so the reason is logged.
    if let Some(unknown) = args.iter().find(|a| !a.as_slice().eq_ignore_ascii_case(DEBUG_COMMANDS_ARG.as_bytes())) {
        let shown = String::from_utf8_lossy(unknown.as_slice().get(..MAX_ECHOED_BYTES).unwrap_or(unknown.as_slice()))
            .into_owned();
        ctx.log_warning(&format!(
            "not loaded: unknown module argument '{shown}' (the only argument is {DEBUG_COMMANDS_ARG})"
        ));
        return Status::Err;
    }
    let debug = !args.is_empty();
    if !key::init_strings() {
        ctx.log_warning("not loaded: could not create the module's strings");
        return Status::Err;
    }
    let log = ctx;
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
        for spec in commands.iter().chain(debug.then_some(debug_command)) {
            if !create_command(ctx, spec, with_category && !debug_command.name.eq(spec.name)) {
                // The usual reason: the module (or another defining these commands) is loaded
                // already; a second MODULE LOAD would otherwise fail without one.
                log.log_warning(&format!(
                    "not loaded: Redis refused to create the command {}; a command of that name is defined \
                     already (by another module? see MODULE LIST)",
                    spec.name.to_string_lossy()
                ));
                return Status::Err;
            }
        }
        if let Some(register_info) = raw::RedisModule_RegisterInfoFunc {
            register_info(ctx, Some(info));
        }
    }
    Status::Ok
}

/// Creates one command with its derived flags and key range, declares its key spec, and
/// puts it in the ACL category when asked. False if Redis refused the command.
///
/// # Safety
/// Call while the module loads.
unsafe fn create_command(ctx: RawCtx, spec: &CommandSpec, with_category: bool) -> bool {
    let Some(create) = raw::RedisModule_CreateCommand else { return false };
    let Ok(flags) = CString::new(spec.keys.flags(spec.flags)) else { return false };
    let (first, last, step) = spec.keys.legacy_range();
    let handler: raw::RedisModuleCmdFunc = Some(spec.handler.call);
    if create(ctx, spec.name.as_ptr(), handler, flags.as_ptr(), first, last, step) != raw::REDISMODULE_OK as c_int {
        return false;
    }
    declare_keys(ctx, spec.name, spec.keys);
    if with_category {
        if let (Some(get), Some(set_categories)) =
            (raw::RedisModule_GetCommand, raw::RedisModule_SetCommandACLCategories)
        {
            let command = get(ctx, spec.name.as_ptr());
            if !command.is_null() {
                set_categories(command, ACL_CATEGORY.as_ptr());
            }
        }
    }
    true
}

/// Declares a command's key spec (Redis 7.0+), so that ACL key permissions know what it does:
/// a user with read-only access to `rl:*` (`%R~rl:*`) may run RL.PEEK there and nothing that
/// writes. Redis copies the spec; nothing here has to outlive the call.
///
/// # Safety
/// Call while the module loads, after the command was created.
unsafe fn declare_keys(ctx: RawCtx, name: &CStr, keys: Keys) {
    let (access, find_keys_type, fk) = match keys {
        Keys::None => return,
        Keys::First(access) => (
            access,
            raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE,
            raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
                range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 { lastkey: 0, keystep: 1, limit: 0 },
            },
        ),
        Keys::Counted(access) => (
            access,
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
    let (Some(get), Some(set_info)) = (raw::RedisModule_GetCommand, raw::RedisModule_SetCommandInfo) else {
        return;
    };
    let command = get(ctx, name.as_ptr());
    if command.is_null() {
        return;
    }
    let spec = raw::RedisModuleCommandKeySpec {
        notes: std::ptr::null(),
        flags: u64::from(access.key_spec_flags()),
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

/// The `INFO` callback: one section named after the module (`INFO ratelimit`), fields
/// prefixed `ratelimit_` by Redis.
extern "C" fn info(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: c_int) {
    unsafe {
        let (Some(section), Some(field)) = (raw::RedisModule_InfoAddSection, raw::RedisModule_InfoAddFieldULongLong)
        else {
            return;
        };
        section(ctx, std::ptr::null());
        for (name, value) in stats::fields() {
            field(ctx, name.as_ptr(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legacy_key_range_and_flags_follow_from_the_key_layout() {
        assert_eq!(Keys::First(KeyAccess::Update).legacy_range(), (1, 1, 1));
        assert_eq!(Keys::Counted(KeyAccess::Update).legacy_range(), (2, 2, 1));
        assert_eq!(Keys::None.legacy_range(), (0, 0, 0));
        assert_eq!(Keys::First(KeyAccess::Read).flags("readonly fast"), "readonly fast");
        assert_eq!(Keys::Counted(KeyAccess::Update).flags("write fast"), "write fast getkeys-api");
    }

    #[test]
    fn exactly_the_counted_commands_answer_key_position_requests() {
        for spec in crate::COMMANDS.iter().chain([&crate::DEBUG_COMMAND]) {
            assert_eq!(
                spec.handler.answers_key_positions,
                matches!(spec.keys, Keys::Counted(_)),
                "{:?}: a command with counted keys needs handler!(body, key_positions: ...)",
                spec.name
            );
            assert!(!spec.flags.contains("getkeys-api"), "{:?}: getkeys-api is derived from the keys", spec.name);
        }
    }
}
