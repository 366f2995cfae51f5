//! The PROXY protocol version 2 header (haproxy's PROXY protocol specification,
//! section 2.2) that tells a backend the real client address. Only the encoder
//! lives here: the tests read its headers with `ppp`, an independent parser.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
pub(crate) const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

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

#[cfg(test)]
mod tests {
    //! The PROXY v2 encoder checked against `ppp`, an independent parser: every
    //! header the router writes must read back, in another implementation of the
    //! specification, as a PROXY command for TCP with the same addresses and ports,
    //! in the family the specification asks for.

    use std::net::{IpAddr, SocketAddr};

    use super::header;
    use ppp::v2::{AddressFamily, Addresses, Command, Header, Protocol, Version};

    /// Parses `bytes` with `ppp` and checks what every header must be: one whole
    /// v2 header, command PROXY, protocol TCP; returns its family and addresses.
    fn parsed(bytes: &[u8]) -> (AddressFamily, SocketAddr, SocketAddr) {
        let h = Header::try_from(bytes).unwrap_or_else(|e| panic!("ppp refused {bytes:02x?}: {e}"));
        assert_eq!(h.len(), bytes.len(), "one header, nothing after it");
        assert_eq!(h.version, Version::Two);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.protocol, Protocol::Stream);
        assert_eq!(h.tlvs().count(), 0, "no TLVs are sent");
        let (src, dst) = match h.addresses {
            Addresses::IPv4(a) => (
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            Addresses::IPv6(a) => (
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            ),
            other => panic!("not an IP family: {other:?}"),
        };
        (h.address_family(), src, dst)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_round_trip_and_layout() {
        let (c, l) = (addr("203.0.113.7:51000"), addr("10.0.0.5:9001"));
        let h = header(c, l);
        assert_eq!(h.len(), 28);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(parsed(&h), (AddressFamily::IPv4, c, l));
    }

    #[test]
    fn ipv4_edge_addresses_and_ports() {
        for (c, l) in [
            ("0.0.0.0:0", "255.255.255.255:65535"),
            ("127.0.0.1:1", "127.0.0.1:65534"),
            ("255.255.255.255:65535", "0.0.0.0:0"),
        ] {
            let (c, l) = (addr(c), addr(l));
            assert_eq!(parsed(&header(c, l)), (AddressFamily::IPv4, c, l));
        }
    }

    #[test]
    fn ipv6_round_trip() {
        for (c, l) in [
            ("[2001:db8::7]:51000", "[2001:db8::1]:9001"),
            ("[::1]:1", "[::1]:65535"),
            (
                "[fe80::1:2:3:4]:0",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:443",
            ),
            ("[::]:65535", "[2001:db8:0:0:0:0:0:ffff]:5432"),
        ] {
            let (c, l) = (addr(c), addr(l));
            let h = header(c, l);
            assert_eq!((h[13], h.len()), (0x21, 52));
            assert_eq!(parsed(&h), (AddressFamily::IPv6, c, l));
        }
    }

    /// One IPv4 and one IPv6 end cannot share a v4 header: both travel as IPv6,
    /// the IPv4 one mapped (`::ffff:a.b.c.d`), in either position.
    #[test]
    fn mixed_families_become_ipv6() {
        let (c, l) = (addr("203.0.113.7:0"), addr("[2001:db8::1]:9001"));
        let h = header(c, l);
        assert_eq!((h[13], h.len()), (0x21, 52));
        let (family, src, dst) = parsed(&h);
        assert_eq!(family, AddressFamily::IPv6);
        assert_eq!((src.ip().to_canonical(), dst), (c.ip(), l));
        assert_eq!(src.ip().to_string(), "::ffff:203.0.113.7");
        assert_eq!(src.port(), 0);

        let (c, l) = (addr("[2001:db8::9]:40000"), addr("10.0.0.5:9001"));
        let (family, src, dst) = parsed(&header(c, l));
        assert_eq!(family, AddressFamily::IPv6);
        assert_eq!(src, c);
        assert_eq!((dst.ip().to_canonical(), dst.port()), (l.ip(), l.port()));
    }

    /// An IPv4 peer seen on a dual-stack socket arrives as `::ffff:a.b.c.d`; the
    /// backend is told the IPv4 address in a v4 header, as if the socket were v4.
    #[test]
    fn ipv4_mapped_addresses_are_sent_as_ipv4() {
        let c = addr("[::ffff:198.51.100.3]:6000");
        let l = addr("[::ffff:10.0.0.5]:9001");
        let h = header(c, l);
        assert_eq!(h.len(), 28);
        let (family, src, dst) = parsed(&h);
        assert_eq!(family, AddressFamily::IPv4);
        assert_eq!(src, addr("198.51.100.3:6000"));
        assert_eq!(dst, addr("10.0.0.5:9001"));
        assert_eq!(src.ip(), c.ip().to_canonical());
        assert!(matches!(dst.ip(), IpAddr::V4(_)));
    }
}
