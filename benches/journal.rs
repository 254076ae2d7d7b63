//! What the session journal costs per change, without a server or a network around it.
//!
//! `cargo bench --bench journal -- --bench [HELD] [RATE] [SECONDS]` opens a fresh SQLite
//! settings database, fills the journal with HELD sessions (default 200,000: 20 s
//! of grants at 10,000/s, the state `bench/tail` reaches), then plays SECONDS intervals of
//! steady churn: each grants RATE sessions and ends the RATE oldest (sessions reaped at
//! `connect_timeout` end oldest first), then flushes as the journal task does. It prints the
//! CPU time of the whole process (every thread, SQLite's included, read from
//! `/proc/self/task/*/schedstat`) per change recorded, split into recording (the part on
//! the admission path) and flushing (the part on the SQLite thread), and how far above
//! its start the heap went during the churn (a compaction of the journal's log at its
//! largest: with HELD 1,000,000, RATE 50,000 and SECONDS 12 the churn passes twice what is
//! held, and one compaction runs). Then, with the same sampler: reading every held
//! session back in chunks handed on (as a start does) and a shutdown's last flush of a
//! put of each.
//!
//! For a figure that the shared machine's noise does not move, count instructions:
//! `valgrind --tool=callgrind` on the built bench binary, once with SECONDS and once with 0,
//! and divide the difference by the changes (bench/journal-cost does both).
//!
//! Run by `cargo test --all-targets` without `--bench`: then it plays one small interval, so
//! the harness keeps compiling and working, and times nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drisc::domain::journal::Journal;
use drisc::domain::ports::Pause;
use drisc::domain::{PoolKey, Session, SessionId, SessionState};
use drisc::store::SqliteSettings;

/// The server's allocator. jemalloc also serves SQLite's `malloc` (Cargo.toml), so
/// its `allocated` counts the journal's memory on every thread, SQLite's included.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes live in jemalloc now.
fn allocated() -> usize {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0)
}

