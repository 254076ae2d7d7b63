//! Threads whose work must yield to admissions: threads of their own started at a
//! lower priority ([`spawn_runtime`]), and threads a library starts, lowered by name.
//!
//! A library that runs work on a thread of its own (sqlx runs each SQLite
//! connection on one) offers no hook to run code there, but it names the thread.
//! On Linux a thread is a task with an id of its own, and `setpriority` with that
//! id changes that thread alone; so the server finds its threads by name in
//! `/proc/self/task` and lowers them. The kernel weighs the threads of one process
//! against each other by their nice values: a thread at nice 19 gets about 1.5% of
//! a core that a thread at nice 0 also wants, and all of it when the core is idle.
//!
//! A library thread that must start lowered is started from a thread already
//! lowered ([`start_lowered`]): Linux copies a thread's nice value and policy to the
//! threads it creates.
//!
//! Why nice 19 and not `SCHED_IDLE` for these: each of them shares a lock with the
//! server's runtime (a map shard, a queue, the mutex inside a channel), and beside
//! another busy thread on its core a thread in `SCHED_IDLE` gets almost no CPU (a
//! weight of 3 against 1,024), so a lock it holds when preempted stays held for
//! tens of milliseconds and the runtime's worker waits on it. Measured with a busy
//! loop on the server's core at 2,000 creates a second: with the journal's SQLite
//! thread in `SCHED_IDLE`, the runtime's worker sat in `futex` wait and the median
//! create took 11–23 ms (0.07 ms at nice 19) (bench/analysis.md, "The tail, round
//! six"). Only the webhooks' delivery is in `SCHED_IDLE` ([`idle_this`]), handing
//! its database calls to the runtime.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::domain::ports::Pause;

/// The nice value for work that must never take the CPU from admissions.
pub const LOWEST: i32 = 19;

/// How the sweep leaves the core between bites ([`Pause`]).
///
/// Why a thread at nice 19 must also rest: a nice value sets a thread's share of
/// the core, not how long it keeps it once the scheduler picks it. Linux's EEVDF
/// scheduler picks a low thread when its share is owed, and then lets it run
/// until it blocks or the next tick (4 ms at the common HZ=250), while a request
/// worker that wants the core waits. A thread that sleeps a little after every
/// [`PACED_RUN`] of work holds the core about that long at most: measured at half
/// load, the sweep held the runtime's worker off the core for up to 4.4 ms
/// without rests (bench/analysis.md, "The tail, round seven").
pub enum Rest {
    /// On a thread of its own: sleep [`PACED_REST`] once [`PACED_RUN`] has passed
    /// since the last rest. The thread's runtime has nothing else to run.
    Paced { since: Mutex<Instant> },
    /// On the server's runtime: let the requests queued meanwhile run first.
    Yield,
}

/// The longest a paced thread works before it rests.
pub const PACED_RUN: Duration = Duration::from_micros(100);

/// How long a paced thread rests: long enough for the scheduler to give the core
/// to a thread that wants it (the sleep's timer slack adds about 50 µs).
pub const PACED_REST: Duration = Duration::from_micros(50);

impl Rest {
    pub fn paced() -> Self {
        Rest::Paced {
            since: Mutex::new(Instant::now()),
        }
    }
}

impl Pause for Rest {
    async fn pause(&self) {
        match self {
            Rest::Paced { since } => {
                let mut since = since.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if since.elapsed() >= PACED_RUN {
                    // A blocking sleep on purpose: the point is that this thread
                    // leaves the core, and its runtime has no other task to run.
                    std::thread::sleep(PACED_REST);
                    *since = Instant::now();
                }
            }
            Rest::Yield => tokio::task::yield_now().await,
        }
    }
}

/// Runs `work` to its end on a new thread named `name`, on a current-thread
/// runtime of its own, after `lower` has set the thread's priority; the
/// receiver is told when the thread is done (or gone). `blocking` names the
/// runtime's blocking threads, which inherit the thread's priority (Linux
/// copies a thread's scheduling to the threads it creates).
pub fn spawn_runtime<F, Fut>(
    name: &str,
    blocking: &'static str,
    lower: impl FnOnce() + Send + 'static,
    work: F,
) -> std::io::Result<oneshot::Receiver<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (done, finished) = oneshot::channel();
    let thread = name.to_owned();
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        lower();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(blocking)
            .build();
        match runtime {
            Ok(runtime) => {
                runtime.block_on(work());
                // Its blocking threads are told to stop before the server is.
                runtime.shutdown_background();
            }
            Err(e) => tracing::error!(error = %e, thread, "could not start a runtime: its work is not done"),
        }
        let _ = done.send(());
    })?;
    Ok(finished)
}

/// Sets the calling thread's nice value (Linux: `setpriority` of this thread
/// alone); elsewhere nothing.
pub fn lower_this(nice: i32) {
    if let Err(e) = try_lower_this(nice) {
        tracing::warn!(error = %e, "could not lower this thread's priority: it runs at the process's");
    }
}

fn try_lower_this(nice: i32) -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        rustix::process::setpriority_process(None, nice).map_err(|e| e.to_string())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        Ok(())
    }
}

