//! One player's socket: binds it to its session, keeps the session alive while
//! PONGs come back, and carries out the orders the domain posts to it.
//!
//! Each socket is one task with no spawned helpers, no channel and no timer of its
//! own: a select over the socket and its mailbox, which carries the orders, the
//! shutdown and the wakes of the hub's ticker once the socket's next deadline has
//! passed (`hub.rs`). The task's future is what a held session costs most, so what
//! it keeps is small: two deadlines of 8 bytes, the session's pool key and id
//! rather than its whole token.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use super::deadline::Deadline;
use super::hub::Mailbox;
use super::messages::{ClientMessage, ServerMessage, close};
use super::socket::WebSocket;
use crate::auth::SessionClaims;
use crate::domain::clock::duration_ms;
use crate::domain::ports::{Control, EndCause};
use crate::domain::{MessageBudget, PoolKey, SessionId};
use crate::meter::Meter;
use crate::state::AppState;
use crate::telemetry::throttle::{self, Throttle};

// A store outage reaches every socket at once (each PONG, each close): a line
// per socket would be a flood. Each is a debug line; the warning is one line per
// 10 s with the count, the first of a burst's with its session and cause.
const STORE_FAILED_LINE: &str = "session store failed: sockets closed with 1011 \
     (one line per 10 s at most, with the count since the last; each at debug)";
const UNDETACHED_LINE: &str = "could not detach sessions whose sockets closed \
     (one line per 10 s at most, with the count since the last; each at debug)";
static STORE_FAILED: LazyLock<Throttle> = LazyLock::new(|| {
    Throttle::new(throttle::EVERY, |sockets| {
        tracing::warn!(sockets, "{STORE_FAILED_LINE}")
    })
});
static UNDETACHED: LazyLock<Throttle> = LazyLock::new(|| {
    Throttle::new(throttle::EVERY, |sessions| {
        tracing::warn!(sessions, "{UNDETACHED_LINE}")
    })
});

/// What a socket's loop needs of the stream under it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// How long a closing socket waits for the player's close reply. Closing the TCP
/// connection at once could reset it and lose the close frame we just sent.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Far enough to mean "never" for a deadline that is not armed.
const NEVER: Duration = Duration::from_secs(86_400 * 365);

/// Why the loop ended, which decides what happens to the session.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// The socket went away without FINISHED: a bound session is detached.
    Lost,
    /// The session is over for this socket (finished, taken over, replaced,
    /// expired): nothing more to do.
    Done,
    /// The server is shutting down: the session is kept as it is, to be saved.
    Shutdown,
}

/// Everything a socket's task keeps, built before the task starts: the arguments of
/// an async function stay in its future for its whole life, so a value moved from
/// one into another local would be kept twice.
struct Connection {
    state: AppState,
    mailbox: Arc<Mailbox>,
    session: SessionId,
    pool: PoolKey,
    /// When the session token expires (seconds since the epoch; `u32` lasts
    /// until 2106, and a later `exp` is read as then).
    token_expires: u32,
    bound: bool,
    bad_messages: u32,
    budget: MessageBudget,
    next_ping: Deadline,
    /// While bound: the PONG deadline; before: the deadline for REQUESTED.
    pong_deadline: Deadline,
}

/// The task of one upgraded socket.
pub fn run<S: Stream>(socket: WebSocket<S>, claims: SessionClaims, state: AppState) -> impl Future<Output = ()> + Send {
    let mailbox = state.hub.register();
    let SessionClaims {
        sid,
        publisher_id,
        customer_id,
        offer_id,
        exp,
    } = claims;
    // Until REQUESTED binds it, the socket gets the connect timeout to send it:
    // an idle socket must not hold a file descriptor forever.
    let pong_deadline = Deadline::after(state.control.timings().connect_timeout);
    let conn = Connection {
        state,
        mailbox,
        session: sid,
        pool: PoolKey::from_ids(&publisher_id, &customer_id, &offer_id),
        token_expires: u32::try_from(exp).unwrap_or(u32::MAX),
        bound: false,
        bad_messages: 0,
        budget: MessageBudget::default(),
        next_ping: Deadline::after(NEVER),
        pong_deadline,
    };
    conn.live(socket)
}

