//! Allocator tuning. Every ringmesh binary uses mimalloc as its global allocator (DESIGN.md);
//! this module sets the one mimalloc option whose default costs a node proxy real memory.
//!
//! mimalloc commits its first arena eagerly on overcommitting systems (option
//! `arena_eager_commit`, default 2 = "on where the kernel overcommits", which Linux does).
//! Measured on an idle `ringmesh run` node (2 workers, 8 threads): 11.0 MiB of anonymous
//! memory with the default, 1.5 MiB with eager commit off, the difference being one
//! 10 MiB committed arena. Pages are then committed as they are used, which is what a
//! per-node proxy, billed by resident memory, wants.

/// `mi_option_arena_eager_commit` in mimalloc v3's `mi_option_e` (include/mimalloc.h).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Makes "no eager arena commit" mimalloc's default; the `MIMALLOC_ARENA_EAGER_COMMIT`
/// environment variable still overrides it. Runs from the ELF `.init_array` (see
/// [`TUNE_AT_LOAD`]) so that it precedes the first allocation of the Rust runtime, which
/// is where mimalloc reserves its first arena; calling it again later is harmless.
pub fn tune_mimalloc() {
    // SAFETY: mi_option_set_default stores an integer default in mimalloc's option table; it
    // takes no pointers, needs no initialised allocator, and 0 is a documented value of this
    // option.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_ARENA_EAGER_COMMIT, 0) }
}

/// Returns the memory the calling thread's heap holds free to the OS (mimalloc's
/// `mi_collect(false)`: delayed purges run now, empty pages are released).
///
/// mimalloc purges freed pages lazily, when the thread allocates again; a worker that goes
/// quiet after a burst would otherwise keep its peak resident. Cheap on an idle heap (it
/// walks the thread's pages once); workers call it about once a second.
pub fn collect() {
    // SAFETY: mi_collect takes no pointers and acts on the calling thread's own heap, which
    // mimalloc creates on demand; `force = false` only purges memory that is free.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

extern "C" fn tune_at_load() {
    tune_mimalloc();
}

/// Registered as a load-time constructor of every binary that links this crate. It must
/// not allocate (no allocator may be touched before the option is set), and it does not.
// SAFETY (for the `unsafe` attribute): `.init_array` holds pointers to `extern "C" fn()`
// constructors run by the loader before `main`; this static is exactly one such pointer.
#[used]
#[unsafe(link_section = ".init_array")]
pub static TUNE_AT_LOAD: extern "C" fn() = tune_at_load;
