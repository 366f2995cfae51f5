//! The names as a configuration writes them: the same keys in the filter's
//! JSON, the router's TOML (`[upgrade.names]`) and, as flags, the client.
//! Every key is optional (PROTOCOL.md's default); [`NamesConfig::into_names`]
//! checks them together and names the key that is wrong.
//!
//! ```json
//! { "upgrade_paths": ["/tunnel"],
//!   "type_tokens": { "alpn": "tcp", "alpn_ping": "tcp-ping", "websocket": "websocket" },
//!   "allowed_types": ["tcp", "tcp-ping", "websocket"],
//!   "subprotocol_tokens": { "alpn": "tcp", "alpn_ping": "tcp-ping" },
//!   "websocket_subprotocols": ["tcp", "tcp-ping"],
//!   "duplicate_upgrade_header": "x-tunnel-upgrade",
//!   "client_addr_header": "x-tunnel-client" }
//! ```
//! `allowed_types` and `websocket_subprotocols` list tokens as configured in
//! `type_tokens` and `subprotocol_tokens`.

use std::fmt;

use crate::names::{valid_path, valid_token, Names, Subprotocol, UpgradeType};

/// The names as written, before they are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct NamesConfig {
    /// Paths on which upgrades are served.
    pub upgrade_paths: Option<Vec<String>>,
    /// The token of each upgrade type.
    pub type_tokens: Option<TypeTokens>,
    /// Upgrade types accepted (their tokens), in the order a 426 lists them.
    pub allowed_types: Option<Vec<String>>,
    /// The token of each WebSocket subprotocol.
    pub subprotocol_tokens: Option<SubprotocolTokens>,
    /// WebSocket subprotocols accepted (their tokens), in order of preference.
    pub websocket_subprotocols: Option<Vec<String>>,
    /// The header repeating the upgrade type.
    pub duplicate_upgrade_header: Option<String>,
    /// The header carrying the client address to the router.
    pub client_addr_header: Option<String>,
}

/// `type_tokens`: a new token for any of the three upgrade types.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct TypeTokens {
    /// For `alpn`.
    pub alpn: Option<String>,
    /// For `alpn-ping`.
    pub alpn_ping: Option<String>,
    /// For `websocket` (RFC 6455's token: load balancers that pass only
    /// WebSocket upgrades look for it).
    pub websocket: Option<String>,
}

/// `subprotocol_tokens`: a new token for either WebSocket subprotocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct SubprotocolTokens {
    /// For `alpn`.
    pub alpn: Option<String>,
    /// For `alpn-ping`.
    pub alpn_ping: Option<String>,
}

/// A name that cannot be used: the key (as `type_tokens.alpn` or
/// `allowed_types[1]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// Where, relative to the names' table.
    pub key: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {:?}: {}", self.key, self.message)
    }
}

impl std::error::Error for NameError {}

fn error(key: impl Into<String>, message: impl Into<String>) -> NameError {
    NameError {
        key: key.into(),
        message: message.into(),
    }
}

impl NamesConfig {
    /// Checks the names and fills in PROTOCOL.md's defaults.
    pub fn into_names(self) -> Result<Names, NameError> {
        let d = Names::default();
        let upgrade_paths = match self.upgrade_paths {
            None => d.upgrade_paths,
            Some(paths) => {
                if paths.is_empty() {
                    return Err(error("upgrade_paths", "must not be empty"));
                }
                for (i, p) in paths.iter().enumerate() {
                    if !valid_path(p) {
                        return Err(error(
                            format!("upgrade_paths[{i}]"),
                            format!("{p:?} must be a path starting with '/' without query"),
                        ));
                    }
                }
                paths
            }
        };

        let given = self.type_tokens.unwrap_or_default();
        let type_tokens = tokens(
            "type_tokens",
            UpgradeType::ALL.map(|t| (t.key(), t.default_token())),
            [given.alpn, given.alpn_ping, given.websocket],
        )?;
        let given = self.subprotocol_tokens.unwrap_or_default();
        let subprotocol_tokens = tokens(
            "subprotocol_tokens",
            Subprotocol::ALL.map(|s| (s.key(), s.default_token())),
            [given.alpn, given.alpn_ping],
        )?;
        let mut names = Names {
            upgrade_paths,
            type_tokens,
            subprotocol_tokens,
            ..d
        };
        if let Some(list) = self.allowed_types {
            names.allowed_types = pick("allowed_types", &list, "type_tokens", |t| {
                names.type_named(t)
            })?;
        }
        if let Some(list) = self.websocket_subprotocols {
            names.websocket_subprotocols =
                pick("websocket_subprotocols", &list, "subprotocol_tokens", |t| {
                    names.subprotocol_named(t)
                })?;
        }
        if let Some(h) = self.duplicate_upgrade_header {
            names.duplicate_upgrade_header = header("duplicate_upgrade_header", &h)?;
        }
        if let Some(h) = self.client_addr_header {
            names.client_addr_header = header("client_addr_header", &h)?;
        }
        if names.duplicate_upgrade_header == names.client_addr_header {
            return Err(error(
                "client_addr_header",
                format!(
                    "{:?} is also the duplicate_upgrade_header: the two headers need their own names",
                    names.client_addr_header
                ),
            ));
        }
        Ok(names)
    }
}