/// Puts the calling thread in `SCHED_IDLE` (Linux): it runs only when no thread
/// of normal policy wants its core, and a normal thread that wakes takes the core
/// from it at once. Only for work that holds no lock the runtime waits on (see the
/// module's comment). Elsewhere: the platform's lowest priority. Errors are the
/// caller's to report.
pub fn idle_this() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::ThreadPriority;
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
        };
        // SCHED_IDLE takes no static priority: `Min` is 0 for it, the only value the
        // kernel accepts (the crate's cross-platform values map to a nice level).
        let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, policy).map_err(|e| format!("{e:?}"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min).map_err(|e| format!("{e:?}"))
    }
}

/// Runs `start` on a short-lived thread at nice `nice` and returns what it
/// returns: threads `start` creates (a library's writer or connection thread)
/// inherit the nice value. If it cannot be set, `start` runs all the same and the
/// error is handed back beside its result.
pub fn start_lowered<T: Send>(nice: i32, start: impl FnOnce() -> T + Send) -> (T, Option<String>) {
    // Taken by whichever thread runs it: the starter, or this one if no thread can be made.
    let start = std::sync::Mutex::new(Some(start));
    let take = || start.lock().ok().and_then(|mut slot| slot.take());
    let started = std::thread::scope(|scope| {
        let starter = std::thread::Builder::new()
            .name("drisc-start".into())
            .spawn_scoped(scope, || {
                let lowered = try_lower_this(nice).err();
                take().map(|start| (start(), lowered))
            });
        match starter.map(|handle| handle.join()) {
            Ok(Ok(done)) => done,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) => take().map(|start| (start(), Some(format!("no thread to start from: {e}")))),
        }
    });
    match started {
        Some(done) => done,
        // Unreachable: the closure is taken once, by the starter or here.
        None => unreachable!("the start closure ran nowhere"),
    }
}

/// Sets the nice value of every thread of this process named `name` (Linux keeps
/// 15 bytes of a name) and answers how many it changed. Elsewhere it changes
/// nothing: there is no per-thread nice to set.
pub fn lower_named(name: &str, nice: i32) -> usize {
    #[cfg(target_os = "linux")]
    {
        let name: String = name.chars().take(15).collect();
        let Ok(tasks) = procfs::process::Process::myself().and_then(|me| me.tasks()) else {
            return 0;
        };
        tasks
            .filter_map(Result::ok)
            .filter(|task| task.stat().is_ok_and(|stat| stat.comm == name))
            .filter_map(|task| rustix::process::Pid::from_raw(task.tid))
            .filter(|tid| rustix::process::setpriority_process(Some(*tid), nice).is_ok())
            .count()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (name, nice);
        0
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Times this thread gave up the core of its own accord (slept or blocked).
    fn voluntary_switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches")
    }

    #[test]
    fn a_paced_thread_leaves_the_core_after_its_run_and_not_before() {
        let rest = Rest::paced();
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        // Work past the run, then rest: the thread sleeps.
        let began = Instant::now();
        while began.elapsed() < PACED_RUN * 2 {
            std::hint::spin_loop();
        }
        let Rest::Paced { since } = &rest else {
            panic!("Rest::paced() is paced");
        };
        let before = voluntary_switches();
        let rest_began = Instant::now();
        runtime.block_on(rest.pause());
        assert!(voluntary_switches() > before, "the thread slept");
        let run_began = *since.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        assert!(run_began >= rest_began, "a new run begins after the rest");
        // Within a run there is nothing to rest from. The run is set to begin
        // far ahead rather than waited for: on a slow or busy machine, reading
        // the count between two pauses has taken longer than a whole run, and
        // then the second pause rightly slept. One try in ten with no sleep
        // shows that a pause within a run does not sleep, where a pause that
        // always slept would show a sleep in every try.
        let slept_every_time = (0..10).all(|_| {
            *since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now() + Duration::from_secs(3600);
            let before = voluntary_switches();
            runtime.block_on(rest.pause());
            voluntary_switches() != before
        });
        assert!(!slept_every_time, "no sleep within a run");
    }

    #[test]
    fn a_named_thread_is_lowered_and_the_others_are_not() {
        let (ready, wait) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("drisc-test-low".into())
            .spawn(move || {
                let _ = ready.send(());
                let _ = stopped.recv();
                rustix::process::getpriority_process(None)
            })
            .expect("a thread");
        wait.recv().expect("the thread started");
        let mine = rustix::process::getpriority_process(None).expect("nice");
        assert_eq!(lower_named("drisc-test-low", LOWEST), 1);
        assert_eq!(lower_named("drisc-no-such", LOWEST), 0);
        let _ = stop.send(());
        assert_eq!(
            worker.join().expect("the thread ended").expect("its nice value"),
            LOWEST
        );
        // This thread (the test's) kept its own.
        assert_eq!(rustix::process::getpriority_process(None).expect("nice"), mine);
    }

    #[test]
    fn threads_started_from_start_lowered_inherit_its_nice_value_and_the_caller_keeps_its_own() {
        let mine = rustix::process::getpriority_process(None).expect("nice");
        let ((nice, same_thread), lowered) = start_lowered(LOWEST, || {
            let starter = std::thread::current().id();
            let child = std::thread::spawn(move || {
                (
                    rustix::process::getpriority_process(None).expect("nice"),
                    std::thread::current().id() == starter,
                )
            });
            child.join().expect("the child ended")
        });
        assert_eq!(lowered, None, "the starter was lowered");
        assert_eq!(nice, LOWEST, "a thread the start made inherited nice 19");
        assert!(!same_thread);
        assert_eq!(
            rustix::process::getpriority_process(None).expect("nice"),
            mine,
            "the caller kept its own"
        );
    }
}
