//! Where client sockets come from. On loopback, each of the 127.0.0.0/8
//! addresses has its own ~28k ephemeral ports to the server, so a generator
//! that holds more sockets than that spreads them over many source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpSocket, TcpStream};

/// How long a TCP connect may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Source addresses to bind client sockets to, used round-robin. Each address
/// has its own ~28k ephemeral ports, and a fresh range per run avoids the
/// TIME_WAIT leftovers of the last one.
pub struct Sources {
    ips: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Sources {
    /// No binding: the kernel picks 127.0.0.1.
    pub fn kernel() -> Self {
        Self {
            ips: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// `127.a.b.1` to `127.a.b.254`.
    pub fn range(a: u8, b: u8) -> Self {
        Self {
            ips: (1..=254).map(|z| IpAddr::V4(Ipv4Addr::new(127, a, b, z))).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn describe(&self) -> String {
        match (self.ips.first(), self.ips.last()) {
            (Some(first), Some(last)) => format!("{first}-{last}"),
            _ => "kernel's choice".into(),
        }
    }

    fn pick(&self) -> Option<IpAddr> {
        if self.ips.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.ips.len();
        Some(self.ips[i])
    }

    /// Opens a TCP connection to `to` from the next source address.
    pub async fn connect(&self, to: SocketAddr) -> Result<TcpStream> {
        let mut last_error = None;
        // A source address can run out of ports; the next one has its own.
        for _ in 0..4 {
            let socket = if to.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // Only a loopback destination is reachable from 127.x.y.z; for any
            // other the kernel picks the source address and port.
            if let Some(ip) = self.pick().filter(|_| to.is_ipv4() && to.ip().is_loopback()) {
                socket.set_reuseaddr(true)?;
                if let Err(e) = socket.bind(SocketAddr::new(ip, 0)) {
                    last_error = Some(anyhow::Error::new(e).context(format!("bind {ip}")));
                    continue;
                }
            }
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
                .await
                .with_context(|| format!("connect to {to} timed out"))?
                .with_context(|| format!("connect to {to}"))?;
            stream.set_nodelay(true)?;
            return Ok(stream);
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no source address could be bound")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_rotate_over_the_range() {
        let s = Sources::range(42, 7);
        assert_eq!(s.pick(), Some("127.42.7.1".parse().unwrap()));
        assert_eq!(s.pick(), Some("127.42.7.2".parse().unwrap()));
        assert_eq!(s.describe(), "127.42.7.1-127.42.7.254");
        assert_eq!(Sources::kernel().pick(), None);
    }
}
