//! The framings of PROTOCOL.md section 4: which one ([`Framing`]) and, with the
//! `tokio` feature, each as a stream type that the inner TLS runs on: `Framed`
//! is raw bytes for `alpn`, `AlpnPingStream` for `alpn-ping`, `WebSocketStream`
//! for `websocket`, and `Finish` ends a tunnel as the protocol says. The router
//! uses them as the server, `alpn-tunnel` as the client.
//!
//! Each is driven by one task (the tunnel's copy loop polls reads and writes from
//! the same task); pings are sent from `poll_read`, which that loop always has
//! pending, so a quiet tunnel is still pinged.

#[cfg(feature = "tokio")]
pub mod alpn_ping;
#[cfg(feature = "tokio")]
mod framed;
#[cfg(all(test, feature = "tokio"))]
mod test_wire;
#[cfg(feature = "tokio")]
pub mod websocket;

#[cfg(feature = "tokio")]
pub use alpn_ping::AlpnPingStream;
#[cfg(feature = "tokio")]
pub use framed::{discard_until_end, Ending, Finish, Framed, Io, Prefixed};
#[cfg(feature = "tokio")]
pub(crate) use framed::{poll_fill, poll_read_limited, poll_write_frame, Pinger};

/// The most of a caller's slices one framed write passes on to the socket
/// (rustls hands over up to 64 records at a time).
#[cfg(feature = "tokio")]
pub(crate) const MAX_SLICES: usize = 64;
#[cfg(feature = "tokio")]
pub use websocket::WebSocketStream;

/// Which end of the tunnel a framing runs at (WebSocket masks client frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `alpn-tunnel`.
    Client,
    /// The router.
    Server,
}

pub use crate::names::Subprotocol;
use crate::names::UpgradeType;

/// How an upgraded stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Upgrade: alpn`: raw bytes.
    Alpn,
    /// `Upgrade: alpn-ping`: length-prefixed frames, zero-length ones are pings.
    AlpnPing,
    /// `Upgrade: websocket` with a subprotocol.
    WebSocket(Subprotocol),
}

impl Framing {
    /// The upgrade type (whose token [`crate::names::Names`] holds).
    pub fn upgrade_type(self) -> UpgradeType {
        match self {
            Framing::Alpn => UpgradeType::Alpn,
            Framing::AlpnPing => UpgradeType::AlpnPing,
            Framing::WebSocket(_) => UpgradeType::WebSocket,
        }
    }

    /// The framing of an upgrade of type `t`; WebSocket with `subprotocol`
    /// (plain `alpn` when none was chosen).
    pub fn of(t: UpgradeType, subprotocol: Option<Subprotocol>) -> Framing {
        match t {
            UpgradeType::Alpn => Framing::Alpn,
            UpgradeType::AlpnPing => Framing::AlpnPing,
            UpgradeType::WebSocket => Framing::WebSocket(subprotocol.unwrap_or(Subprotocol::Alpn)),
        }
    }

    /// The name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Framing::Alpn => "alpn",
            Framing::AlpnPing => "alpn-ping",
            Framing::WebSocket(Subprotocol::Alpn) => "websocket",
            Framing::WebSocket(Subprotocol::AlpnPing) => "websocket-ping",
        }
    }

    /// Whether the server sends pings: on `alpn-ping` and on WebSocket with
    /// subprotocol `alpn-ping` (PROTOCOL.md section 4).
    pub fn pings(self) -> bool {
        matches!(
            self,
            Framing::AlpnPing | Framing::WebSocket(Subprotocol::AlpnPing)
        )
    }

    /// Whether `role` sends pings in this framing: the server where
    /// [`Framing::pings`] says so, the client whenever the framing can carry a
    /// ping (all but raw `alpn`), so that a quiet tunnel survives idle timeouts
    /// even when the server does not ping.
    pub fn pings_as(self, role: Role) -> bool {
        match role {
            Role::Server => self.pings(),
            Role::Client => self != Framing::Alpn,
        }
    }
}

/// Appends `payload` to `out` as one data frame a client sends in `framing`:
/// as it is for `alpn`, behind its length for `alpn-ping`, as a masked binary
/// WebSocket frame (a fresh mask) for `websocket`. For bytes a client sends
/// before it has a stream to frame them with: the inner ClientHello right
/// behind the upgrade request, where the request's framing is not yet
/// answered but is the only one the server may switch to.
#[cfg(feature = "tokio")]
pub fn encode_client_frame(
    framing: Framing,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    use crate::websocket::{apply_mask, encode_header, FIN, MAX_HEADER, OP_BINARY};
    match framing {
        Framing::Alpn => out.extend_from_slice(payload),
        Framing::AlpnPing => {
            let len = u32::try_from(payload.len()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB")
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(payload);
        }
        Framing::WebSocket(_) => {
            let mut key = [0; 4];
            getrandom::fill(&mut key).map_err(|e| {
                std::io::Error::other(format!("no randomness for a WebSocket mask: {e}"))
            })?;
            let mut header = [0; MAX_HEADER];
            let n = encode_header(
                &mut header,
                FIN | OP_BINARY,
                payload.len() as u64,
                Some(key),
            );
            out.extend_from_slice(&header[..n]);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], key, 0);
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What a client frames ahead of its stream, the server's own reader
    /// reads back, whatever the payload's size (each WebSocket length form).
    #[tokio::test]
    async fn a_frame_encoded_ahead_reads_back_through_the_servers_framing() {
        let framings = [
            Framing::Alpn,
            Framing::AlpnPing,
            Framing::WebSocket(Subprotocol::Alpn),
            Framing::WebSocket(Subprotocol::AlpnPing),
        ];
        for framing in framings {
            for len in [0usize, 1, 125, 126, 517, 65_535, 65_536, 70_000] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
                let mut wire = Vec::new();
                encode_client_frame(framing, &payload, &mut wire).unwrap();
                let (mut client, server) = tokio::io::duplex(1 << 20);
                client.write_all(&wire).await.unwrap();
                client.shutdown().await.unwrap();
                let mut framed =
                    Framed::new(framing, Role::Server, server, Vec::new(), Duration::ZERO);
                let mut back = Vec::new();
                framed.read_to_end(&mut back).await.unwrap();
                assert!(
                    back == payload,
                    "{} with {len} bytes: {} read back",
                    framing.name(),
                    back.len()
                );
            }
        }
    }

    #[test]
    fn a_websocket_frame_is_masked_and_binary() {
        let payload = [0u8; 40];
        let mut wire = Vec::new();
        encode_client_frame(Framing::WebSocket(Subprotocol::Alpn), &payload, &mut wire).unwrap();
        assert_eq!(wire[0], 0x82, "FIN and binary");
        assert_eq!(wire[1], 0x80 | 40, "masked, 40 bytes");
        assert_eq!(wire.len(), 2 + 4 + 40);
        assert_eq!(&wire[6..], &wire[2..6].repeat(10)[..], "zeros XOR the mask");
    }
}
