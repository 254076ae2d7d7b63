//! How the memory store's maps grow under churn, with no server around them.
//!
//! `cargo bench --bench churn -- --bench [LIVE] [CHURNS]` holds LIVE entries (default
//! 8,000: the 8,000-player soak's held sessions) in a map sharded as the store's are
//! (256 shards, foldhash; `store::roster`), then plays CHURNS (default 2,000,000)
//! churns, each removing a random entry and inserting a new key, as a session's end
//! and the next player's grant do to the pool map and the session-id index. It
//! prints the map's capacity (entries it holds before it grows) every twentieth of the
//! way.
//!
//! Why: the maps are hashbrown tables, which mark a removed entry as deleted rather
//! than empty; when inserts have used up the free room, a table that is more than
//! half full doubles, and one that is less rehashes in place. So under churn each
//! shard's table grows until its entries fill at most half of it, and then stays:
//! bounded, but at 8,000 entries (about 31 a shard) reached only after 25 to 40
//! churns per entry (bench/analysis.md, "Round twenty-nine"): 200,000 to 300,000
//! joins, which an 8,000-player soak at 150 joins a second takes 22 to 33 minutes
//! to play.
//!
//! Run by `cargo test --all-targets` without `--bench`: then a small map and a few
//! churns, so the harness keeps compiling and working, and it asserts only that the
//! map still holds LIVE entries.

use dashmap::DashMap;
use rand::Rng;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes live in jemalloc now.
fn allocated() -> usize {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0)
}

/// As `store::roster::SHARDS`.
const SHARDS: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (live, churns) = if benching {
        (
            numbers.first().copied().unwrap_or(8_000),
            numbers.get(1).copied().unwrap_or(2_000_000),
        )
    } else {
        (1_000, 20_000)
    };
    let mut keys: Vec<u64> = (0..live as u64).collect();
    let before = allocated();
    // The pool map's entry: a pointer to the key and the pool's list (32 bytes).
    let map: DashMap<u64, [u64; 3], foldhash::fast::RandomState> =
        DashMap::with_hasher_and_shard_amount(Default::default(), SHARDS);
    for &k in &keys {
        map.insert(k, [0; 3]);
    }
    let per_entry = || allocated().saturating_sub(before) as f64 / live as f64;
    let filled = per_entry();
    println!("{live} entries of 32 bytes in {SHARDS} shards: {filled:.1} bytes an entry after the fill");
    let mut rng = rand::rng();
    let step = (churns / 20).max(1);
    for (done, next) in (1..=churns).zip(live as u64..) {
        let slot = rng.random_range(0..keys.len());
        map.remove(&keys[slot]);
        keys[slot] = next;
        map.insert(next, [0; 3]);
        if benching && done % step == 0 {
            let now = per_entry();
            println!(
                "{done:>9} churns ({:>5.0} per entry): {now:>6.1} bytes an entry ({:.2}× the fill's)",
                done as f64 / live as f64,
                now / filled,
            );
        }
    }
    assert_eq!(map.len(), live, "a churn keeps the entries' count");
}
