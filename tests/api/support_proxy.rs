//! A TCP relay on loopback that a test can hold: what one node sees when the
//! network between it and Redis stalls while Redis itself, and every other
//! node, goes on. Bytes are held, not dropped, so a held connection resumes
//! where it stopped once let go (as after a network partition that heals
//! before TCP gives up).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    /// Where clients connect instead of the upstream.
    pub addr: SocketAddr,
    held: watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Relay {
    /// On a thread and runtime of its own, so that a test blocking its own
    /// thread (starting a server process and waiting for it) does not hold it.
    pub fn start(upstream: SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (held, watch) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let accepting = async {
                    while let Ok((client, _)) = listener.accept().await {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            continue;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::spawn(pipe(client_read, server_write, watch.clone()));
                        tokio::spawn(pipe(server_read, client_write, watch.clone()));
                    }
                };
                tokio::select! {
                    () = accepting => {}
                    _ = stopped => {}
                }
            });
        });
        Relay {
            addr,
            held,
            stop: Some(stop),
        }
    }

    /// Holds every byte in either direction (new connections are accepted, and held too).
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

impl Drop for Relay {
    /// Stops the runtime, and with it every connection through the relay.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Copies `from` to `to`, waiting before each write while the relay is held.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if held.wait_for(|held| !*held).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