impl Connection {
    // Not an `async fn`: its arguments would be stored twice in its future (as
    // arguments, and as the locals they are moved into), 576 bytes per socket. An
    // async block uses what it captured in place.
    #[expect(clippy::manual_async_fn, reason = "an async fn stores its arguments twice")]
    fn live<S: Stream>(mut self, mut socket: WebSocket<S>) -> impl Future<Output = ()> + Send {
        async move {
            let exit = self.serve(&mut socket).await;
            self.state.hub.unregister(self.mailbox.holder());
            if exit == Exit::Lost && self.bound {
                // Boxed, as it runs once: inline, its state would be part of every idle socket.
                let detached = Box::pin(
                    self.state
                        .control
                        .detach(&self.pool, self.session, self.mailbox.holder()),
                )
                .await;
                if let Err(e) = detached {
                    tracing::debug!(session = %self.session, error = %e, "could not detach a session whose socket closed");
                    if let Some(sessions) = UNDETACHED.hit() {
                        tracing::warn!(sessions, session = %self.session, error = %e, "{UNDETACHED_LINE}");
                    }
                }
            }
            tracing::debug!(session = %self.session, ?exit, "socket closed");
        }
    }
    /// When the hub's ticker must wake the socket: its deadline, or its next PING
    /// if that comes first.
    fn next_wake(&self) -> Deadline {
        if self.bound {
            self.pong_deadline.min(self.next_ping)
        } else {
            self.pong_deadline
        }
    }

    async fn serve<S: Stream>(&mut self, socket: &mut WebSocket<S>) -> Exit {
        loop {
            self.mailbox.wake_at(self.next_wake());
            // The shutdown comes through the mailbox (`Hub::close_all`); a socket
            // registered after it was sent reads it here before its first wait.
            if self.state.hub.is_closing() {
                finish(&self.state.meter, socket, None, close::RESTART, "server restarting").await;
                return Exit::Shutdown;
            }
            // The select only tells which side woke the socket, in a block of its own:
            // handled inside the select, or with the frame in a local of the loop, the
            // select's output (56 bytes: room for a frame) was kept across the awaits
            // that follow, in every idle socket's task.
            if let Some(on_frame) = {
                let frame = tokio::select! {
                    biased;
                    () = self.mailbox.wait() => None,
                    frame = socket.recv() => Some(frame),
                };
                frame.map(|frame| self.handle(socket, frame))
            } {
                if let Some(exit) = on_frame.await {
                    return exit;
                }
                continue;
            }
            if self.state.hub.is_closing() {
                continue;
            }
            if let Some(order) = self.mailbox.take_final() {
                // Boxed, as it runs once.
                return Box::pin(self.obey(socket, order)).await;
            }
            if self.mailbox.take_ping() && self.bound && !ping(socket).await {
                return Exit::Lost;
            }
            let now = Deadline::now();
            if self.pong_deadline <= now {
                // Boxed, as it runs once: inline, its state would be part of every idle socket.
                return Box::pin(self.on_deadline(socket)).await;
            }
            if self.bound && self.next_ping <= now {
                self.next_ping = Deadline::after(self.state.control.timings().ping_interval);
                if !ping(socket).await {
                    return Exit::Lost;
                }
            }
        }
    }

    /// What to do with a frame (or the end of the stream), boxed: inline, its state
    /// would be part of every idle socket.
    fn handle<'a, S: Stream>(
        &'a mut self,
        socket: &'a mut WebSocket<S>,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Pin<Box<dyn Future<Output = Option<Exit>> + Send + 'a>> {
        // A handle of its own, as `on_frame` borrows `self` mutably.
        let mailbox = Arc::clone(&self.mailbox);
        Box::pin(async move { self.on_frame(socket, &mailbox, frame).await })
    }

    /// The deadline passed: no REQUESTED in time, or no PONG.
    async fn on_deadline<S: Stream>(&mut self, socket: &mut WebSocket<S>) -> Exit {
        if !self.bound {
            finish(&self.state.meter, socket, None, close::POLICY, "no REQUESTED in time").await;
            return Exit::Done;
        }
        // No PONG in time: the player is gone or stuck; free the slot.
        let _ = self
            .state
            .control
            .end_held(&self.pool, self.session, self.mailbox.holder(), EndCause::PongTimeout)
            .await;
        finish(
            &self.state.meter,
            socket,
            Some(ServerMessage::Expired),
            close::EXPIRED,
            "no PONG in time",
        )
        .await;
        Exit::Done
    }

    /// Carries out a final order posted by the domain.
    async fn obey<S: Stream>(&self, socket: &mut WebSocket<S>, order: Control) -> Exit {
        match order {
            Control::TakeOver { session_name } => {
                let message = ServerMessage::TakeOver {
                    session_name: &session_name,
                };
                finish(
                    &self.state.meter,
                    socket,
                    Some(message),
                    close::TAKEN_OVER,
                    "taken over",
                )
                .await;
            }
            Control::Terminate => {
                finish(
                    &self.state.meter,
                    socket,
                    Some(ServerMessage::Terminate),
                    close::TERMINATED,
                    "session opened elsewhere",
                )
                .await;
            }
            Control::Expire | Control::Ping => {
                finish(
                    &self.state.meter,
                    socket,
                    Some(ServerMessage::Expired),
                    close::EXPIRED,
                    "session ended",
                )
                .await;
            }
        }
        Exit::Done
    }

