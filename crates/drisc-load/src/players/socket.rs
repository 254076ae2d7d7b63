//! What one player does on its WebSocket: REQUESTED → OK, PONG for every PING,
//! FINISHED, and the ways it can stop (leave, go silent, drop the socket).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use super::Env;
use super::messages::{Action, parse_action};
use crate::protocol::Phase;
use crate::stats::C;
use crate::target::{Dest, Stream};

pub type Ws = WebSocketStream<Stream>;

/// How long the server may take to answer REQUESTED or to close after FINISHED.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Lean client buffers: a generator holding 10k sockets should not need GBs.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Opens the endpoint, paced, from the next source address.
pub async fn open(env: &Env, endpoint: &str) -> Result<Ws> {
    env.pacer.wait().await;
    connect(env, endpoint).await
}

/// Opens the endpoint at once (the caller paced the whole join).
pub async fn connect(env: &Env, endpoint: &str) -> Result<Ws> {
    let result = async {
        let dest = Dest::endpoint(endpoint)?;
        let addr = env.resolved.addr(&dest).await?;
        let stream = dest.connect(addr, &env.sources, &env.tls).await?;
        let (ws, _) = timeout(
            ANSWER_TIMEOUT,
            client_async_with_config(endpoint, stream, Some(ws_config())),
        )
        .await
        .context("WebSocket handshake timed out")??;
        anyhow::Ok(ws)
    }
    .await;
    match &result {
        Ok(_) => env.counters.inc(C::WsOpen),
        Err(_) => env.counters.inc(C::NetError),
    }
    result
}

async fn send_action(ws: &mut Ws, action: &'static str) -> Result<()> {
    let text = match action {
        "REQUESTED" => r#"{"action":"REQUESTED"}"#,
        "PONG" => r#"{"action":"PONG"}"#,
        "FINISHED" => r#"{"action":"FINISHED"}"#,
        _ => bail!("not a player action: {action}"),
    };
    ws.send(Message::text(text)).await?;
    Ok(())
}

/// Sends REQUESTED and returns the server's answer (OK, EXPIRED, ...), answering
/// any PING that comes first.
pub async fn request(env: &Env, ws: &mut Ws) -> Result<Action> {
    send_action(ws, "REQUESTED").await?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let frame = timeout(deadline - Instant::now(), ws.next())
            .await
            .context("no answer to REQUESTED")?;
        match frame {
            Some(Ok(Message::Text(text))) => match parse_action(&text) {
                Action::Ping => {
                    env.counters.inc(C::Ping);
                    send_action(ws, "PONG").await?;
                    env.counters.inc(C::Pong);
                }
                answer => {
                    env.counters.inc(match answer {
                        Action::Ok => C::Ok,
                        Action::Expired => C::Expired,
                        Action::Terminate => C::Terminate,
                        Action::TakeOver(_) => C::TakenOver,
                        _ => C::ServerClose,
                    });
                    return Ok(answer);
                }
            },
            Some(Ok(Message::Close(_))) | None => {
                env.counters.inc(C::ServerClose);
                bail!("the server closed the socket before answering REQUESTED");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// How long a player waits for the close that answers FINISHED: longer than
/// [`ANSWER_TIMEOUT`], so that when a hundred thousand players finish in the same
/// second on a machine too small for the burst, a close that comes late is
/// counted as late ([`C::FinishedLate`]), not taken for one that never came.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends FINISHED and waits for the server's close.
///
/// An end is clean when the server closes with 1000 (the session was ended):
/// counted, with the time from FINISHED to that close frame as `finish`
/// latency, and as late past [`ANSWER_TIMEOUT`]. Any other close (1011: the
/// session store failed), or none within [`FINISH_TIMEOUT`], is not.
pub async fn finish(env: &Env, ws: &mut Ws) -> Result<()> {
    let sent = Instant::now();
    send_action(ws, "FINISHED").await?;
    env.counters.inc(C::Finished);
    let closed = timeout(FINISH_TIMEOUT, async {
        let mut code = None;
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Close(close) = frame {
                code = Some(close.map_or(1005, |c| u16::from(c.code)));
                break;
            }
        }
        code
    })
    .await;
    if let Ok(Some(1000)) = closed {
        let took = sent.elapsed();
        env.hists.record("finish", took);
        env.counters.inc(C::FinishedClean);
        if took > ANSWER_TIMEOUT {
            env.counters.inc(C::FinishedLate);
        }
    }
    let _ = timeout(ANSWER_TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    Ok(())
}

/// Why [`hold`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// The deadline passed; the socket is still held.
    Deadline,
    /// The coordinator changed the phase; the socket is still held.
    Phase(Phase),
    /// The server ended the session with this action, or closed the socket.
    Ended(Action),
    Closed,
}

/// Answers PINGs until `until`, a phase change, or the server ends the session.
pub async fn hold(env: &Env, ws: &mut Ws, until: Instant, phase: &mut watch::Receiver<Phase>) -> Held {
    let mut last_ping: Option<Instant> = None;
    loop {
        tokio::select! {
            changed = phase.changed() => {
                let now = match changed {
                    Ok(()) => *phase.borrow_and_update(),
                    Err(_) => Phase::Stop,
                };
                if now != Phase::Hold {
                    return Held::Phase(now);
                }
            }
            _ = sleep_until(until) => return Held::Deadline,
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => match parse_action(&text) {
                    Action::Ping => {
                        let now = Instant::now();
                        env.counters.inc(C::Ping);
                        if let Some(last) = last_ping {
                            let gap = now - last;
                            env.hists.record("ping_gap", gap);
                            if let Some(every) = env.ping_interval {
                                env.hists.record("ping_late", gap.saturating_sub(every));
                            }
                        }
                        last_ping = Some(now);
                        if send_action(ws, "PONG").await.is_err() {
                            env.counters.inc(C::ServerClose);
                            return Held::Closed;
                        }
                        env.counters.inc(C::Pong);
                    }
                    Action::Ok => {}
                    other => {
                        env.counters.inc(match other {
                            Action::Expired => C::Expired,
                            Action::Terminate => C::Terminate,
                            Action::TakeOver(_) => C::TakenOver,
                            _ => C::ServerClose,
                        });
                        return Held::Ended(other);
                    }
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    env.counters.inc(C::ServerClose);
                    return Held::Closed;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Waits, without reading the socket, until the phase leaves `current`.
pub async fn wait_phase(phase: &mut watch::Receiver<Phase>, current: Phase) -> Phase {
    loop {
        if phase.changed().await.is_err() {
            return Phase::Stop;
        }
        let now = *phase.borrow_and_update();
        if now != current {
            return now;
        }
    }
}
