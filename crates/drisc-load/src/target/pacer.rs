//! Pacing new connections, so the server's accept queue never overflows.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaces out events (new connections) to at most `rate` per second.
pub struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    /// `rate` ≤ 0 means no pacing.
    pub fn new(rate: f64) -> Self {
        Self {
            interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            next: Mutex::new(Instant::now()),
        }
    }

    pub async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let at = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let at = (*next).max(Instant::now());
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// `--busy-poll`: a task per worker of the runtime that only yields. A worker
/// holding a task it yielded polls for I/O with a zero timeout instead of
/// blocking, so it never sleeps in `epoll_wait` while the process lasts: on
/// loopback the server's CPU then never pays, inside its answer's write, for
/// waking this process.
pub fn busy_poll(runtime: &tokio::runtime::Handle) {
    for _ in 0..runtime.metrics().num_workers() {
        runtime.spawn(async {
            loop {
                tokio::task::yield_now().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// With a spinning task on its one worker, the runtime still answers its
    /// sockets and fires its timers: the spinner only yields.
    #[test]
    fn a_busy_polling_runtime_still_does_its_io() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        super::busy_poll(runtime.handle());
        let echoed = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 5];
                socket.read_exact(&mut buf).await.unwrap();
                socket.write_all(&buf).await.unwrap();
            });
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
                client.write_all(b"hello").await.unwrap();
                let mut answer = [0u8; 5];
                client.read_exact(&mut answer).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
                server.await.unwrap();
                answer
            })
            .await
        });
        assert_eq!(echoed.ok().as_ref(), Some(b"hello"));
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}
