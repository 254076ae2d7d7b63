//! A thread that only gets the CPU nobody else wants: the webhooks' delivery runs
//! here, on a current-thread tokio runtime of its own, so that signing and
//! sending events never takes a core from admissions when the node is saturated
//! (`SCHED_IDLE`: the kernel runs it only when no normal thread of the process
//! group is runnable, and then at full speed).
//!
//! Threads this one starts (the runtime's blocking pool, which resolves the
//! webhooks' host names) inherit its policy: Linux copies a thread's scheduling
//! policy to the threads it creates.
//!
//! What must not wait for this thread is kept off it: a database transaction
//! started here would hold SQLite's write lock for as long as the thread is kept
//! from the CPU, and the outbox writer (what makes events durable, at normal
//! priority) would wait behind it. So the delivery hands every database call to
//! the server's runtime ([`OnMain`]): the call runs at normal priority, but only
//! as often as the delivery here gets to ask for it.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub use crate::config::DeliveryPriority as Priority;

/// The name of the runtime's blocking threads (host name look-ups), so that
/// `ps -eLo tid,cls,comm` tells them apart (Linux keeps 15 bytes of a name).
pub const BLOCKING_THREADS: &str = "drisc-hooks-io";

/// Runs `work` to its end on a new thread named `name`, on a current-thread
/// runtime of its own; the receiver is told when the thread is done (or gone).
pub fn spawn<F, Fut>(name: &str, priority: Priority, work: F) -> std::io::Result<oneshot::Receiver<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    crate::threads::spawn_runtime(
        name,
        BLOCKING_THREADS,
        move || {
            if priority == Priority::Idle {
                lower_to_idle();
            }
        },
        work,
    )
}

fn lower_to_idle() {
    if let Err(e) = crate::threads::idle_this() {
        tracing::warn!(error = %e, "could not lower the webhooks' delivery thread to SCHED_IDLE: it runs at normal priority");
    }
}

/// The server's runtime, where the delivery's database calls run (see the module's comment).
#[derive(Clone)]
pub struct OnMain(pub Handle);

impl OnMain {
    /// `call`'s output, or None if the server's runtime is gone (stopping).
    pub async fn run<T: Send + 'static>(&self, call: impl Future<Output = T> + Send + 'static) -> Option<T> {
        self.0.spawn(call).await.ok()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy and its id, from /proc (SCHED_OTHER
    /// is 0, SCHED_IDLE 5).
    fn own_policy() -> (u32, String) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        let tid = stat.split(' ').next().unwrap_or_default().to_owned();
        // Fields after the name (which may hold spaces), from the third on; the policy is the 41st.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let policy = after_name.split_whitespace().nth(41 - 3).and_then(|p| p.parse().ok());
        (policy.unwrap_or(u32::MAX), tid)
    }

    async fn policies_seen(priority: Priority) -> ((u32, String), Vec<u32>) {
        let (tell, told) = oneshot::channel();
        let finished = spawn("idle-test", priority, move || async move {
            // A look-up runs on the runtime's blocking pool: its thread must not
            // escape to normal priority.
            let on_pool = tokio::task::spawn_blocking(|| own_policy().0).await.unwrap_or(u32::MAX);
            let _ = tokio::net::lookup_host("localhost:80").await;
            let _ = tell.send((own_policy(), vec![on_pool]));
        })
        .expect("a thread");
        let seen = told.await.expect("the work ran");
        finished.await.expect("the thread says it is done");
        seen
    }

    #[tokio::test]
    async fn an_idle_thread_and_the_threads_it_starts_run_at_sched_idle() {
        let ((policy, _), blocking) = policies_seen(Priority::Idle).await;
        assert_eq!(policy, 5, "the thread is SCHED_IDLE");
        assert_eq!(blocking, [5], "its blocking pool is SCHED_IDLE too");
    }

    #[tokio::test]
    async fn a_normal_thread_keeps_the_normal_policy() {
        let ((policy, _), blocking) = policies_seen(Priority::Normal).await;
        assert_eq!(policy, 0);
        assert_eq!(blocking, [0]);
    }

    #[tokio::test]
    async fn the_thread_ends_when_its_work_does_and_says_so() {
        let stop = tokio_util::sync::CancellationToken::new();
        let (tell, told) = oneshot::channel();
        let stopping = stop.clone();
        let finished = spawn("idle-test-stop", Priority::Idle, move || async move {
            let _ = tell.send(own_policy().1);
            stopping.cancelled().await;
        })
        .expect("a thread");
        let tid = told.await.expect("the work started");
        let task = format!("/proc/self/task/{tid}");
        assert!(std::path::Path::new(&task).exists());
        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), finished)
            .await
            .expect("done within 10 s")
            .expect("told, not dropped");
        // The thread itself is gone a moment after it said so.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::path::Path::new(&task).exists() {
            assert!(std::time::Instant::now() < deadline, "thread {tid} still runs");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