    async fn on_frame<S: Stream>(
        &mut self,
        socket: &mut WebSocket<S>,
        mailbox: &Mailbox,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Option<Exit> {
        // Every frame counts, valid PONGs and protocol pings too: a socket that sends
        // them as fast as it can costs every other player time.
        let counted = matches!(
            frame,
            Some(Ok(Message::Text(_)
                | Message::Binary(_)
                | Message::Ping(_)
                | Message::Pong(_)))
        );
        if counted && !self.spend_budget() {
            self.state.hub.count_flooded_socket();
            tracing::info!(session = %self.session, "socket sent more messages than its budget; closed");
            finish(&self.state.meter, socket, None, close::POLICY, "too many messages").await;
            return Some(Exit::Lost);
        }
        let text = match frame {
            None | Some(Ok(Message::Close(_))) => return Some(Exit::Lost),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                finish(
                    &self.state.meter,
                    socket,
                    None,
                    close::UNSUPPORTED,
                    "binary frames are not accepted",
                )
                .await;
                return Some(Exit::Lost);
            }
            // Protocol-level pings are answered by the WebSocket layer itself; a
            // reader never yields raw frames.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return None,
            Some(Err(e)) => {
                let (code, reason) = match e {
                    tungstenite::Error::Capacity(_) => (close::TOO_BIG, "message too big"),
                    tungstenite::Error::Utf8(_) => (close::INVALID_TEXT, "text is not UTF-8"),
                    _ => return Some(Exit::Lost),
                };
                finish(&self.state.meter, socket, None, code, reason).await;
                return Some(Exit::Lost);
            }
        };
        match ClientMessage::parse(&text) {
            None => self.on_bad_message(socket).await,
            Some(ClientMessage::Requested) => self.on_requested(socket).await,
            Some(ClientMessage::Pong) => self.on_pong(socket, mailbox).await,
            Some(ClientMessage::Finished) => self.on_finished(socket).await,
        }
    }

    /// Spends one message of this socket's budget: `websocket.message_burst`,
    /// refilled one per `ping_interval / 4`. `false` once it is spent.
    fn spend_budget(&mut self) -> bool {
        let state = &self.state;
        if !state.limits.enabled() {
            return true;
        }
        let refill = duration_ms(state.control.timings().ping_interval) / 4;
        let now = state.control.clock().now();
        self.budget.spend(now, state.settings.websocket.message_burst, refill)
    }

    async fn on_bad_message<S: Stream>(&mut self, socket: &mut WebSocket<S>) -> Option<Exit> {
        self.bad_messages += 1;
        self.state.hub.count_bad_message();
        if self.bad_messages > self.state.settings.websocket.max_bad_messages {
            finish(
                &self.state.meter,
                socket,
                None,
                close::POLICY,
                "too many invalid messages",
            )
            .await;
            return Some(Exit::Lost);
        }
        None
    }

    async fn on_requested<S: Stream>(&mut self, socket: &mut WebSocket<S>) -> Option<Exit> {
        let now_secs = self.state.control.clock().now() / 1000;
        let attached = if u64::from(self.token_expires) > now_secs {
            match self
                .state
                .control
                .attach(&self.pool, self.session, self.mailbox.holder())
                .await
            {
                Ok(attached) => attached,
                Err(e) => return Some(self.store_failed(socket, e).await),
            }
        } else {
            None
        };
        let Some(pool) = attached else {
            finish(
                &self.state.meter,
                socket,
                Some(ServerMessage::Expired),
                close::EXPIRED,
                "session expired",
            )
            .await;
            return Some(Exit::Done);
        };
        // The store's copy of the key, where it keeps one: this socket's own
        // (parsed from its token) is freed.
        self.pool = pool;
        let timings = self.state.control.timings();
        self.bound = true;
        self.next_ping = Deadline::after(timings.ping_interval);
        self.pong_deadline = Deadline::after(timings.pong_timeout);
        (!send(socket, &ServerMessage::Ok).await).then_some(Exit::Lost)
    }

    async fn on_pong<S: Stream>(&mut self, socket: &mut WebSocket<S>, mailbox: &Mailbox) -> Option<Exit> {
        if !self.bound {
            return None;
        }
        match self
            .state
            .control
            .heartbeat(&self.pool, self.session, self.mailbox.holder())
            .await
        {
            Ok(true) => {
                self.pong_deadline = Deadline::after(self.state.control.timings().pong_timeout);
                None
            }
            // Replaced or ended: an order saying which may already be posted.
            Ok(false) => Some(self.obey(socket, mailbox.take_final().unwrap_or(Control::Expire)).await),
            Err(e) => Some(self.store_failed(socket, e).await),
        }
    }

