//! The client address (PROTOCOL.md section 7), from Envoy's TCP peer and
//! `X-Forwarded-For`, as nginx's `real_ip_recursive` does it: the hop list is
//! `X-Forwarded-For` followed by the peer, and it is walked from the right. An
//! address that is one of `trusted_proxies` is a proxy, and the entry to its left
//! (what that proxy appended) is believed; the first address that is not a
//! trusted proxy is the client. The walk takes at most `trusted_hops` steps, and
//! it also stops at the left end of the list or at an entry that is not an
//! address; the client is then the last address reached.
//!
//! So the client is never a value the client alone controls: a peer that is not a
//! trusted proxy (a client that bypasses the load balancer) is its own client,
//! whatever `X-Forwarded-For` it sends, and only entries appended by trusted
//! proxies are read.

use std::net::{IpAddr, SocketAddr};

pub use ipnet::IpNet;
use ipnet::Ipv4Net;

/// Derives the client address.
///
/// `xff` holds the `X-Forwarded-For` lines as received (Envoy must not append to
/// the header itself: `skip_xff_append: true`); `peer` is Envoy's view of the
/// downstream address (`source.address`). Without a peer there is nothing to
/// trust, and the client is unknown.
pub fn derive<'a>(
    xff: impl IntoIterator<Item = &'a str>,
    peer: Option<IpAddr>,
    trusted_hops: u32,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let trusted = |addr: IpAddr| trusted_proxies.iter().any(|n| n.contains(&addr));
    if trusted_hops == 0 || !trusted(peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = xff
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev().take(trusted_hops as usize) {
        if !trusted(client) {
            break;
        }
        match parse_addr(entry) {
            Some(addr) => client = addr,
            None => break,
        }
    }
    Some(client)
}

/// A CIDR block, or a bare address meaning that one host. An IPv4-mapped IPv6
/// block (`::ffff:10.0.0.0/104`) becomes the IPv4 block, because addresses are
/// compared in their canonical form (see [`parse_addr`]).
pub fn parse_net(s: &str) -> Option<IpNet> {
    let net = s
        .parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))?;
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).ok().map(IpNet::V4),
            None => Some(net),
        },
        _ => Some(net),
    }
}

/// Parses an address as proxies write them: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
/// `[::1]`, `[::1]:443`. IPv4-mapped IPv6 addresses become IPv4.
pub fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|r| r.parse::<IpAddr>().ok())
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[wasm_bindgen_test::wasm_bindgen_test(unsupported = test)]
    fn addresses_with_ports_and_brackets() {
        assert_eq!(parse_addr("1.2.3.4:80"), ip("1.2.3.4"));
        assert_eq!(parse_addr("[2001:db8::1]:443"), ip("2001:db8::1"));
        assert_eq!(parse_addr("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(parse_addr("::ffff:192.0.2.9"), ip("192.0.2.9"));
        assert_eq!(parse_addr("[::ffff:192.0.2.9]:8080"), ip("192.0.2.9"));
        assert_eq!(parse_addr("unknown"), None);
    }
}
