//! The allocator's own figures and controls, where the server runs on jemalloc
//! (`main.rs`): not with MSVC, which keeps the system allocator, and where these
//! read nothing and do nothing.
//!
//! jemalloc also serves C's `malloc` (Cargo.toml), so SQLite's memory is in its
//! figures, and so is everything in the test binaries, whose Rust allocator is the
//! system one: it calls that same `malloc`.

/// jemalloc's statistics: RSS alone cannot tell live data growing (a leak:
/// `allocated` climbs) from the allocator holding freed pages for reuse
/// (`resident` above `active`, `allocated` level).
#[derive(Debug, Default)]
pub struct Figures {
    pub allocated: Option<u64>,
    pub active: Option<u64>,
    pub resident: Option<u64>,
    pub retained: Option<u64>,
}

/// Reads them now: `epoch::advance` makes jemalloc refresh its cached totals.
#[cfg(not(target_env = "msvc"))]
pub fn read() -> Figures {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return Figures::default();
    }
    let bytes = |r: tikv_jemalloc_ctl::Result<usize>| r.ok().map(|n| n as u64);
    Figures {
        allocated: bytes(stats::allocated::read()),
        active: bytes(stats::active::read()),
        resident: bytes(stats::resident::read()),
        retained: bytes(stats::retained::read()),
    }
}

#[cfg(target_env = "msvc")]
pub fn read() -> Figures {
    Figures::default()
}

/// Hands the pages of freed memory back to the system now, in every arena.
///
/// jemalloc keeps freed pages for reuse and returns them over its decay time
/// (10 s), so a burst of work that frees a few megabytes at once (a compaction
/// of the session journal) leaves RSS that much higher for seconds after: in
/// the 8,000-player soak, 3.6–4.3 MiB for 5–8 s at each compaction, which itself
/// took about 90 ms (bench/analysis.md, round thirty). Called after such a
/// burst, never on a hot path: the pages other threads freed go too, and they
/// fault in again when reused.
#[cfg(not(target_env = "msvc"))]
pub fn hand_back_freed_pages() -> Result<(), String> {
    use tikv_jemalloc_ctl::{Access, AsName, Mib, arenas};
    // An arena whose decay time is set to 0 purges its unused pages at once; it
    // is then set back to what it was. (`arena.<i>.purge` does this in one call,
    // but takes null pointers, which only unsafe code could pass; setting the
    // same time again purges nothing in jemalloc 5.3.) The dirty pages first:
    // with a muzzy decay time, purging them makes them muzzy, which the second
    // pass then purges.
    let failed = |e: tikv_jemalloc_ctl::Error| format!("jemalloc: {e}");
    let arenas = arenas::narenas::read().map_err(failed)?;
    for control in [&b"arena.0.dirty_decay_ms\0"[..], b"arena.0.muzzy_decay_ms\0"] {
        let mut mib: Mib<[usize; 3]> = control.name().mib().map_err(failed)?;
        for arena in 0..arenas {
            mib[1] = arena as usize;
            // An arena no thread has used yet cannot be read: nothing is in it.
            let Ok(decay) = Access::<isize>::read(&mib) else {
                continue;
            };
            mib.write(0isize).map_err(failed)?;
            mib.write(decay).map_err(failed)?;
        }
    }
    Ok(())
}

#[cfg(target_env = "msvc")]
pub fn hand_back_freed_pages() -> Result<(), String> {
    Ok(())
}

#[cfg(all(test, not(target_env = "msvc")))]
mod tests {
    use super::*;

    #[test]
    fn freed_pages_leave_the_resident_set_when_handed_back() {
        const BLOCKS: usize = 16 * 1024;
        const BLOCK: usize = 4096;
        // 64 MiB in small blocks, each written so that its page is resident.
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|_| vec![1u8; BLOCK]).collect();
        assert!(blocks.iter().all(|b| b[BLOCK - 1] == 1));
        blocks.clear();
        blocks.shrink_to_fit();
        let before = read().resident.expect("jemalloc's resident bytes");
        hand_back_freed_pages().unwrap();
        let after = read().resident.expect("jemalloc's resident bytes");
        // Other tests allocate meanwhile, but not half of that in an instant.
        let freed = (BLOCKS * BLOCK) as u64;
        assert!(
            after + freed / 2 <= before,
            "resident {before} B before handing back, {after} B after"
        );
    }
}
