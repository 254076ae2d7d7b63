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
//! Threads that hold no lock a request waits on go further, to `SCHED_IDLE`
//! ([`idle_this`]): the sweep, the log writer, the webhooks' delivery. A library
//! thread that must start that way is started from a thread already there
//! ([`start_idle`]), as Linux copies a thread's policy to the threads it creates.

use std::future::Future;

use tokio::sync::oneshot;

/// The nice value for work that must never take the CPU from admissions.
pub const LOWEST: i32 = 19;

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

/// Puts the calling thread in `SCHED_IDLE` (Linux): it runs only when no thread
/// of normal policy wants its core, and a normal thread that wakes takes the core
/// from it at once. A nice value only lowers a thread's share: the kernel's EEVDF
/// scheduler lets a thread at nice 19 finish a slice of a millisecond or more
/// before a woken request worker gets the core (`perf sched latency` measured the
/// runtime worker waiting up to 5 ms behind the sweep and the log writer at
/// 21,500 admissions a second; bench/analysis.md, "The tail, round six"). For work
/// that holds no lock a request waits on for longer than a few map operations.
/// Elsewhere: the platform's lowest priority. Errors are the caller's to report
/// (the log may not be set up yet).
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

/// Runs `start` on a short-lived thread in `SCHED_IDLE` and returns what it
/// returns: threads `start` creates (a library's writer thread) inherit the policy.
/// If the policy cannot be set, `start` runs all the same and the error is handed
/// back beside its result.
pub fn start_idle<T: Send>(start: impl FnOnce() -> T + Send) -> (T, Option<String>) {
    // Taken by whichever thread runs it: the starter, or this one if no thread can be made.
    let start = std::sync::Mutex::new(Some(start));
    let take = || start.lock().ok().and_then(|mut slot| slot.take());
    let started = std::thread::scope(|scope| {
        let starter = std::thread::Builder::new()
            .name("drisc-start".into())
            .spawn_scoped(scope, || {
                let lowered = idle_this().err();
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
/// 15 bytes of a name) and answers how many it changed. For work that holds a
/// lock others wait on (the journal's SQLite transaction): at nice 19 it still gets
/// a share of a busy core, so the lock is let go, where [`idle_this`] could keep it
/// held for as long as the core is busy. Elsewhere it changes
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

    /// This thread's scheduling policy, as /proc reads it (5 is `SCHED_IDLE`).
    fn my_policy() -> u32 {
        let me = procfs::process::Process::myself().expect("/proc/self");
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        me.task_from_tid(tid)
            .and_then(|task| task.stat())
            .ok()
            .and_then(|stat| stat.policy)
            .expect("the policy")
    }

    #[test]
    fn threads_started_from_start_idle_inherit_sched_idle_and_the_caller_keeps_its_policy() {
        let mine = my_policy();
        let ((policy, same_thread), lowered) = start_idle(|| {
            let starter = std::thread::current().id();
            let child = std::thread::spawn(move || (my_policy(), std::thread::current().id() == starter));
            child.join().expect("the child ended")
        });
        assert_eq!(lowered, None, "the starter went to SCHED_IDLE");
        assert_eq!(policy, 5, "a thread the start made inherited SCHED_IDLE");
        assert!(!same_thread);
        assert_eq!(my_policy(), mine, "the caller kept its policy");
        assert_ne!(mine, 5);
    }
}
