//! The relay binary's global allocator (issue 20, BENCHMARKS.md "After a burst of connections").
//!
//! A relay runs for months and sees bursts: thousands of short streams whose buffers are freed a
//! moment later. glibc's malloc keeps that freed heap resident (130-167 MiB with 3 MiB in use
//! after 40,000 short connections). jemalloc with a background thread hands dirty pages back to
//! the kernel on a timer, whether or not the relay allocates again; mimalloc is built in for the
//! comparison only. The choice is the relay crate's cargo features: `jemalloc` (default),
//! `mimalloc`, or neither (`--no-default-features`: the system allocator). Only the binary links
//! an allocator: the library, its tests and the agent keep the system one.
//!
//! What this module must never do: fail start-up. A tuning knob jemalloc refuses is logged and
//! the relay runs with jemalloc's defaults.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long jemalloc keeps a freed (dirty) page before its background thread purges it, ms.
/// jemalloc's default is 10 s along a smooth curve, so a burst's pages would still be
/// half-resident seconds later; 1 s keeps a steady load's pages reused (the allocator's hot set
/// churns well within a second) and gives a burst back within a few seconds.
#[cfg(feature = "jemalloc")]
pub const DIRTY_DECAY_MS: isize = 1000;

/// The allocator this binary was built with, for the start-up log line.
pub const NAME: &str = if cfg!(feature = "jemalloc") {
    "jemalloc"
} else if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

/// Tunes the allocator; call first thing in `main`, before any thread starts (new arenas take
/// the defaults set here). Returns what could not be set, to log once logging is up.
pub fn configure() -> Vec<String> {
    #[cfg(feature = "jemalloc")]
    {
        jemalloc::configure()
    }
    #[cfg(not(feature = "jemalloc"))]
    {
        Vec::new()
    }
}

#[cfg(feature = "jemalloc")]
mod jemalloc {
    use tikv_jemalloc_ctl::{background_thread, Access, AsName};

    use super::DIRTY_DECAY_MS;

    pub(super) fn configure() -> Vec<String> {
        let mut refused = Vec::new();
        let mut set = |key: &str, value: isize| {
            if let Err(e) = key.name().write(value) {
                refused.push(format!("{}={value}: {e}", key.trim_end_matches('\0')));
            }
        };
        // The default of arenas made from now on (one per thread, lazily, up to 4 per CPU),
        // then arena 0: the only one that exists this early, the main thread's.
        set("arenas.dirty_decay_ms\0", DIRTY_DECAY_MS);
        set("arena.0.dirty_decay_ms\0", DIRTY_DECAY_MS);
        // Purged pages go back with MADV_DONTNEED at once (jemalloc's default, said here): a
        // MADV_FREE'd ("muzzy") page stays in RSS until the kernel is short of memory, and RSS
        // is what an operator reads.
        set("arenas.muzzy_decay_ms\0", 0);
        set("arena.0.muzzy_decay_ms\0", 0);
        if let Err(e) = background_thread::write(true) {
            refused.push(format!("background_thread=true: {e}"));
        }
        refused
    }
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    use tikv_jemalloc_ctl::{background_thread, Access, AsName};

    use super::*;

    /// The binary's test harness runs on jemalloc too (the `#[global_allocator]` is part of this
    /// crate): the keys we write must exist and read back with our values.
    #[test]
    fn configure_sets_decay_and_background_thread() {
        assert_eq!(configure(), Vec::<String>::new());
        let dirty: isize = "arenas.dirty_decay_ms\0"
            .name()
            .read()
            .expect("arenas.dirty_decay_ms reads");
        assert_eq!(dirty, DIRTY_DECAY_MS);
        let muzzy: isize = "arenas.muzzy_decay_ms\0"
            .name()
            .read()
            .expect("arenas.muzzy_decay_ms reads");
        assert_eq!(muzzy, 0);
        assert!(background_thread::read().expect("background_thread reads"));
    }
}
