//! Who is on the other end: the source address a failed authentication is charged to.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// A source address as the limiter keys it: IPv4 whole, IPv6 by its /64, since one
/// IPv6 host commonly holds a whole /64 and could otherwise change address per try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(u128);

impl SourceKey {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(v4) => Self(u128::from(v4.to_ipv6_mapped())),
            // An IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d: it is one
            // IPv4 address, not a /64.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(v4.to_ipv6_mapped())),
                None => Self(u128::from(v6) & !u128::from(u64::MAX)),
            },
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// The address the request came from: the TCP peer, unless the peer is a trusted
    /// proxy; then the right-most `X-Forwarded-For` entry that is not a trusted proxy
    /// itself. Entries left of that one were written by the client and prove nothing.
    pub fn source(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut source = canonical(peer);
        if !self.trusts(source) {
            return source;
        }
        // Several headers count as one list, in order.
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            // Something a trusted proxy wrote that is not an address: stop at the
            // proxy that handed it over, never skip past it.
            let Some(addr) = parse_hop(hop) else { break };
            source = addr;
            if !self.trusts(source) {
                break;
            }
        }
        source
    }
}

/// One entry of X-Forwarded-For: an address, possibly with a port (`1.2.3.4:80`,
/// `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_share_a_key_and_ipv4_addresses_do_not() {
        assert_eq!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:3::1"))
        );
        assert_ne!(SourceKey::of(ip("10.0.0.1")), SourceKey::of(ip("10.0.0.2")));
        assert_eq!(SourceKey::of(ip("::ffff:10.0.0.1")), SourceKey::of(ip("10.0.0.1")));
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.source(ip("203.0.113.9"), &xff(&["198.51.100.1"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_source() {
        let p = proxies(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client forged the first entry; the proxy appended the real one.
        let headers = xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(p.source(ip("127.0.0.1"), &headers), ip("198.51.100.7"));
        // A peer that is not trusted is the source, whatever it claims.
        assert_eq!(p.source(ip("203.0.113.9"), &headers), ip("203.0.113.9"));
    }

    #[test]
    fn a_hop_that_is_not_an_address_stops_the_walk_at_the_proxy() {
        let p = proxies(&["127.0.0.1/32"]);
        assert_eq!(p.source(ip("127.0.0.1"), &xff(&["6.6.6.6, unknown"])), ip("127.0.0.1"));
        assert_eq!(
            p.source(ip("127.0.0.1"), &xff(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(p.source(ip("127.0.0.1"), &HeaderMap::new()), ip("127.0.0.1"));
    }
}
