//! A WebSocket driven straight from its socket's task: tungstenite's protocol state
//! (`WebSocketContext`) over the raw stream, given the task's waker on each call.
//!
//! axum's `WebSocket` (tokio-tungstenite's stream over hyper's boxed `Upgraded`) keeps
//! two shared waker proxies and a boxed IO per socket so that its halves could be
//! polled from different tasks; one task per socket needs none of that. What is left
//! per socket is the context (its read buffer and frame state) and the stream.

use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error, Message};

pub struct WebSocket<S> {
    io: S,
    ws: WebSocketContext,
    /// The connection is closed or failed: every later read answers `None`.
    ended: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// The server's end of a WebSocket on `io`, whose first bytes (read by the HTTP
    /// layer along with the upgrade request) are `read_ahead`.
    pub fn new(io: S, read_ahead: Bytes, config: WebSocketConfig) -> Self {
        let ws = if read_ahead.is_empty() {
            WebSocketContext::new(Role::Server, Some(config))
        } else {
            WebSocketContext::from_partially_read(read_ahead.to_vec(), Role::Server, Some(config))
        };
        Self { io, ws, ended: false }
    }

    /// The next message; `None` once the connection is closed. Cancel-safe: a
    /// partly read frame stays in the context's buffer. A `poll_fn`, not an
    /// `async fn`: waited on by every idle socket, its future is one reference
    /// where an `async fn`'s kept 40 bytes (`connection.rs`).
    pub fn recv(&mut self) -> impl Future<Output = Option<Result<Message, Error>>> + Send + '_
    where
        S: Send,
    {
        poll_fn(move |cx| {
            if self.ended {
                return Poll::Ready(None);
            }
            let (ws, io) = (&mut self.ws, &mut self.io);
            let Poll::Ready(read) = pending_if_blocked(ws.read(&mut Blocking { io, cx })) else {
                return Poll::Pending;
            };
            Poll::Ready(match read {
                Ok(message) => Some(Ok(message)),
                Err(e) => {
                    self.ended = true;
                    if matches!(e, Error::AlreadyClosed | Error::ConnectionClosed) {
                        None
                    } else {
                        Some(Err(e))
                    }
                }
            })
        })
    }

    /// Queues `message` and writes until it is flushed, as tokio-tungstenite's sink does.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        let mut message = Some(message);
        poll_fn(|cx| {
            let (ws, io) = (&mut self.ws, &mut self.io);
            let mut io = Blocking { io, cx };
            if let Some(message) = message.take() {
                match ws.write(&mut io, message) {
                    // A blocked write has queued the message: the flush below sends it.
                    Ok(()) => {}
                    Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            match pending_if_blocked(ws.flush(&mut io)) {
                // The close handshake just completed: the flush is done, not failed.
                Poll::Ready(Err(Error::ConnectionClosed)) => Poll::Ready(Ok(())),
                other => other,
            }
        })
        .await
    }
}

fn pending_if_blocked<T>(result: Result<T, Error>) -> Poll<Result<T, Error>> {
    match result {
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

/// The stream as tungstenite's blocking `Read`/`Write`: a stream that is not ready
/// registers the task's waker and answers `WouldBlock`.
struct Blocking<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for Blocking<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for Blocking<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::WebSocketStream;

    use super::*;

    /// The player's end speaks tokio-tungstenite over an in-memory pipe; the server's
    /// end is ours: messages cross both ways, and the close handshake ends the reads.
    #[tokio::test]
    async fn messages_cross_both_ways_and_a_close_ends_the_reads() {
        let step = std::time::Duration::from_secs(5);
        let (server, client) = tokio::io::duplex(4096);
        let mut server = WebSocket::new(server, Bytes::new(), WebSocketConfig::default().read_buffer_size(16));
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;

        client.send(Message::text("x".repeat(100))).await.unwrap();
        let got = tokio::time::timeout(step, server.recv())
            .await
            .expect("text")
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text("x".repeat(100)));

        server.send(Message::text(r#"{"action":"PING"}"#)).await.unwrap();
        assert_eq!(
            tokio::time::timeout(step, client.next())
                .await
                .expect("ping")
                .unwrap()
                .unwrap(),
            Message::text(r#"{"action":"PING"}"#)
        );

        // The player starts the close handshake and hangs up, as a client does.
        tokio::time::timeout(step, client.close(None))
            .await
            .expect("close sent")
            .unwrap();
        drop(client);
        let first = tokio::time::timeout(step, server.recv()).await.expect("close read");
        assert!(matches!(first, Some(Ok(Message::Close(None)))), "{first:?}");
        let after = tokio::time::timeout(step, server.recv()).await.expect("reads end");
        assert!(after.is_none() || matches!(after, Some(Err(_))), "{after:?}");
    }
}
