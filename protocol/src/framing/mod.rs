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
#[cfg(feature = "tokio")]
pub mod websocket;

#[cfg(feature = "tokio")]
pub use alpn_ping::AlpnPingStream;
#[cfg(feature = "tokio")]
pub use framed::{discard_until_end, Ending, Finish, Framed, Io, Prefixed};
#[cfg(feature = "tokio")]
pub(crate) use framed::{poll_fill, poll_read_limited, Pinger};
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
