//! The names of the protocol, each configurable and defaulting to PROTOCOL.md's:
//! the upgrade paths, the token each upgrade type and WebSocket subprotocol is
//! sent as, and the two headers of its own (the duplicate of `Upgrade`, and the
//! client address). The filter, the router and the client must agree on them;
//! [`crate::names_config`] reads them from a configuration.
//!
//! The code works on [`UpgradeType`] and [`Subprotocol`]; tokens appear only
//! on the wire, looked up here.

/// The upgrade types of PROTOCOL.md section 2, whatever their tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpgradeType {
    /// Raw bytes after the 101 (`alpn`).
    Alpn,
    /// Length-prefixed frames, zero-length ones are pings (`alpn-ping`).
    AlpnPing,
    /// RFC 6455 WebSocket with a subprotocol (`websocket`).
    WebSocket,
}

impl UpgradeType {
    /// Every type, in the order PROTOCOL.md lists them.
    pub const ALL: [UpgradeType; 3] = [
        UpgradeType::Alpn,
        UpgradeType::AlpnPing,
        UpgradeType::WebSocket,
    ];

    /// PROTOCOL.md's token, the default.
    pub fn default_token(self) -> &'static str {
        match self {
            UpgradeType::Alpn => "alpn",
            UpgradeType::AlpnPing => "alpn-ping",
            UpgradeType::WebSocket => "websocket",
        }
    }

    /// The key that renames it in a configuration's `type_tokens`.
    pub fn key(self) -> &'static str {
        match self {
            UpgradeType::Alpn => "alpn",
            UpgradeType::AlpnPing => "alpn_ping",
            UpgradeType::WebSocket => "websocket",
        }
    }
}

/// The WebSocket subprotocols of PROTOCOL.md section 2, whatever their tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subprotocol {
    /// Plain: the server answers pings and sends none.
    Alpn,
    /// The server sends a WebSocket Ping every ping interval.
    AlpnPing,
}

impl Subprotocol {
    /// Both subprotocols, in the order PROTOCOL.md lists them.
    pub const ALL: [Subprotocol; 2] = [Subprotocol::Alpn, Subprotocol::AlpnPing];

    /// PROTOCOL.md's token, the default.
    pub fn default_token(self) -> &'static str {
        match self {
            Subprotocol::Alpn => "alpn",
            Subprotocol::AlpnPing => "alpn-ping",
        }
    }

    /// The key that renames it in a configuration's `subprotocol_tokens`.
    pub fn key(self) -> &'static str {
        match self {
            Subprotocol::Alpn => "alpn",
            Subprotocol::AlpnPing => "alpn_ping",
        }
    }
}

/// The names one deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Paths (without query) on which upgrades are served; anything else there is refused.
    pub upgrade_paths: Vec<String>,
    /// The token of each upgrade type, lower case, indexed as [`UpgradeType::ALL`].
    pub type_tokens: [String; 3],
    /// Upgrade types accepted, in the order a 426 answer lists them.
    pub allowed_types: Vec<UpgradeType>,
    /// The token of each subprotocol, lower case, indexed as [`Subprotocol::ALL`].
    pub subprotocol_tokens: [String; 2],
    /// WebSocket subprotocols accepted, in order of preference.
    pub websocket_subprotocols: Vec<Subprotocol>,
    /// Header that repeats the upgrade type for middleboxes that scrub `Upgrade`.
    pub duplicate_upgrade_header: String,
    /// Header through which the client address reaches the router.
    pub client_addr_header: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            upgrade_paths: vec!["/connectionupgrade".into()],
            type_tokens: UpgradeType::ALL.map(|t| t.default_token().to_string()),
            allowed_types: UpgradeType::ALL.to_vec(),
            subprotocol_tokens: Subprotocol::ALL.map(|s| s.default_token().to_string()),
            websocket_subprotocols: Subprotocol::ALL.to_vec(),
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

    /// The token `t` is sent as.
    pub fn type_token(&self, t: UpgradeType) -> &str {
        &self.type_tokens[t as usize]
    }

    /// The upgrade type `token` names (case-insensitive), allowed or not.
    pub fn type_named(&self, token: &str) -> Option<UpgradeType> {
        UpgradeType::ALL
            .into_iter()
            .find(|t| self.type_token(*t).eq_ignore_ascii_case(token))
    }

    /// The token `s` is sent as.
    pub fn subprotocol_token(&self, s: Subprotocol) -> &str {
        &self.subprotocol_tokens[s as usize]
    }

    /// The subprotocol `token` names (case-insensitive), allowed or not.
    pub fn subprotocol_named(&self, token: &str) -> Option<Subprotocol> {
        Subprotocol::ALL
            .into_iter()
            .find(|s| self.subprotocol_token(*s).eq_ignore_ascii_case(token))
    }

    /// The allowed types as a 426 answer lists them: `alpn, alpn-ping, websocket`.
    pub fn allowed_list(&self) -> String {
        let tokens: Vec<&str> = self
            .allowed_types
            .iter()
            .map(|t| self.type_token(*t))
            .collect();
        tokens.join(", ")
    }

    /// The allowed subprotocols' tokens, in order of preference.
    pub fn subprotocol_list(&self) -> String {
        let tokens: Vec<&str> = self
            .websocket_subprotocols
            .iter()
            .map(|s| self.subprotocol_token(*s))
            .collect();
        tokens.join(", ")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_types_in_any_case() {
        let mut names = Names::default();
        names.type_tokens[UpgradeType::AlpnPing as usize] = "tunnel-ping".into();
        names.subprotocol_tokens[Subprotocol::Alpn as usize] = "raw".into();
        assert_eq!(names.type_named("Tunnel-Ping"), Some(UpgradeType::AlpnPing));
        assert_eq!(names.type_named("alpn-ping"), None);
        assert_eq!(names.type_token(UpgradeType::WebSocket), "websocket");
        assert_eq!(names.subprotocol_named("RAW"), Some(Subprotocol::Alpn));
        assert_eq!(names.allowed_list(), "alpn, tunnel-ping, websocket");
        assert_eq!(names.subprotocol_list(), "raw, alpn-ping");
    }
}
