//! The global allocator: Redis's allocator inside a server (so module memory shows in
//! `INFO memory` and counts towards `maxmemory`), the system allocator everywhere else (unit
//! tests and benchmarks link this crate without a server and would otherwise abort).
//!
//! The choice cannot flip for a live allocation: the Redis API is bound during
//! `RedisModule_OnLoad` before the module allocates anything, and never unbound; and it
//! depends otherwise only on the layout, which `dealloc` receives too.
//!
//! Redis's allocator only promises the alignment of its `malloc` (8 bytes on a libc build
//! that prefixes sizes), so over-aligned types (anything holding a `u128`) always go to the
//! system allocator.

use std::alloc::{GlobalAlloc, Layout, System};

use redis_module::alloc::RedisAlloc;
use redis_module::raw;

pub struct ModuleAlloc;

/// The allocator of every allocation of the module (and of the tests that link it).
#[global_allocator]
static ALLOCATOR: ModuleAlloc = ModuleAlloc;

/// The alignment every malloc gives, whatever the build.
const REDIS_ALIGN: usize = 8;

fn use_redis(layout: Layout) -> bool {
    // SAFETY: a plain read of a function pointer Redis sets once, before any command runs.
    layout.align() <= REDIS_ALIGN && unsafe { raw::RedisModule_Alloc }.is_some()
}

unsafe impl GlobalAlloc for ModuleAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if use_redis(layout) {
            RedisAlloc.alloc(layout)
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if use_redis(layout) {
            RedisAlloc.dealloc(ptr, layout)
        } else {
            System.dealloc(ptr, layout)
        }
    }
}
