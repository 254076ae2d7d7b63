//! The server under test and the WebSocket endpoints it hands out: where to
//! connect (any `http://`/`https://` target, `ws://`/`wss://` endpoints), from
//! which source address, over TLS or not, and at what pace.

mod pacer;
mod sources;
mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use url::{Host, Url};

pub use pacer::{Pacer, busy_poll};
pub use sources::Sources;
pub use tls::Tls;

/// A connection to the server: plain TCP, or TLS for `https`/`wss`. Either way
/// HTTP and WebSocket code reads and writes it the same. The TLS state is boxed:
/// it is about a kilobyte, and a generator holding tens of thousands of plain
/// sockets should not carry it inline in each.
pub type Stream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Where to connect: a host and port, over TLS or not.
#[derive(Debug, Clone)]
pub struct Dest {
    /// The host as named (a DNS name, or an IP address without brackets): the
    /// TLS server name.
    host: String,
    /// The address when the host is an IP address (or `localhost`): no lookup.
    ip: Option<IpAddr>,
    port: u16,
    secure: bool,
}

impl Dest {
    fn from_url(url: &Url, plain: &str, secure: &str) -> Result<Self> {
        let scheme = url.scheme();
        if scheme != plain && scheme != secure {
            bail!("{url}: give a {plain}:// or {secure}:// URL");
        }
        let (host, ip) = match url.host().context("no host")? {
            Host::Domain(name) if name.eq_ignore_ascii_case("localhost") => {
                (name.to_owned(), Some(Ipv4Addr::LOCALHOST.into()))
            }
            Host::Domain(name) => (name.to_owned(), None),
            Host::Ipv4(ip) => (ip.to_string(), Some(ip.into())),
            Host::Ipv6(ip) => (ip.to_string(), Some(ip.into())),
        };
        let port = url.port_or_known_default().context("no port")?;
        Ok(Self {
            host,
            ip,
            port,
            secure: scheme == secure,
        })
    }

    /// A WebSocket endpoint handed out by the server (`ws://` or `wss://`).
    pub fn endpoint(endpoint: &str) -> Result<Self> {
        let url = Url::parse(endpoint).with_context(|| format!("endpoint {endpoint:?} is not a URL"))?;
        Self::from_url(&url, "ws", "wss").with_context(|| format!("endpoint {endpoint:?}"))
    }

    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The socket address, from the IP address as given or the first one a DNS
    /// lookup answers.
    pub async fn resolve(&self) -> Result<SocketAddr> {
        if let Some(ip) = self.ip {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("cannot resolve {}", self.host))?
            .next()
            .with_context(|| format!("{} has no address", self.host))
    }

    /// Opens a connection to `addr` (this destination's address) from the next
    /// source address, with the TLS handshake when the scheme asks for it.
    pub async fn connect(&self, addr: SocketAddr, sources: &Sources, tls: &Tls) -> Result<Stream> {
        let tcp = sources.connect(addr).await?;
        if self.secure {
            Ok(Either::Right(Box::new(tls.handshake(tcp, &self.host).await?)))
        } else {
            Ok(Either::Left(tcp))
        }
    }
}

/// Endpoint addresses already looked up, so a process makes one DNS query per
/// host rather than one per socket. A run lasts minutes: record TTLs are not
/// honoured.
#[derive(Default)]
pub struct Resolved(Mutex<HashMap<(String, u16), SocketAddr>>);

impl Resolved {
    pub async fn addr(&self, dest: &Dest) -> Result<SocketAddr> {
        if dest.ip.is_some() {
            return dest.resolve().await;
        }
        let key = (dest.host.clone(), dest.port);
        if let Some(addr) = self.0.lock().ok().and_then(|known| known.get(&key).copied()) {
            return Ok(addr);
        }
        let addr = dest.resolve().await?;
        if let Ok(mut known) = self.0.lock() {
            known.insert(key, addr);
        }
        Ok(addr)
    }
}

/// The server under test, resolved once per process.
#[derive(Debug, Clone)]
pub struct Target {
    pub dest: Dest,
    pub addr: SocketAddr,
    /// The `Host` header sent, as given (`127.0.0.1:8080`).
    pub authority: String,
}

