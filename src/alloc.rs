//! The global allocator: Redis's allocator inside a server (so module memory shows in
//! `INFO memory` and counts towards `maxmemory`), the system allocator everywhere else (unit
//! tests and benchmarks link this crate without a server and would otherwise abort).
//!
//! The choice cannot flip for a live allocation: the Redis API is bound during
//! `RedisModule_OnLoad` before the module allocates anything, and never unbound.

use std::alloc::{GlobalAlloc, Layout, System};

use redis_module::alloc::RedisAlloc;
use redis_module::raw;

pub struct ModuleAlloc;

fn inside_redis() -> bool {
    // SAFETY: a plain read of a function pointer Redis sets once, before any command runs.
    unsafe { raw::RedisModule_Alloc }.is_some()
}

unsafe impl GlobalAlloc for ModuleAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if inside_redis() {
            RedisAlloc.alloc(layout)
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if inside_redis() {
            RedisAlloc.dealloc(ptr, layout)
        } else {
            System.dealloc(ptr, layout)
        }
    }
}