    async fn on_finished<S: Stream>(&mut self, socket: &mut WebSocket<S>) -> Option<Exit> {
        if !self.bound {
            // Nothing was played on this socket: it cannot end a session it never held.
            return self.on_bad_message(socket).await;
        }
        if let Err(e) = self
            .state
            .control
            .end_held(&self.pool, self.session, self.mailbox.holder(), EndCause::Finished)
            .await
        {
            return Some(self.store_failed(socket, e).await);
        }
        finish(&self.state.meter, socket, None, close::FINISHED, "finished").await;
        Some(Exit::Done)
    }

    async fn store_failed<S: Stream>(&self, socket: &mut WebSocket<S>, error: impl std::fmt::Display) -> Exit {
        tracing::debug!(session = %self.session, %error, "session store failed; closing the socket");
        if let Some(sockets) = STORE_FAILED.hit() {
            tracing::warn!(sockets, session = %self.session, %error, "{STORE_FAILED_LINE}");
        }
        finish(&self.state.meter, socket, None, 1011, "session store unavailable").await;
        Exit::Lost
    }
}

async fn send<S: Stream>(socket: &mut WebSocket<S>, message: &ServerMessage<'_>) -> bool {
    socket.send(Message::Text(message.to_text())).await.is_ok()
}

/// Sends a PING. Boxed: it runs once per `ping_interval`, and inline its state
/// (176 bytes, the largest of the loop's) would be part of every idle socket.
fn ping<S: Stream>(socket: &mut WebSocket<S>) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
    Box::pin(send(socket, &ServerMessage::Ping))
}

/// Sends an optional last message and a close frame (counted by its code), then
/// lingers briefly for the player's close reply.
///
/// Boxed: it runs once per socket, and inline it would make every socket's task
/// larger by its whole state for as long as the socket lives.
fn finish<'a, S: Stream>(
    meter: &Meter,
    socket: &'a mut WebSocket<S>,
    last: Option<ServerMessage<'a>>,
    code: u16,
    reason: &'static str,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    meter.ws_close(code);
    Box::pin(finish_now(socket, last, code, reason))
}

async fn finish_now<S: Stream>(
    socket: &mut WebSocket<S>,
    last: Option<ServerMessage<'_>>,
    code: u16,
    reason: &'static str,
) {
    if let Some(message) = last
        && !send(socket, &message).await
    {
        return;
    }
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The size of that future as a `TaskTracker` spawns it (`ws/mod.rs`).
    fn tracked_size<A, B, C, F: Future>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<tokio_util::task::task_tracker::TrackedFuture<F>>()
    }

    /// What tokio allocates for a task around a future of `future` bytes (tokio 1.54,
    /// `runtime/task/core.rs`): a 32-byte header, the scheduler's handle and the task's
    /// id, the stage's tag, the future, a 48-byte trailer, the whole aligned to 128
    /// bytes on x86_64. Checked against what tokio asks the allocator for by
    /// `bench/task-size` (the lib forbids the unsafe code a recording allocator
    /// needs): past 1,024 bytes a task takes 1,152, which jemalloc serves from its
    /// 1,280-byte class.
    fn task_allocation(future: usize) -> usize {
        (32 + 16 + 8 + future + 48).next_multiple_of(128)
    }

    /// Every held session keeps one of these futures for as long as it lives (inside
    /// its task, next to tokio's own header): bench/analysis.md accounts for it, and
    /// this bound keeps the task within 640 bytes (1,024 before round sixteen: the
    /// pool key in one string, the deadlines as milliseconds, the socket's id in its
    /// mailbox; 896 before round seventeen: no timer of its own, the mailbox and the
    /// socket waited on through plain `poll_fn`s, no frame kept across the loop's
    /// awaits). 16 bytes are left before tokio's 128-byte alignment puts the task in
    /// jemalloc's 768-byte class, 128 bytes more for every held session.
    #[test]
    fn a_socket_task_stays_small() {
        let on_raw_socket = future_size(run::<crate::net::Socket>);
        let on_hyper_io = future_size(run::<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>);
        let tracked = tracked_size(run::<crate::net::Socket>)
            .max(tracked_size(run::<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>));
        println!("socket task future: {on_raw_socket} bytes on the raw socket, {on_hyper_io} on hyper's IO");
        println!(
            "of which: WebSocket {} (tungstenite's context {}), AppState {}, the connection {}",
            std::mem::size_of::<WebSocket<crate::net::Socket>>(),
            std::mem::size_of::<tungstenite::protocol::WebSocketContext>(),
            std::mem::size_of::<AppState>(),
            std::mem::size_of::<Connection>(),
        );
        println!(
            "tracked: {tracked} bytes; the task: {} bytes; the mailbox {} (with its Arc's counts {})",
            task_allocation(tracked),
            std::mem::size_of::<Mailbox>(),
            std::mem::size_of::<Mailbox>() + 16,
        );
        assert!(task_allocation(tracked) <= 640, "{tracked} bytes tracked");
    }
}
