//! The filter's configuration: JSON in the plugin configuration, parsed once in
//! `on_configure`. Every key is optional; an absent or empty configuration means
//! the defaults, which are the names of PROTOCOL.md.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

/// The upgrade type framed as RFC 6455 WebSocket; every other type is an ALPN
/// tunnel type (raw or length-prefixed frames).
pub const WEBSOCKET: &str = "websocket";

/// The configuration as written in JSON, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    upgrade_paths: Option<Vec<String>>,
    allowed_types: Option<Vec<String>>,
    websocket_subprotocols: Option<Vec<String>>,
    duplicate_upgrade_header: Option<String>,
    client_addr_header: Option<String>,
    trusted_hops: Option<u32>,
    trusted_proxies: Option<Vec<String>>,
    allowed_sources: Option<Vec<String>>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    upgrades: u32,
    per_seconds: u32,
    slots: Option<u32>,
}

/// The validated configuration the decision runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Paths (without query) on which upgrades are served; anything else there is refused.
    pub upgrade_paths: Vec<String>,
    /// Upgrade types accepted, lower case, in the order the 426 answer lists them.
    pub allowed_types: Vec<String>,
    /// WebSocket subprotocols accepted, in order of preference.
    pub websocket_subprotocols: Vec<String>,
    /// Header that repeats the upgrade type for middleboxes that scrub `Upgrade`.
    pub duplicate_upgrade_header: String,
    /// Header through which the client address reaches the router.
    pub client_addr_header: String,
    /// At most this many `X-Forwarded-For` entries are believed, one per trusted
    /// proxy in front of Envoy (1 behind an ALB); 0 means the client is Envoy's
    /// TCP peer.
    pub trusted_hops: u32,
    /// The proxies (load balancers) whose `X-Forwarded-For` entry is believed,
    /// like nginx's `set_real_ip_from`: a peer outside them is the client itself,
    /// so a client that bypasses the load balancer cannot choose its address.
    /// Never empty when `trusted_hops` is above 0.
    pub trusted_proxies: Vec<IpNet>,
    /// When set, only clients inside these networks may upgrade (else 403).
    pub allowed_sources: Option<Vec<IpNet>>,
    /// When set, a per-client limit on upgrades (else 429).
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket per client address: `upgrades` per `per_seconds`, bursting to `upgrades`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Upgrades allowed per window, and the burst size.
    pub upgrades: u32,
    /// Length of the window in seconds.
    pub per_seconds: u32,
    /// Number of shared-data slots the buckets hash into; bounds the memory used.
    pub slots: u32,
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plugin configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Self {
        Config {
            upgrade_paths: vec!["/connectionupgrade".into()],
            allowed_types: vec!["alpn".into(), "alpn-ping".into(), WEBSOCKET.into()],
            websocket_subprotocols: vec!["alpn".into(), "alpn-ping".into()],
            duplicate_upgrade_header: "x-alpn-upgrade".into(),
            client_addr_header: "x-alpn-client-addr".into(),
            trusted_hops: 0,
            trusted_proxies: Vec::new(),
            allowed_sources: None,
            rate_limit: None,
        }
    }
}

