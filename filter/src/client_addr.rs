//! The client address (PROTOCOL.md section 7): the hop list is `X-Forwarded-For`
//! followed by Envoy's TCP peer, and the client is the entry `trusted_hops` to
//! the left of the peer. It is never taken from a value the client alone controls:
//! when the list is too short, or the entry is not an address, the peer is used.

use std::net::{IpAddr, SocketAddr};

/// Derives the client address.
///
/// `xff` holds the `X-Forwarded-For` lines as received (Envoy must not append to
/// the header itself: `skip_xff_append: true`); `peer` is Envoy's view of the
/// downstream address (`source.address`).
pub fn derive<'a>(
    xff: impl IntoIterator<Item = &'a str>,
    peer: Option<IpAddr>,
    trusted_hops: u32,
) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = xff
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let hops = trusted_hops as usize;
    if entries.len() < hops {
        return peer;
    }
    parse_addr(entries[entries.len() - hops]).or(peer)
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

    #[test]
    fn no_trusted_hops_means_the_peer() {
        assert_eq!(derive(["6.6.6.6"], ip("10.0.0.1"), 0), ip("10.0.0.1"));
    }

    #[test]
    fn one_hop_takes_what_the_load_balancer_appended() {
        assert_eq!(
            derive(["6.6.6.6, 203.0.113.7"], ip("10.0.0.1"), 1),
            ip("203.0.113.7")
        );
        assert_eq!(
            derive(["6.6.6.6", "203.0.113.7"], ip("10.0.0.1"), 1),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn two_hops_skip_the_inner_proxy() {
        assert_eq!(
            derive(["6.6.6.6, 203.0.113.7, 10.1.1.1"], ip("10.0.0.1"), 2),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_short_list_falls_back_to_the_peer() {
        assert_eq!(derive([], ip("10.0.0.1"), 1), ip("10.0.0.1"));
        assert_eq!(derive(["203.0.113.7"], ip("10.0.0.1"), 2), ip("10.0.0.1"));
    }

    #[test]
    fn garbage_falls_back_to_the_peer() {
        assert_eq!(derive(["nonsense"], ip("10.0.0.1"), 1), ip("10.0.0.1"));
    }

    #[test]
    fn addresses_with_ports_and_brackets() {
        assert_eq!(parse_addr("1.2.3.4:80"), ip("1.2.3.4"));
        assert_eq!(parse_addr("[2001:db8::1]:443"), ip("2001:db8::1"));
        assert_eq!(parse_addr("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(parse_addr("::ffff:192.0.2.9"), ip("192.0.2.9"));
    }
}
