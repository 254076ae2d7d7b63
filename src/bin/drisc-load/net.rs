//! Connections to this machine only: loopback targets, source addresses spread
//! over 127.0.0.0/8, and a pacer so the server's accept queue never overflows.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// How long a TCP connect may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The server under test: an `http://host:port` on a loopback address.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The `Host` header sent, as given (`127.0.0.1:8080`).
    pub authority: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        if rest.contains("://") {
            bail!("--target {url}: only plain http:// on a loopback address is supported");
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let addr = loopback_addr(authority).with_context(|| format!("--target {url}"))?;
        Ok(Self {
            addr,
            authority: authority.to_owned(),
        })
    }
}

/// `host:port` as a socket address, refused unless it is on this machine.
pub fn loopback_addr(authority: &str) -> Result<SocketAddr> {
    let (host, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("{authority:?} is not host:port"))?;
    let port: u16 = port.parse().with_context(|| format!("bad port in {authority:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        host.parse()
            .with_context(|| format!("{host:?} is not an IP address (use 127.0.0.1)"))?
    };
    if !ip.is_loopback() {
        bail!("{ip} is not a loopback address: drisc-load only ever targets this machine (127.0.0.0/8, [::1])");
    }
    Ok(SocketAddr::new(ip, port))
}

/// The address of a WebSocket endpoint handed out by the server; refused unless loopback.
pub fn ws_endpoint_addr(endpoint: &str) -> Result<SocketAddr> {
    let rest = endpoint
        .strip_prefix("ws://")
        .with_context(|| format!("endpoint {endpoint:?} is not a ws:// URL"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    loopback_addr(authority).context("the server handed out an endpoint that is not on this machine")
}

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
            if let Some(ip) = self.pick().filter(|_| to.is_ipv4()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(Target::parse("http://127.0.0.1:8080").is_ok());
        assert!(Target::parse("127.9.9.9:80").is_ok());
        assert!(Target::parse("http://localhost:1/").is_ok());
        assert!(Target::parse("http://[::1]:8080").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
        assert!(Target::parse("http://192.168.1.1:80").is_err());
        assert!(Target::parse("http://example.com:80").is_err());
        assert!(Target::parse("https://127.0.0.1:443").is_err());
        assert!(ws_endpoint_addr("ws://127.0.0.1:9/ws?token=x").is_ok());
        assert!(ws_endpoint_addr("ws://8.8.8.8:9/ws?token=x").is_err());
        assert!(ws_endpoint_addr("wss://127.0.0.1:9/ws").is_err());
    }

    #[test]
    fn sources_rotate_over_the_range() {
        let s = Sources::range(42, 7);
        assert_eq!(s.pick(), Some("127.42.7.1".parse().unwrap()));
        assert_eq!(s.pick(), Some("127.42.7.2".parse().unwrap()));
        assert_eq!(s.describe(), "127.42.7.1-127.42.7.254");
        assert_eq!(Sources::kernel().pick(), None);
    }
}