/// Each token given or its default, lower case; no two alike.
fn tokens<const N: usize>(
    table: &str,
    keys_defaults: [(&str, &str); N],
    given: [Option<String>; N],
) -> Result<[String; N], NameError> {
    let mut out: [String; N] = keys_defaults.map(|(_, d)| d.to_string());
    let mut set = [false; N];
    for (i, value) in given.into_iter().enumerate() {
        let Some(v) = value else { continue };
        set[i] = true;
        if !valid_token(&v) {
            return Err(error(
                format!("{table}.{}", keys_defaults[i].0),
                format!("{v:?} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"),
            ));
        }
        out[i] = v.to_ascii_lowercase();
    }
    for i in 0..N {
        for j in 0..i {
            if out[i] == out[j] {
                // Name the key that was set (the other may be a default).
                let (key, other) = if set[i] { (i, j) } else { (j, i) };
                return Err(error(
                    format!("{table}.{}", keys_defaults[key].0),
                    format!(
                        "{:?} is also the token of {}: each needs its own",
                        out[key], keys_defaults[other].0
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// The list's tokens as the values they name; none unknown or repeated.
fn pick<T: PartialEq + Copy>(
    key: &str,
    list: &[String],
    tokens_key: &str,
    named: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, NameError> {
    if list.is_empty() {
        return Err(error(key, "must not be empty"));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, token) in list.iter().enumerate() {
        let Some(value) = named(token) else {
            return Err(error(
                format!("{key}[{i}]"),
                format!("{token:?} is not one of the tokens in {tokens_key}"),
            ));
        };
        if out.contains(&value) {
            return Err(error(
                format!("{key}[{i}]"),
                format!("{token:?} is listed twice"),
            ));
        }
        out.push(value);
    }
    Ok(out)
}

fn header(key: &str, name: &str) -> Result<String, NameError> {
    if !valid_token(name) {
        return Err(error(key, format!("{name:?} is not a header name")));
    }
    let lower = name.to_ascii_lowercase();
    const HTTP: [&str; 6] = [
        "upgrade",
        "connection",
        "host",
        "content-length",
        "transfer-encoding",
        "x-forwarded-for",
    ];
    if HTTP.contains(&lower.as_str()) || lower.starts_with("sec-websocket-") {
        return Err(error(
            key,
            format!(
                "{name:?} is a header HTTP or WebSocket already uses: choose a name of your own"
            ),
        ));
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_given_is_protocol_md() {
        assert_eq!(NamesConfig::default().into_names(), Ok(Names::default()));
    }

    #[test]
    fn renamed_tokens_are_listed_by_their_new_names() {
        let names = NamesConfig {
            type_tokens: Some(TypeTokens {
                alpn: Some("TCP".into()),
                ..Default::default()
            }),
            allowed_types: Some(vec!["websocket".into(), "tcp".into()]),
            subprotocol_tokens: Some(SubprotocolTokens {
                alpn_ping: Some("tcp-ping".into()),
                ..Default::default()
            }),
            websocket_subprotocols: Some(vec!["tcp-ping".into()]),
            ..Default::default()
        }
        .into_names()
        .unwrap();
        assert_eq!(names.type_token(UpgradeType::Alpn), "tcp");
        assert_eq!(
            names.allowed_types,
            [UpgradeType::WebSocket, UpgradeType::Alpn]
        );
        assert_eq!(names.websocket_subprotocols, [Subprotocol::AlpnPing]);
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases: Vec<(NamesConfig, &str)> = vec![
            (
                NamesConfig {
                    upgrade_paths: Some(vec!["/ok".into(), "nope".into()]),
                    ..Default::default()
                },
                "upgrade_paths[1]",
            ),
            (
                NamesConfig {
                    type_tokens: Some(TypeTokens {
                        alpn: Some("websocket".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "type_tokens.alpn",
            ),
            (
                NamesConfig {
                    type_tokens: Some(TypeTokens {
                        alpn_ping: Some("al pn".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "type_tokens.alpn_ping",
            ),
            (
                NamesConfig {
                    type_tokens: Some(TypeTokens {
                        alpn: Some("tcp".into()),
                        ..Default::default()
                    }),
                    // The old token is gone once renamed.
                    allowed_types: Some(vec!["alpn".into()]),
                    ..Default::default()
                },
                "allowed_types[0]",
            ),
            (
                NamesConfig {
                    allowed_types: Some(vec!["alpn".into(), "ALPN".into()]),
                    ..Default::default()
                },
                "allowed_types[1]",
            ),
            (
                NamesConfig {
                    websocket_subprotocols: Some(vec![]),
                    ..Default::default()
                },
                "websocket_subprotocols",
            ),
            (
                NamesConfig {
                    duplicate_upgrade_header: Some("Upgrade".into()),
                    ..Default::default()
                },
                "duplicate_upgrade_header",
            ),
            (
                NamesConfig {
                    client_addr_header: Some("x-alpn-upgrade".into()),
                    ..Default::default()
                },
                "client_addr_header",
            ),
        ];
        for (config, key) in cases {
            let e = config.clone().into_names().expect_err(key);
            assert_eq!(e.key, key, "{config:?}: {e}");
        }
    }
}
