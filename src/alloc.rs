//! What the process's allocator (jemalloc, chosen and configured in `main.rs`) holds, as
//! `tidewatch_allocator_bytes` on `/metrics`: live bytes, freed blocks the threads' caches hold, the pages
//! that hold both, and what it keeps resident beyond them, which is where the process's memory goes past
//! its live heap (BENCHMARKS.md, "Where a series' bytes go").

use std::fmt::Write;

use tidewatch_analyzer::exposition::{Kind, by_label};

/// jemalloc's byte counts, as of one refresh of its statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes of freed blocks kept in the threads' caches for reuse by the same thread (jemalloc counts
    /// them as allocated; they are not live).
    pub cached: u64,
    /// Bytes in the pages that hold live and cached blocks (both plus their pages' free room).
    pub active: u64,
    /// Bytes of the allocator's pages that are resident: active, metadata, and freed pages not yet returned.
    pub resident: u64,
    /// Bytes of address space returned to the system but kept mapped for reuse (not resident).
    pub retained: u64,
}

/// The allocator's counts now, or `None` if jemalloc does not answer (it always should).
pub fn stats() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let n = |r: tikv_jemalloc_ctl::Result<usize>| r.ok().map(|v| v as u64);
    let allocated = n(stats::allocated::read())?;
    // SAFETY: the control is a `size_t`, which `usize` is, and the name is NUL-terminated (4096:
    // MALLCTL_ARENAS_ALL, every arena merged).
    #[allow(unsafe_code)]
    let cached = n(unsafe { tikv_jemalloc_ctl::raw::read::<usize>(b"stats.arenas.4096.tcache_bytes\0") })?;
    Some(AllocatorStats {
        allocated: allocated.saturating_sub(cached),
        cached,
        active: n(stats::active::read())?,
        resident: n(stats::resident::read())?,
        retained: n(stats::retained::read())?,
    })
}

/// Gives the pages a scrape freed back to the system: the calling thread's cache of freed blocks goes
/// back to the arena, then every arena's unused pages are returned at once rather than after
/// `dirty_decay_ms`. A scrape's snapshot is the largest thing the process allocates and frees between two
/// window closes, and jemalloc returns freed pages only when it is next called, so an idle process would
/// otherwise keep a copy of every series' rows resident until the next window close (BENCHMARKS.md,
/// "Where a series' bytes go"). Call it on the thread that dropped the snapshot. Whether the pages were
/// returned (jemalloc refuses only a name it does not know).
pub fn give_back() -> bool {
    // A thread without a cache (none yet) has nothing to flush: that one may fail.
    void_control(c"thread.tcache.flush");
    // 4096: MALLCTL_ARENAS_ALL.
    void_control(c"arena.4096.purge")
}

/// Runs one of jemalloc's controls that take no value and answer none; whether it succeeded.
#[allow(unsafe_code)]
fn void_control(name: &std::ffi::CStr) -> bool {
    // SAFETY: such controls require null value pointers and zero lengths, which is what is passed
    // (tikv-jemalloc-ctl always passes a value, which they refuse), and `name` is NUL-terminated.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    rc == 0
}

/// The end of every `/metrics` answer, once the scrape's snapshot is dropped (on the same thread): gives
/// back what the scrape freed, then writes what the allocator holds.
pub fn end_scrape(out: &mut impl Write) {
    give_back();
    render(out);
}

/// Writes `tidewatch_allocator_bytes{state=...}`.
fn render(out: &mut impl Write) {
    let Some(s) = stats() else { return };
    by_label(
        out,
        "tidewatch_allocator_bytes",
        Kind::Gauge,
        "What the memory allocator holds, by state: allocated (live), cached (freed, in threads' caches), active (the pages of both), resident, retained (returned, mapped).",
        "state",
        [
            ("allocated", s.allocated),
            ("cached", s.cached),
            ("active", s.active),
            ("resident", s.resident),
            ("retained", s.retained),
        ],
    );
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::Mutex;

    use super::*;

    /// The tests that allocate through jemalloc or read its counts run one at a time, so that one's
    /// blocks do not move the other's counts.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// `n` blocks of `layout` from jemalloc itself (the test binary's global allocator is the system's),
    /// each written through, so their pages are touched.
    #[allow(unsafe_code)]
    fn jemalloc_blocks(n: usize, layout: Layout) -> Vec<*mut u8> {
        // SAFETY: each block is allocated with `layout`, checked for null and written within its size.
        (0..n)
            .map(|_| unsafe {
                let p = tikv_jemallocator::Jemalloc.alloc(layout);
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 1, layout.size());
                p
            })
            .collect()
    }

    /// Frees blocks [`jemalloc_blocks`] made with the same `layout`.
    #[allow(unsafe_code)]
    fn free_jemalloc_blocks(blocks: Vec<*mut u8>, layout: Layout) {
        for p in blocks {
            // SAFETY: `p` came from jemalloc with `layout` and is freed once.
            unsafe { tikv_jemallocator::Jemalloc.dealloc(p, layout) };
        }
    }

    #[test]
    fn freed_pages_go_back_at_once() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // Blocks too large for jemalloc's thread cache, so freeing them leaves dirty pages in its arena.
        let layout = Layout::from_size_align(256 << 10, 4096).expect("layout");
        free_jemalloc_blocks(jemalloc_blocks(32, layout), layout);
        let before = stats().expect("jemalloc answers").resident;
        assert!(give_back(), "the purge is a control jemalloc knows");
        let after = stats().expect("jemalloc answers").resident;
        assert!(
            before >= after + (4 << 20),
            "8 MiB freed, resident {before} before giving back, {after} after"
        );
    }

    #[test]
    fn freed_blocks_in_a_thread_cache_count_as_cached_not_live() {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // Small enough for the thread's cache, few enough (1 KiB) that it keeps them all.
        let layout = Layout::from_size_align(64, 8).expect("layout");
        give_back();
        let blocks = jemalloc_blocks(16, layout);
        let held = stats().expect("jemalloc answers");
        free_jemalloc_blocks(blocks, layout);
        let freed = stats().expect("jemalloc answers");
        assert!(
            freed.allocated + 16 * 64 <= held.allocated && freed.cached >= held.cached + 16 * 64,
            "1 KiB freed into the thread's cache: {held:?} before, {freed:?} after"
        );
        give_back();
        let flushed = stats().expect("jemalloc answers");
        assert!(
            flushed.cached + 16 * 64 <= freed.cached,
            "the thread's cache flushed: {freed:?} before, {flushed:?} after"
        );
    }

    #[test]
    fn the_allocator_reports_its_bytes_in_order() {
        // The test binary's global allocator is the system's, so jemalloc holds little; its counts must
        // still be there and consistent. jemalloc's counts are consistent only while no other thread
        // allocates from it, so this waits for the tests that do.
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats().expect("jemalloc answers");
        assert!(
            s.allocated + s.cached <= s.active && s.active <= s.resident,
            "{s:?}"
        );
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("tidewatch_allocator_bytes{state=\"resident\"}"),
            "{out}"
        );
    }
}