impl Target {
    /// Parses an `http://` or `https://` target (`host:port` alone means
    /// `http://`) and looks its host up.
    pub async fn resolve(target: &str) -> Result<Self> {
        let (dest, authority) = Self::parse(target)?;
        let addr = dest.resolve().await.with_context(|| format!("--target {target}"))?;
        Ok(Self { dest, addr, authority })
    }

    fn parse(target: &str) -> Result<(Dest, String)> {
        let with_scheme = if target.contains("://") {
            target.to_owned()
        } else {
            format!("http://{target}")
        };
        let url = Url::parse(&with_scheme).with_context(|| format!("--target {target} is not a URL"))?;
        let dest = Dest::from_url(&url, "http", "https").with_context(|| format!("--target {target}"))?;
        let host = url.host_str().unwrap_or_default();
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Ok((dest, authority))
    }

    /// A server on this machine: the repository's own benches and tests. Any
    /// other is someone's real server, and gets a warning.
    pub fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }

    pub async fn connect(&self, sources: &Sources, tls: &Tls) -> Result<Stream> {
        self.dest.connect(self.addr, sources, tls).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(target: &str) -> Result<Dest> {
        Target::parse(target).map(|(dest, _)| dest)
    }

    #[test]
    fn http_and_https_targets_anywhere_are_accepted() {
        for target in [
            "http://127.0.0.1:8080",
            "127.9.9.9:80",
            "http://localhost:1/",
            "http://[::1]:8080",
            "http://10.0.0.1:8080",
            "https://staging.example.com",
            "https://127.0.0.1:443",
        ] {
            assert!(dest(target).is_ok(), "{target}");
        }
        assert!(dest("ftp://127.0.0.1:21").is_err());
        assert!(dest("ws://127.0.0.1:80").is_err());
        assert!(dest("http://").is_err());
    }

    #[test]
    fn a_target_keeps_its_authority_and_gets_the_scheme_s_port() {
        let (dest, authority) = Target::parse("https://staging.example.com/").unwrap();
        assert_eq!(
            (dest.host.as_str(), dest.port, dest.secure, dest.ip),
            ("staging.example.com", 443, true, None)
        );
        assert_eq!(authority, "staging.example.com");
        let (dest, authority) = Target::parse("http://[::1]:8080").unwrap();
        assert_eq!((dest.host.as_str(), dest.port, dest.secure), ("::1", 8080, false));
        assert_eq!(authority, "[::1]:8080");
        assert_eq!(
            Target::parse("localhost:9").unwrap().0.ip,
            Some(Ipv4Addr::LOCALHOST.into())
        );
    }

    #[tokio::test]
    async fn only_a_target_on_this_machine_counts_as_loopback() {
        // IP addresses are taken as given: no lookup, no packet sent.
        assert!(Target::resolve("http://127.0.0.1:8080").await.unwrap().is_loopback());
        assert!(Target::resolve("http://[::1]:8080").await.unwrap().is_loopback());
        assert!(Target::resolve("localhost:8080").await.unwrap().is_loopback());
        assert!(!Target::resolve("https://10.0.0.1").await.unwrap().is_loopback());
    }

    #[test]
    fn a_plain_connection_does_not_carry_the_tls_state_inline() {
        assert!(
            size_of::<Stream>() <= 2 * size_of::<TcpStream>(),
            "{}",
            size_of::<Stream>()
        );
    }

    #[test]
    fn websocket_endpoints_may_be_ws_or_wss() {
        let plain = Dest::endpoint("ws://127.0.0.1:9/ws?token=x").unwrap();
        assert!(!plain.is_secure());
        assert_eq!(plain.port, 9);
        let secure = Dest::endpoint("wss://node1.example.com/ws?token=x").unwrap();
        assert!(secure.is_secure());
        assert_eq!((secure.host.as_str(), secure.port), ("node1.example.com", 443));
        assert!(Dest::endpoint("http://127.0.0.1:9/ws").is_err());
        assert!(Dest::endpoint("/ws?token=x").is_err());
    }
}
