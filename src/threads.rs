//! Lowering the priority of threads the server does not start itself.
//!
//! A library that runs work on a thread of its own (sqlx runs each SQLite
//! connection on one) offers no hook to run code there, but it names the thread.
//! On Linux a thread is a task with an id of its own, and `setpriority` with that
//! id changes that thread alone; so the server finds its threads by name in
//! `/proc/self/task` and lowers them. The kernel weighs the threads of one process
//! against each other by their nice values: a thread at nice 19 gets about 1.5% of
//! a core that a thread at nice 0 also wants, and all of it when the core is idle.

/// The nice value for work that must never take the CPU from admissions.
pub const LOWEST: i32 = 19;

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
