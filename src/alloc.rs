//! What the process's allocator (jemalloc, chosen and configured in `main.rs`) holds, as
//! `tidewatch_allocator_bytes` on `/metrics`: live bytes, the pages that hold them, and what it keeps
//! resident beyond them, which is where the process's memory goes past its live heap (BENCHMARKS.md,
//! "Memory per series").

use std::fmt::Write;

use tidewatch_analyzer::exposition::{Kind, family, sample};

/// jemalloc's byte counts, as of one refresh of its statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in the pages that hold live allocations (allocated plus their pages' free room).
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
    Some(AllocatorStats {
        allocated: n(stats::allocated::read())?,
        active: n(stats::active::read())?,
        resident: n(stats::resident::read())?,
        retained: n(stats::retained::read())?,
    })
}

/// Writes `tidewatch_allocator_bytes{state=...}`.
pub fn render(out: &mut impl Write) {
    let Some(s) = stats() else { return };
    let name = "tidewatch_allocator_bytes";
    family(
        out,
        name,
        Kind::Gauge,
        "What the memory allocator holds, by state: allocated (live), active (their pages), resident, retained (returned, mapped).",
    );
    for (state, v) in [
        ("allocated", s.allocated),
        ("active", s.active),
        ("resident", s.resident),
        ("retained", s.retained),
    ] {
        sample(out, name, &[("state", state)], v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_reports_its_bytes_in_order() {
        // The test binary's global allocator is the system's, so jemalloc holds little; its counts must
        // still be there and consistent.
        let s = stats().expect("jemalloc answers");
        assert!(s.allocated <= s.active && s.active <= s.resident, "{s:?}");
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("tidewatch_allocator_bytes{state=\"resident\"}"),
            "{out}"
        );
    }
}
