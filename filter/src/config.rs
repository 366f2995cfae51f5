//! The filter's configuration: JSON in the plugin configuration, parsed once in
//! `on_configure`. Every key is optional; an absent or empty configuration means
//! the defaults, which are the names of PROTOCOL.md.

use std::fmt;

use alpn_protocol::client_addr::{parse_net, IpNet};
use alpn_protocol::names::Names;
use alpn_protocol::names_config::{NamesConfig, SubprotocolTokens, TypeTokens};
use serde::Deserialize;

/// The configuration as written in JSON, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    // The protocol's names, as `NamesConfig` has them (flat here: serde cannot
    // flatten into a struct that denies unknown fields).
    upgrade_paths: Option<Vec<String>>,
    type_tokens: Option<TypeTokens>,
    allowed_types: Option<Vec<String>>,
    subprotocol_tokens: Option<SubprotocolTokens>,
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

/// The validated configuration the decision runs on. The default is the
/// protocol's names with no policy: no allow-list, no rate limit, and the
/// client is Envoy's TCP peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// The protocol's names (paths, tokens, headers); the router and the client
    /// must use the same.
    pub names: Names,
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
        let names = NamesConfig {
            upgrade_paths: raw.upgrade_paths,
            type_tokens: raw.type_tokens,
            allowed_types: raw.allowed_types,
            subprotocol_tokens: raw.subprotocol_tokens,
            websocket_subprotocols: raw.websocket_subprotocols,
            duplicate_upgrade_header: raw.duplicate_upgrade_header,
            client_addr_header: raw.client_addr_header,
        }
        .into_names()
        .map_err(|e| ConfigError(e.to_string()))?;
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
            names,
            trusted_hops,
            trusted_proxies,
            allowed_sources,
            rate_limit,
        })
    }
}

fn non_empty(key: &str, list: &[String]) -> Result<(), ConfigError> {
    if list.is_empty() {
        return Err(ConfigError(format!("key {key:?}: must not be empty")));
    }
    Ok(())
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
