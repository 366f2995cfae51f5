//! The names of the protocol, each configurable and defaulting to PROTOCOL.md's:
//! the upgrade paths, the upgrade type and WebSocket subprotocol tokens, and the
//! two headers of its own (the duplicate of `Upgrade`, and the client address).
//! The filter, the router and the client must agree on them.

/// The upgrade type framed as RFC 6455 WebSocket; every other type is an ALPN
/// tunnel type (raw or length-prefixed frames).
pub const WEBSOCKET: &str = "websocket";
/// The raw ALPN tunnel type.
pub const ALPN: &str = "alpn";
/// The ALPN tunnel type framed in length-prefixed frames with pings.
pub const ALPN_PING: &str = "alpn-ping";

/// The names one deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Paths (without query) on which upgrades are served; anything else there is refused.
    pub upgrade_paths: Vec<String>,
    /// Upgrade types accepted, lower case, in the order a 426 answer lists them.
    pub allowed_types: Vec<String>,
    /// WebSocket subprotocols accepted, in order of preference.
    pub websocket_subprotocols: Vec<String>,
    /// Header that repeats the upgrade type for middleboxes that scrub `Upgrade`.
    pub duplicate_upgrade_header: String,
    /// Header through which the client address reaches the router.
    pub client_addr_header: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            upgrade_paths: vec!["/connectionupgrade".into()],
            allowed_types: vec![ALPN.into(), ALPN_PING.into(), WEBSOCKET.into()],
            websocket_subprotocols: vec![ALPN.into(), ALPN_PING.into()],
            duplicate_upgrade_header: "x-alpn-upgrade".into(),
            client_addr_header: "x-alpn-client-addr".into(),
        }
    }
}

impl Names {
    /// Whether `path` (without its query) is an upgrade path.
    pub fn is_upgrade_path(&self, path: &str) -> bool {
        self.upgrade_paths.iter().any(|p| p == path)
    }

    /// The allowed types as a 426 answer lists them: `alpn, alpn-ping, websocket`.
    pub fn allowed_list(&self) -> String {
        self.allowed_types.join(", ")
    }
}

/// Whether `path` can be an upgrade path: it starts with `/` and has no query,
/// fragment or space.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/') && !path.contains(['?', '#', ' '])
}

/// Whether `token` is an HTTP token (RFC 9110 section 5.6.2), as upgrade types,
/// subprotocols and header names must be.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
