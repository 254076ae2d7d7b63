//! Prints, for futures of several sizes spawned through a `TaskTracker` as drisc
//! spawns a socket's task, the size tokio asks the allocator for, beside what
//! drisc's `task_allocation` reckons (a 32-byte header, 16 bytes of scheduler handle
//! and task id, 8 for the tag of the stage the future is kept in, the future, a
//! 48-byte trailer, aligned to 128 bytes on x86_64).
//! Exits non-zero if the two disagree.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, noting the largest allocation while a caller asks.
struct Recording;

thread_local! {
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

// SAFETY: every call goes to the system allocator unchanged.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| {
            if let Some(largest) = l.get() {
                l.set(Some(largest.max(layout.size())));
            }
        });
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

fn task_allocation(future: usize) -> usize {
    (32 + 16 + 8 + future + 48).next_multiple_of(128)
}

fn spawned<const N: usize>(tracker: &tokio_util::task::TaskTracker) -> (usize, usize) {
    let state = [0u8; N];
    let future = tracker.track_future(async move {
        std::hint::black_box(&state);
    });
    let size = std::mem::size_of_val(&future);
    LARGEST.with(|l| l.set(Some(0)));
    drop(tokio::spawn(future));
    (size, LARGEST.with(|l| l.replace(None)).unwrap_or(0))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let _entered = runtime.enter();
    let tracker = tokio_util::task::TaskTracker::new();
    let measured = [
        spawned::<760>(&tracker),
        spawned::<800>(&tracker),
        spawned::<880>(&tracker),
        spawned::<912>(&tracker),
        spawned::<920>(&tracker),
        spawned::<928>(&tracker),
        spawned::<960>(&tracker),
    ];
    println!("| future (tracked), bytes | tokio allocates | reckoned |");
    println!("|---:|---:|---:|");
    let mut agree = true;
    for (future, allocated) in measured {
        let reckoned = task_allocation(future);
        agree &= allocated == reckoned;
        println!("| {future} | {allocated} | {reckoned} |");
    }
    if !agree {
        eprintln!("tokio's task layout is not what task_allocation reckons");
        std::process::exit(1);
    }
}
