//! One HTTP connection: hyper drives the protocol; this task adds the deadlines
//! between requests, closes the connection when it is shed, and at shutdown.
//! Every request passes [`Door`] on its way to the router.

use crate::meter::{Meter, Shed};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::HttpService;
use super::table::{Entry, Phase, Slot, Table, Timeouts};
use crate::error::ApiError;
use crate::telemetry::throttle::Throttle;

/// What every connection task shares.
pub(super) struct Shared {
    pub router: HttpService,
    pub http: hyper::server::conn::http1::Builder,
    pub timeouts: Timeouts,
    pub table: Arc<Table>,
    pub in_flight: Arc<Semaphore>,
    pub overloaded: Throttle,
    pub meter: Arc<Meter>,
    /// Cancelled at shutdown: finish the request in flight, then close.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain is over: close now, whatever is in flight.
    pub abort: CancellationToken,
}

/// Serves one accepted connection until it closes, is upgraded to a WebSocket (the
/// socket then lives on in the WebSocket's task), times out, is shed, or shutdown.
pub(super) async fn serve(tcp: TcpStream, remote: SocketAddr, slot: Slot, shared: Arc<Shared>) {
    let entry = slot.entry.clone();
    let door = Door {
        shared: shared.clone(),
        entry: entry.clone(),
        remote,
    };
    let conn = shared
        .http
        .serve_connection(TokioIo::new(Socket { tcp, slot }), door)
        .with_upgrades();
    tokio::pin!(conn);
    let timer = sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut draining = false;
    // A phase that begins without waking this task (a head starts arriving, a
    // request ends) has a deadline at least `tick` after it begins, so a task that
    // looks again at least every `tick` still closes on the very deadline. Waking
    // the task and moving its timer on each phase change cost two wake-ups, two
    // timer resets and four cancellation futures per request (bench/analysis.md).
    let tick = shared.timeouts.header_read.min(shared.timeouts.idle);
    loop {
        let now = Instant::now();
        let at = entry
            .deadline(&shared.timeouts)
            .map_or(now + tick, |deadline| deadline.min(now + tick));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        tokio::select! {
            biased;
            _ = shared.abort.cancelled() => return,
            _ = shared.shutdown.cancelled(), if !draining => {
                draining = true;
                // Nothing in flight (idle, or a head still arriving): nothing to finish.
                if !entry.in_flight() {
                    return;
                }
                // Answer the request in flight, then close (no keep-alive).
                conn.as_mut().graceful_shutdown();
            }
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            // Shed: the deadline is now.
            () = entry.wake.notified() => {}
            () = &mut timer => {
                // The phase may have changed since the timer was set: look again.
                if entry.deadline(&shared.timeouts).is_some_and(|at| at <= Instant::now()) {
                    match entry.phase() {
                        Phase::Head => tracing::debug!(%remote, "request head not complete within server.header_read_timeout; closed"),
                        Phase::Idle => tracing::debug!(%remote, "connection idle for server.idle_timeout; closed"),
                        _ => tracing::debug!(%remote, "connection shed: open connections near the file limit"),
                    }
                    return;
                }
            }
        }
    }
}

/// The connection's socket, which tells its [`Entry`] when bytes arrive, and frees
/// its [`Slot`] when dropped (by hyper, or by the WebSocket after an upgrade).
pub struct Socket {
    tcp: TcpStream,
    slot: Slot,
}

impl Socket {
    /// The socket under an upgraded connection, and the bytes hyper read past the
    /// request; `Err` gives the connection back if another server accepted it.
    /// A WebSocket served on the socket itself costs no boxed IO and no second
    /// buffer, and it keeps the connection's slot for as long as it lives.
    pub fn from_upgraded(upgraded: hyper::upgrade::Upgraded) -> Result<(Self, bytes::Bytes), hyper::upgrade::Upgraded> {
        upgraded
            .downcast::<TokioIo<Self>>()
            .map(|parts| (parts.io.into_inner(), parts.read_buf))
    }
}

impl AsyncRead for Socket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.entry.on_read();
        }
        polled
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The way from hyper to the router: marks the connection busy while a request is
/// in flight, sheds load past `server.max_requests_in_flight`, and gives every
/// request the peer's address (`ConnectInfo<SocketAddr>`).
#[derive(Clone)]
struct Door {
    shared: Arc<Shared>,
    entry: Arc<Entry>,
    remote: SocketAddr,
}

/// Marks the request in flight for as long as its handler runs.
struct InFlight(Arc<Entry>);

/// A body whose length is not known up front is written as it is produced (a
/// stream, such as GET /admin/v1/events): its request is in flight until it ends.
/// Bodies made in full by the handler (JSON, text) know their length.
fn is_streamed(response: &Response) -> bool {
    use hyper::body::Body as _;
    response.body().size_hint().exact().is_none()
}

/// A response body that keeps its request in flight until it ends.
struct Streaming {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Streaming {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

impl hyper::service::Service<Request<Incoming>> for Door {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.entry.request_started();
        let in_flight = InFlight(self.entry.clone());
        let Ok(permit) = self.shared.in_flight.clone().try_acquire_owned() else {
            self.shared.meter.shed(Shed::Request, 1);
            self.shared.overloaded.count(1);
            return Box::pin(async move {
                let _in_flight = in_flight;
                Ok(ApiError::Overloaded.into_response())
            });
        };
        request.extensions_mut().insert(ConnectInfo(self.remote));
        let shared = self.shared.clone();
        Box::pin(async move {
            let response = match shared.router.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                shared.table.upgraded(&in_flight.0);
            }
            drop(permit);
            if is_streamed(&response) {
                // A streamed body is a request in flight for as long as it lasts:
                // the connection is busy, so neither the idle deadline nor
                // shedding closes it between two events.
                return Ok(response.map(|body| {
                    axum::body::Body::new(Streaming {
                        body,
                        _in_flight: in_flight,
                    })
                }));
            }
            drop(in_flight);
            Ok(response)
        })
    }
}
