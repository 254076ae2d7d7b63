//! One player's socket: binds it to its session, keeps the session alive while
//! PONGs come back, and carries out the orders the domain posts to it.
//!
//! Each socket is one task with no spawned helpers and no channel: a select over
//! the socket, its mailbox, two deadlines and the shutdown signal.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use tokio::time::{Instant, sleep_until};

use super::hub::Mailbox;
use super::messages::{ClientMessage, ServerMessage, close};
use crate::auth::SessionClaims;
use crate::domain::clock::duration_ms;
use crate::domain::ports::{Control, EndCause};
use crate::domain::{Holder, MessageBudget, PoolKey};
use crate::meter::Meter;
use crate::state::AppState;

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

struct Connection<'a> {
    state: &'a AppState,
    claims: SessionClaims,
    pool: PoolKey,
    holder: Holder,
    bound: bool,
    bad_messages: u32,
    budget: MessageBudget,
    next_ping: Instant,
    /// While bound: the PONG deadline; before: the deadline for REQUESTED.
    pong_deadline: Instant,
}

pub async fn run(mut socket: WebSocket, claims: SessionClaims, state: AppState) {
    let (holder, mailbox) = state.hub.register();
    let far = Instant::now() + NEVER;
    let mut conn = Connection {
        state: &state,
        pool: claims.pool(),
        claims,
        holder,
        bound: false,
        bad_messages: 0,
        budget: MessageBudget::default(),
        next_ping: far,
        // Until REQUESTED binds it, the socket gets the connect timeout to send it:
        // an idle socket must not hold a file descriptor forever.
        pong_deadline: Instant::now() + state.control.timings().connect_timeout,
    };
    let exit = conn.serve(&mut socket, &mailbox).await;
    state.hub.unregister(holder);
    if exit == Exit::Lost && conn.bound {
        let (pool, id) = (&conn.pool, conn.claims.sid);
        if let Err(e) = state.control.detach(pool, id, holder).await {
            tracing::warn!(session = %id, error = %e, "could not detach a session whose socket closed");
        }
    }
    tracing::debug!(session = %conn.claims.sid, ?exit, "socket closed");
}