impl Config {
    /// Parses and validates the plugin configuration. Empty input (or only
    /// white space) means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            match e.path().to_string().as_str() {
                "." => ConfigError(e.inner().to_string()),
                path => ConfigError(format!("key {path:?}: {}", e.inner())),
            }
        })?;
        let d = Config::default();
        let upgrade_paths = match raw.upgrade_paths {
            None => d.upgrade_paths,
            Some(paths) => {
                non_empty("upgrade_paths", &paths)?;
                for (i, p) in paths.iter().enumerate() {
                    if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                        return Err(ConfigError(format!(
                            "key \"upgrade_paths\"[{i}]: {p:?} must be a path starting with '/' without query"
                        )));
                    }
                }
                paths
            }
        };
        let allowed_types = token_list("allowed_types", raw.allowed_types, d.allowed_types)?;
        let websocket_subprotocols = token_list(
            "websocket_subprotocols",
            raw.websocket_subprotocols,
            d.websocket_subprotocols,
        )?;
        let duplicate_upgrade_header = header_name(
            "duplicate_upgrade_header",
            raw.duplicate_upgrade_header,
            d.duplicate_upgrade_header,
        )?;
        let client_addr_header = header_name(
            "client_addr_header",
            raw.client_addr_header,
            d.client_addr_header,
        )?;
        let trusted_hops = raw.trusted_hops.unwrap_or(d.trusted_hops);
        let trusted_proxies = match raw.trusted_proxies {
            None if trusted_hops > 0 => {
                return Err(ConfigError(format!(
                    "key \"trusted_proxies\": required when trusted_hops is {trusted_hops}: list the \
                     load balancers whose X-Forwarded-For is believed (CIDR blocks or addresses, \
                     e.g. [\"10.0.0.0/16\"]); without it anyone reaching Envoy could choose its address"
                )))
            }
            None => d.trusted_proxies,
            Some(_) if trusted_hops == 0 => {
                return Err(ConfigError(
                    "key \"trusted_proxies\": has no effect with trusted_hops 0 (X-Forwarded-For is \
                     never read): set trusted_hops to the number of proxies that append to it, or \
                     remove trusted_proxies"
                        .into(),
                ))
            }
            Some(list) => net_list("trusted_proxies", &list)?,
        };
        let allowed_sources = match raw.allowed_sources {
            None => None,
            Some(list) => Some(net_list("allowed_sources", &list)?),
        };
        let rate_limit = match raw.rate_limit {
            None => None,
            Some(r) => {
                if r.upgrades == 0 {
                    return Err(ConfigError(
                        "key \"rate_limit.upgrades\": must be at least 1".into(),
                    ));
                }
                if r.per_seconds == 0 {
                    return Err(ConfigError(
                        "key \"rate_limit.per_seconds\": must be at least 1".into(),
                    ));
                }
                let slots = r.slots.unwrap_or(65_536);
                if slots == 0 {
                    return Err(ConfigError(
                        "key \"rate_limit.slots\": must be at least 1".into(),
                    ));
                }
                Some(RateLimit {
                    upgrades: r.upgrades,
                    per_seconds: r.per_seconds,
                    slots,
                })
            }
        };
        Ok(Config {
            upgrade_paths,
            allowed_types,
            websocket_subprotocols,
            duplicate_upgrade_header,
            client_addr_header,
            trusted_hops,
            trusted_proxies,
            allowed_sources,
            rate_limit,
        })
    }

    /// The allowed types as the `Upgrade` header of a 426 lists them.
    pub fn allowed_list(&self) -> String {
        self.allowed_types.join(", ")
    }

    /// Whether `path` (without query) is one of the upgrade paths.
    pub fn is_upgrade_path(&self, path: &str) -> bool {
        self.upgrade_paths.iter().any(|p| p == path)
    }
}

fn non_empty(key: &str, list: &[String]) -> Result<(), ConfigError> {
    if list.is_empty() {
        return Err(ConfigError(format!("key {key:?}: must not be empty")));
    }
    Ok(())
}

/// An HTTP token (RFC 9110 section 5.6.2).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn token_list(
    key: &str,
    value: Option<Vec<String>>,
    default: Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = value else {
        return Ok(default);
    };
    non_empty(key, &list)?;
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        if !is_token(t) {
            return Err(ConfigError(format!(
                "key {key:?}[{i}]: {t:?} is not an HTTP token"
            )));
        }
        let lower = t.to_ascii_lowercase();
        if out.contains(&lower) {
            return Err(ConfigError(format!(
                "key {key:?}[{i}]: {t:?} is listed twice"
            )));
        }
        out.push(lower);
    }
    Ok(out)
}

fn header_name(key: &str, value: Option<String>, default: String) -> Result<String, ConfigError> {
    match value {
        None => Ok(default),
        Some(h) if is_token(&h) => Ok(h.to_ascii_lowercase()),
        Some(h) => Err(ConfigError(format!(
            "key {key:?}: {h:?} is not a header name"
        ))),
    }
}

/// A non-empty list of CIDR blocks or addresses (`allowed_sources`, `trusted_proxies`).
fn net_list(key: &str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    non_empty(key, list)?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            parse_net(s).ok_or_else(|| {
                ConfigError(format!(
                    "key {key:?}[{i}]: {s:?} is not an IP address or CIDR block"
                ))
            })
        })
        .collect()
}

/// A CIDR block, or a bare address meaning that one host. An IPv4-mapped IPv6
/// block (`::ffff:10.0.0.0/104`) becomes the IPv4 block, because addresses are
/// compared in their canonical form (see [`crate::client_addr::parse_addr`]).
fn parse_net(s: &str) -> Option<IpNet> {
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
