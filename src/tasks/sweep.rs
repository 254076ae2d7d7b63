//! The sweep: removes sessions that died without anyone noticing (pending ones
//! never connected, detached ones never came back) and closes any socket still
//! bound to a dead session. Admission does not depend on it, since expiry is
//! checked there too; the sweep keeps memory and the sockets honest.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::control::SessionControl;
use crate::threads::Rest;

/// The sweep's thread (`ps -eLo tid,ni,comm`).
pub const THREAD: &str = "drisc-sweep";

/// Starts the sweep on a thread of its own at nice 19, so that it takes only the
/// CPU admissions leave: reaping costs about 5 µs a session
/// (bench/analysis.md, "The tail, round five"), and tens of thousands of sessions
/// dying in the same second (players granted a session who never connect) made
/// bursts on the server's core that requests queued behind. Admission never waits
/// for the sweep (it checks expiry itself), so the limit is exact however late it
/// runs; on a node saturated for long, where the sweep falls behind, admissions
/// reap the sessions it left overdue (`SessionControl::reap_overdue`). Not
/// `SCHED_IDLE`: the sweep takes locks requests take (the queue of
/// deadlines, a pool's map shard), and held off a core that another thread keeps
/// busy, a thread in `SCHED_IDLE` holds them for tens of milliseconds (see
/// [`crate::threads`]); at nice 19 it still gets a share and lets them go. It
/// rests between bites ([`Rest`]), so once picked it holds the core a tenth of a
/// millisecond, not a scheduler tick. If the thread cannot be started, the sweep
/// runs on the server's runtime.
pub fn spawn(background: &TaskTracker, control: Arc<SessionControl>, every: Duration, cancel: CancellationToken) {
    super::spawn_lowered(background, THREAD, "drisc-sweep-io", move |rest| {
        run(control, every, cancel, rest)
    });
}

/// How often the sweep asks the store to give back the room a burst left in its
/// tables (`SessionControl::trim`): asking reads every shard's size, so not on
/// every pass; a flood's memory is back within this much of its sessions' end.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

pub async fn run(control: Arc<SessionControl>, every: Duration, cancel: CancellationToken, rest: Rest) {
    run_trimming(control, every, TRIM_EVERY, cancel, rest).await;
}

/// [`run`], asking for a trim every `trim` rather than every [`TRIM_EVERY`]
/// (a test's sweep).
pub async fn run_trimming(
    control: Arc<SessionControl>,
    every: Duration,
    trim: Duration,
    cancel: CancellationToken,
    rest: Rest,
) {
    let trim_every = (trim.as_millis() / every.as_millis().max(1)).max(1);
    let mut passes: u128 = 0;
    super::every(every, cancel, || {
        passes += 1;
        let trim = passes % trim_every == 0;
        let (control, rest) = (&control, &rest);
        async move {
            match control.reap(rest).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(reaped = n, "dead sessions removed"),
                Err(e) => tracing::warn!(error = %e, "sweep failed; admission still checks expiry"),
            }
            // The room given back is freed memory, which jemalloc would return to
            // the system only over its decay time.
            if trim
                && control.trim() > 0
                && let Err(e) = crate::allocator::hand_back_freed_pages()
            {
                tracing::debug!(error = %e, "the trimmed tables' pages stay with the allocator");
            }
        }
    })
    .await;
}