impl Connection<'_> {
    async fn serve(&mut self, socket: &mut WebSocket, mailbox: &Mailbox) -> Exit {
        let shutdown = self.state.shutdown.clone();
        let deadline = sleep_until(self.pong_deadline);
        let ping = sleep_until(self.next_ping);
        tokio::pin!(deadline, ping);
        loop {
            // The timers are re-armed only when their instant moved, not every turn.
            if deadline.deadline() != self.pong_deadline {
                deadline.as_mut().reset(self.pong_deadline);
            }
            if ping.deadline() != self.next_ping {
                ping.as_mut().reset(self.next_ping);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    finish(&self.state.meter, socket, None, close::RESTART, "server restarting").await;
                    return Exit::Shutdown;
                }
                _ = mailbox.wait() => {
                    if let Some(order) = mailbox.take_final() {
                        return self.obey(socket, order).await;
                    }
                    if mailbox.take_ping() && self.bound && !send(socket, &ServerMessage::Ping).await {
                        return Exit::Lost;
                    }
                }
                _ = &mut deadline => {
                    if !self.bound {
                        finish(&self.state.meter, socket, None, close::POLICY, "no REQUESTED in time").await;
                        return Exit::Done;
                    }
                    // No PONG in time: the player is gone or stuck; free the slot.
                    let _ = self
                        .state
                        .control
                        .end_held(&self.pool, self.claims.sid, self.holder, EndCause::PongTimeout)
                        .await;
                    finish(&self.state.meter, socket, Some(ServerMessage::Expired), close::EXPIRED, "no PONG in time").await;
                    return Exit::Done;
                }
                _ = &mut ping, if self.bound => {
                    self.next_ping = Instant::now() + self.state.control.timings().ping_interval;
                    if !send(socket, &ServerMessage::Ping).await {
                        return Exit::Lost;
                    }
                }
                frame = socket.recv() => {
                    // Boxed: inline, its state would be part of every idle socket.
                    if let Some(exit) = Box::pin(self.on_frame(socket, mailbox, frame)).await {
                        return exit;
                    }
                }
            }
        }
    }

    /// Carries out a final order posted by the domain.
    async fn obey(&self, socket: &mut WebSocket, order: Control) -> Exit {
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

    async fn on_frame(
        &mut self,
        socket: &mut WebSocket,
        mailbox: &Mailbox,
        frame: Option<Result<Message, axum::Error>>,
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
            tracing::info!(session = %self.claims.sid, "socket sent more messages than its budget; closed");
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
            // Protocol-level pings are answered by the WebSocket layer itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return None,
            Some(Err(e)) => {
                let (code, reason) = match e.into_inner().downcast_ref::<tungstenite::Error>() {
                    Some(tungstenite::Error::Capacity(_)) => (close::TOO_BIG, "message too big"),
                    Some(tungstenite::Error::Utf8(_)) => (close::INVALID_TEXT, "text is not UTF-8"),
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
        let state = self.state;
        if !state.limits.enabled() {
            return true;
        }
        let refill = duration_ms(state.control.timings().ping_interval) / 4;
        let now = state.control.clock().now();
        self.budget.spend(now, state.settings.websocket.message_burst, refill)
    }

    async fn on_bad_message(&mut self, socket: &mut WebSocket) -> Option<Exit> {
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

    async fn on_requested(&mut self, socket: &mut WebSocket) -> Option<Exit> {
        let now_secs = self.state.control.clock().now() / 1000;
        let attached = !self.claims.is_expired(now_secs)
            && match self
                .state
                .control
                .attach(&self.pool, self.claims.sid, self.holder)
                .await
            {
                Ok(attached) => attached,
                Err(e) => return Some(self.store_failed(socket, e).await),
            };
        if !attached {
            finish(
                &self.state.meter,
                socket,
                Some(ServerMessage::Expired),
                close::EXPIRED,
                "session expired",
            )
            .await;
            return Some(Exit::Done);
        }
        let timings = self.state.control.timings();
        let now = Instant::now();
        self.bound = true;
        self.next_ping = now + timings.ping_interval;
        self.pong_deadline = now + timings.pong_timeout;
        (!send(socket, &ServerMessage::Ok).await).then_some(Exit::Lost)
    }

    async fn on_pong(&mut self, socket: &mut WebSocket, mailbox: &Mailbox) -> Option<Exit> {
        if !self.bound {
            return None;
        }
        match self
            .state
            .control
            .heartbeat(&self.pool, self.claims.sid, self.holder)
            .await
        {
            Ok(true) => {
                self.pong_deadline = Instant::now() + self.state.control.timings().pong_timeout;
                None
            }
            // Replaced or ended: an order saying which may already be posted.
            Ok(false) => Some(self.obey(socket, mailbox.take_final().unwrap_or(Control::Expire)).await),
            Err(e) => Some(self.store_failed(socket, e).await),
        }
    }

    async fn on_finished(&mut self, socket: &mut WebSocket) -> Option<Exit> {
        if !self.bound {
            // Nothing was played on this socket: it cannot end a session it never held.
            return self.on_bad_message(socket).await;
        }
        if let Err(e) = self
            .state
            .control
            .end_held(&self.pool, self.claims.sid, self.holder, EndCause::Finished)
            .await
        {
            return Some(self.store_failed(socket, e).await);
        }
        finish(&self.state.meter, socket, None, close::FINISHED, "finished").await;
        Some(Exit::Done)
    }

    async fn store_failed(&self, socket: &mut WebSocket, error: impl std::fmt::Display) -> Exit {
        tracing::warn!(session = %self.claims.sid, %error, "session store failed; closing the socket");
        finish(&self.state.meter, socket, None, 1011, "session store unavailable").await;
        Exit::Lost
    }
}

async fn send(socket: &mut WebSocket, message: &ServerMessage<'_>) -> bool {
    socket.send(Message::Text(message.to_text())).await.is_ok()
}

/// Sends an optional last message and a close frame (counted by its code), then
/// lingers briefly for the player's close reply.
///
/// Boxed: it runs once per socket, and inline it would make every socket's task
/// larger by its whole state for as long as the socket lives.
fn finish<'a>(
    meter: &Meter,
    socket: &'a mut WebSocket,
    last: Option<ServerMessage<'a>>,
    code: u16,
    reason: &'static str,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    meter.ws_close(code);
    Box::pin(finish_now(socket, last, code, reason))
}

async fn finish_now(socket: &mut WebSocket, last: Option<ServerMessage<'_>>, code: u16, reason: &'static str) {
    if let Some(message) = last
        && !send(socket, &message).await
    {
        return;
    }
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async { while let Some(Ok(_)) = socket.recv().await {} }).await;
}
