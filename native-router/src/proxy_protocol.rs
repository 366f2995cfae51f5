//! The PROXY protocol version 2 header (haproxy's PROXY protocol specification,
//! section 2.2) that tells a backend the real client address.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a TCP connection from `client` to `local` (the router's
/// accepting address). Mixed families are sent as IPv6, IPv4 mapped.
pub fn header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (client.ip().to_canonical(), local.ip().to_canonical()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    out
}

/// Parses a v2 header at the start of `bytes` into (source, destination) and
/// the header's length; for tests and tools that play the backend.
pub fn parse(bytes: &[u8]) -> Option<(SocketAddr, SocketAddr, usize)> {
    if bytes.len() < 16 || bytes[..12] != SIGNATURE || bytes[12] != 0x21 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let body = bytes.get(16..16 + len)?;
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let (src, dst, ports) = match bytes[13] {
        0x11 if len >= 12 => {
            let a: [u8; 4] = body[0..4].try_into().ok()?;
            let b: [u8; 4] = body[4..8].try_into().ok()?;
            (IpAddr::from(a), IpAddr::from(b), 8)
        }
        0x21 if len >= 36 => {
            let a: [u8; 16] = body[0..16].try_into().ok()?;
            let b: [u8; 16] = body[16..32].try_into().ok()?;
            (IpAddr::from(a), IpAddr::from(b), 32)
        }
        _ => return None,
    };
    Some((
        SocketAddr::new(src, port(ports)),
        SocketAddr::new(dst, port(ports + 2)),
        16 + len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_round_trip_and_layout() {
        let (c, l) = (
            "203.0.113.7:51000".parse().unwrap(),
            "10.0.0.5:9001".parse().unwrap(),
        );
        let h = header(c, l);
        assert_eq!(h.len(), 28);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(parse(&h), Some((c, l, 28)));
    }

    #[test]
    fn mixed_families_become_ipv6() {
        let (c, l) = (
            "203.0.113.7:0".parse().unwrap(),
            "[2001:db8::1]:9001".parse().unwrap(),
        );
        let h = header(c, l);
        assert_eq!((h[13], h.len()), (0x21, 52));
        let (src, dst, _) = parse(&h).unwrap();
        assert_eq!((src.ip().to_canonical(), dst), (c.ip(), l));
    }
}