/// The most bytes live at once from now until it is dropped, read every
/// millisecond: what the journal's work adds at its largest (a compaction's
/// reading of the log, which lasts hundreds of milliseconds at a million sessions),
/// which the process's peak RSS cannot show once a fill has grown the heap (freed
/// pages are reused before RSS grows again).
struct PeakSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl PeakSampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = allocated();
            while !stopped.load(Ordering::Relaxed) {
                peak = peak.max(allocated());
                std::thread::sleep(Duration::from_millis(1));
            }
            peak.max(allocated())
        });
        Self { stop, thread }
    }

    fn peak(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// CPU time of every thread of this process so far.
fn cpu() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                ns += stat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

/// The process's peak resident set (`VmHWM`), in KiB; 0 if unreadable.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The flushes' rows as the server's: [`SPREAD_CHUNK`] changes each, back to back
/// (the journal task rests between them, and its pause yields to the runtime).
///
/// [`SPREAD_CHUNK`]: drisc::domain::journal::SPREAD_CHUNK
struct NoPause;

impl Pause for NoPause {
    async fn pause(&self) {}
}

fn session(n: u64) -> Session {
    Session {
        id: SessionId::random(),
        name: "living room tv".into(),
        state: SessionState::Pending,
        expires_at: 1_800_000_000_000 + n,
        holder: None,
        created_at: 1_700_000_000_000 + n / 10,
    }
}

fn pools(n: usize) -> Vec<Arc<PoolKey>> {
    (0..n)
        .map(|i| Arc::new(PoolKey::from_ids("acme", &format!("customer-{i:07}"), "premium")))
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (held, rate, seconds) = if benching {
        (
            numbers.first().copied().unwrap_or(200_000),
            numbers.get(1).copied().unwrap_or(10_000),
            numbers.get(2).copied().unwrap_or(10),
        )
    } else {
        (1_000, 500, 1)
    };

    let dir = tempfile::tempdir()?;
    let db = SqliteSettings::open(&dir.path().join("drisc.db")).await?;
    let journal = Journal::new();
    let pools = pools(100_000);
    let mut live = std::collections::VecDeque::new();
    let mut n = 0u64;
    for _ in 0..held {
        let s = session(n);
        journal.added(&pools[n as usize % pools.len()], &s);
        live.push_back(s);
        n += 1;
    }
    journal.flush_spread(&db, Duration::ZERO, &NoPause).await?;

    let (mut recording, mut flushing, mut changes) = (Duration::ZERO, Duration::ZERO, 0u64);
    // Started after the first interval: until its flush, the fill's last write
    // is still held by SQLite's thread.
    let mut sampler = None;
    let wall = Instant::now();
    for _ in 0..seconds {
        let before = cpu();
        for _ in 0..rate {
            let s = session(n);
            journal.added(&pools[n as usize % pools.len()], &s);
            live.push_back(s);
            n += 1;
            if let Some(old) = live.pop_front() {
                journal.removed(&old);
            }
            changes += 2;
        }
        let recorded = cpu();
        journal.flush_spread(&db, Duration::ZERO, &NoPause).await?;
        let flushed = cpu();
        if sampler.is_none() {
            sampler = Some((allocated(), PeakSampler::start()));
        }
        recording += recorded - before;
        flushing += flushed - recorded;
    }
    // Before the check below, which reads every held session back.
    let peak = peak_rss_kib();
    let churn_peak = sampler.map_or(0, |(start, sampler)| sampler.peak().saturating_sub(start));
    let (before_reading, sampler, reading_began) = (allocated(), PeakSampler::start(), Instant::now());
    // As a start reads them: a chunk at a time, each handed on (here, counted and
    // dropped, where a start restores it into the store).
    let (into, mut chunks) = tokio::sync::mpsc::channel::<Vec<(PoolKey, Session)>>(1);
    let count = async move {
        let mut n = 0;
        while let Some(chunk) = chunks.recv().await {
            n += chunk.len() as u64;
        }
        n
    };
    let (read, held_now) = tokio::join!(drisc::domain::ports::SessionArchive::held_into(&db, into), count);
    read?;
    let reading_took = reading_began.elapsed();
    let reading_peak = sampler.peak().saturating_sub(before_reading);
    assert_eq!(
        held_now,
        live.len() as u64,
        "the journal holds exactly the live sessions"
    );
    if benching && changes > 0 {
        let per = |d: Duration| d.as_nanos() as f64 / changes as f64 / 1000.0;
        println!(
            "held {held}, {rate} grants + {rate} ends per interval, {seconds} intervals ({:.1} s wall): \
             {:.2} µs CPU per change recording, {:.2} µs flushing, {:.2} µs per create (a grant and its end)",
            wall.elapsed().as_secs_f64(),
            per(recording),
            per(flushing),
            2.0 * (per(recording) + per(flushing)),
        );
        // What the journal keeps in memory at its largest (a compaction reads the
        // held sessions into a map), beside the bench's own list of them.
        println!(
            "peak RSS {} MiB; during the churn the heap peaked {:.1} MiB above its start ({:.0} bytes a held session)",
            peak / 1024,
            churn_peak as f64 / (1024.0 * 1024.0),
            churn_peak as f64 / held.max(1) as f64,
        );
        // A start reads them the same way (`held_into`), handing each chunk on to
        // the store: what the reading itself holds on the way.
        let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
        println!(
            "reading the held sessions back in chunks ({:.2} s): the heap peaked {:.1} MiB above where it was",
            reading_took.as_secs_f64(),
            mib(reading_peak),
        );
    }
    // A shutdown: every held session detached at once, so the last flush writes
    // a put of each (`Journal::flush`, as `app::keep_sessions` calls it).
    for (k, s) in live.iter().enumerate() {
        journal.added(&pools[k % pools.len()], s);
    }
    let (before_flush, sampler, flush_began) = (allocated(), PeakSampler::start(), Instant::now());
    journal.flush(&db).await?;
    let flush_took = flush_began.elapsed();
    let flush_peak = sampler.peak().saturating_sub(before_flush);
    if benching {
        println!(
            "a shutdown's last flush of every held session ({:.2} s): the heap peaked {:.1} MiB above where it was",
            flush_took.as_secs_f64(),
            flush_peak as f64 / (1024.0 * 1024.0),
        );
    }
    db.close().await;
    Ok(())
}
