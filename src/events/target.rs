//! Where a webhook may point. A URL that reaches this server's own network
//! (loopback, private ranges, link-local such as cloud metadata endpoints) would
//! let whoever holds the admin key probe it, so such targets are refused unless
//! the operator allows them (`webhooks.allow_private_targets`): at registration,
//! by resolving the host, and at every connection, by the resolver the delivery
//! client uses ([`GuardedResolver`]), so a DNS answer that changes after
//! registration (DNS rebinding) is caught too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// The longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("url is not a valid URL")]
    Invalid,
    #[error("url must be at most {MAX_URL_BYTES} bytes")]
    TooLong,
    #[error("url must be http:// or https://")]
    Scheme,
    #[error("url must not carry a user or password (the signature authenticates the sender)")]
    Credentials,
    #[error("url has no host")]
    NoHost,
    #[error("url's host {0} does not resolve")]
    Unresolved(String),
    #[error(
        "url's host resolves to {0}, a loopback, private or otherwise non-public address: refused unless webhooks.allow_private_targets is true"
    )]
    Private(IpAddr),
}

/// Checks a URL's shape: http(s), a host, no credentials, bounded.
pub fn parse(url: &str) -> Result<Url, TargetError> {
    if url.len() > MAX_URL_BYTES {
        return Err(TargetError::TooLong);
    }
    let parsed = Url::parse(url).map_err(|_| TargetError::Invalid)?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(TargetError::Scheme);
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(TargetError::Credentials);
    }
    if parsed.host().is_none() {
        return Err(TargetError::NoHost);
    }
    Ok(parsed)
}

/// Checks the URL and, unless private targets are allowed, every address its
/// host resolves to now.
pub async fn check(url: &str, allow_private: bool) -> Result<Url, TargetError> {
    let parsed = parse(url)?;
    if allow_private {
        return Ok(parsed);
    }
    match parsed.host() {
        Some(Host::Ipv4(ip)) => public(IpAddr::V4(ip))?,
        Some(Host::Ipv6(ip)) => public(IpAddr::V6(ip))?,
        Some(Host::Domain(name)) => {
            let port = parsed.port_or_known_default().unwrap_or(443);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
                .await
                .map_err(|_| TargetError::Unresolved(name.to_owned()))?
                .collect();
            if addrs.is_empty() {
                return Err(TargetError::Unresolved(name.to_owned()));
            }
            for addr in addrs {
                public(addr.ip())?;
            }
        }
        None => return Err(TargetError::NoHost),
    }
    Ok(parsed)
}

/// An IP literal in a URL is never resolved, so the delivery checks it itself.
pub fn check_literal(url: &Url) -> Result<(), TargetError> {
    match url.host() {
        Some(Host::Ipv4(ip)) => public(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => public(IpAddr::V6(ip)),
        _ => Ok(()),
    }
}

fn public(ip: IpAddr) -> Result<(), TargetError> {
    if is_non_public(ip) {
        Err(TargetError::Private(ip))
    } else {
        Ok(())
    }
}

/// Loopback, private, link-local, shared (CGNAT), unspecified, multicast,
/// broadcast, documentation and other special-purpose ranges; IPv4 inside IPv6
/// (mapped, NAT64) is judged as the IPv4 address it carries.
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public_v4(v4);
            }
            let [a, b, c, d, e, f, ..] = v6.segments();
            if (a, b, c, d, e, f) == (0x64, 0xff9b, 0, 0, 0, 0) {
                let o = v6.octets();
                return non_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            const RANGES: &[(Ipv6Addr, u8)] = &[
                (Ipv6Addr::UNSPECIFIED, 128),
                (Ipv6Addr::LOCALHOST, 128),
                (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
                (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
                (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
                (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
                (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
                (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
                // IPv4-compatible (deprecated) addresses.
                (Ipv6Addr::UNSPECIFIED, 96),
            ];
            RANGES
                .iter()
                .any(|(net, len)| Ipv6Net::new(*net, *len).is_ok_and(|n| n.contains(&v6)))
        }
    }
}

fn non_public_v4(ip: Ipv4Addr) -> bool {
    const RANGES: &[([u8; 4], u8)] = &[
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 0, 2, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
    ];
    RANGES
        .iter()
        .any(|(net, len)| Ipv4Net::new(Ipv4Addr::from(*net), *len).is_ok_and(|n| n.contains(&ip)))
}

/// The delivery client's resolver: the system's answer, with every non-public
/// address removed unless allowed; no address left is an error, so the client
/// never connects to one.
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // The port is replaced by the client; 0 is a placeholder.
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || !is_non_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no public address (webhooks.allow_private_targets is false)").into();
                return Err(refused);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

impl GuardedResolver {
    pub fn shared(allow_private: bool) -> Arc<Self> {
        Arc::new(Self { allow_private })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "ff02::1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            assert!(is_non_public(parsed), "{ip} should be refused");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            let parsed: IpAddr = ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            assert!(!is_non_public(parsed), "{ip} is public");
        }
    }

    #[test]
    fn urls_are_checked_for_shape() {
        assert_eq!(parse("ftp://example.com").err(), Some(TargetError::Scheme));
        assert_eq!(parse("not a url").err(), Some(TargetError::Invalid));
        assert_eq!(parse("https://u:p@example.com/").err(), Some(TargetError::Credentials));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert_eq!(parse(&long).err(), Some(TargetError::TooLong));
        assert!(parse("https://example.com/hook").is_ok());
    }

    #[tokio::test]
    async fn loopback_targets_are_refused_unless_allowed() {
        assert!(matches!(
            check("http://127.0.0.1:9/hook", false).await,
            Err(TargetError::Private(_))
        ));
        assert!(matches!(
            check("http://localhost:9/hook", false).await,
            Err(TargetError::Private(_))
        ));
        assert!(check("http://127.0.0.1:9/hook", true).await.is_ok());
    }

    #[tokio::test]
    async fn the_delivery_resolver_drops_private_addresses_unless_allowed() {
        let name = |host: &str| host.parse::<Name>().unwrap_or_else(|_| unreachable!());
        let refused = GuardedResolver { allow_private: false }
            .resolve(name("localhost"))
            .await;
        assert!(refused.is_err());
        let allowed = GuardedResolver { allow_private: true }.resolve(name("localhost")).await;
        assert!(allowed.is_ok_and(|mut addrs| addrs.next().is_some()));
    }
}
