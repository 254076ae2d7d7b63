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

/// Sets the calling thread's nice value (Linux: `setpriority` of this thread
/// alone); elsewhere nothing.
pub fn lower_this(nice: i32) {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        tracing::warn!(error = %e, "could not lower this thread's priority: it runs at the process's");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
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
}
