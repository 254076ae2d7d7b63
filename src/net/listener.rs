//! The accept loop, and the drain of HTTP connections at shutdown.

use crate::meter::{Meter, Shed};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::HttpService;
use super::connection::{self, Shared};
use super::table::{SHED_BATCH, Table, Timeouts};
use crate::telemetry::throttle::{self, Throttle};

/// Accept errors back off from this...
const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// ...doubling up to this, so running out of files never makes the loop spin.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The bounds every connection is held to (from `server.*` settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_requests_in_flight: usize,
    /// Open connections beyond this are shed: the file limit minus `server.connection_reserve`.
    pub max_connections: usize,
}

/// The HTTP server: accepts until shutdown, then drains.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// The connection tasks (HTTP only: an upgraded socket lives in its WebSocket's task).
    tasks: TaskTracker,
    refused: Throttle,
    shed: Throttle,
}

impl Server {
    /// `shutdown` stops the accept loop and asks every connection to finish.
    pub fn new(
        listener: TcpListener,
        router: HttpService,
        limits: Limits,
        shutdown: CancellationToken,
        meter: Arc<Meter>,
    ) -> Self {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            // hyper's own header timer also runs while a keep-alive connection waits
            // for its next request, which would cut idle connections at the header
            // timeout: the connection task keeps both deadlines instead (table::Phase).
            .header_read_timeout(None)
            .max_header_size(limits.max_header_bytes)
            .keep_alive(true);
        let table = Arc::new(Table::new(limits.max_connections));
        let max_in_flight = limits.max_requests_in_flight;
        let (shed_table, refused_table) = (table.clone(), table.clone());
        let shared = Arc::new(Shared {
            router,
            http,
            timeouts: Timeouts {
                header_read: limits.header_read_timeout,
                idle: limits.idle_timeout,
            },
            table,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            overloaded: Throttle::new(throttle::EVERY, move |refused| {
                tracing::warn!(
                    refused,
                    limit = max_in_flight,
                    "load shedding: requests refused with 503 (server.max_requests_in_flight reached)"
                );
            }),
            meter,
            shutdown,
            abort: CancellationToken::new(),
        });
        Self {
            listener,
            shared,
            tasks: TaskTracker::new(),
            refused: Throttle::new(throttle::EVERY, move |refused| {
                tracing::warn!(
                    refused,
                    open = refused_table.open(),
                    "open connections at the file limit and none idle: new connections closed at once"
                );
            }),
            shed: Throttle::new(throttle::EVERY, move |shed| {
                tracing::warn!(
                    shed,
                    open = shed_table.open(),
                    "open connections near the file limit (server.connection_reserve): \
                     closing the oldest idle ones"
                );
            }),
        }
    }

    /// Accepts connections until shutdown, then closes the listener.
    pub async fn accept_until_shutdown(self) -> Drain {
        let Self {
            listener,
            shared,
            tasks,
            refused,
            shed,
        } = self;
        let shutdown = shared.shutdown.clone();
        let mut backoff: Option<Duration> = None;
        let mut failures: u64 = 0;
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(error = %e, open = shared.table.open(), "accept failed; backing off until it works again");
                    }
                    failures += 1;
                    if !per_connection(&e) {
                        // Out of files (EMFILE, ENFILE) or memory: idle connections give some back.
                        let shed = shared.table.shed(SHED_BATCH);
                        shared.meter.shed(Shed::Connection, shed as u64);
                    }
                    let delay = backoff.map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX));
                    backoff = Some(delay);
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            if failures > 0 {
                tracing::info!(failures, "accepting again after failed accepts");
                failures = 0;
                backoff = None;
            }
            match shared.table.admit() {
                Ok((slot, shedding)) => {
                    if shedding > 0 {
                        shared.meter.shed(Shed::Connection, shedding as u64);
                    }
                    if shedding > 0 {
                        shed.count(1);
                    }
                    // Protocol messages are tiny and latency matters more than packet count.
                    let _ = tcp.set_nodelay(true);
                    tasks.spawn(connection::serve(tcp, remote, slot, shared.clone()));
                }
                Err(()) => {
                    drop(tcp);
                    shared.meter.shed(Shed::Connection, 1);
                    refused.count(1);
                }
            }
        }
        drop(listener);
        tasks.close();
        tracing::info!(
            open = shared.table.open(),
            "shutdown: stopped accepting; idle connections closed, requests in flight finishing"
        );
        Drain { shared, tasks }
    }
}

/// Errors about one pending connection (the next accept is fine) rather than the process.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

/// The HTTP connections left after the accept loop stopped.
pub struct Drain {
    shared: Arc<Shared>,
    tasks: TaskTracker,
}

impl Drain {
    /// Resolves when every HTTP connection has closed (or become a WebSocket).
    pub async fn closed(&self) {
        self.tasks.wait().await;
    }

    /// Closes every HTTP connection still open, whatever it is doing.
    pub fn abort(&self) -> usize {
        self.shared.abort.cancel();
        self.tasks.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_requests_in_flight: 16,
            max_connections: 64,
        }
    }

    #[tokio::test]
    async fn every_request_carries_the_peer_address_and_shutdown_drains() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        #[expect(clippy::disallowed_methods, reason = "a test router, not the server's")]
        let router = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(
            Server::new(
                listener,
                HttpService::new(router),
                limits(),
                shutdown.clone(),
                Default::default(),
            )
            .accept_until_shutdown(),
        );

        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream
            .write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&local.to_string()), "{answer}");

        // An idle connection does not hold the drain.
        let _idle = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        let drain = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), drain.closed())
            .await
            .unwrap();
    }
}
