//! The router's configuration: one TOML file, validated when it is loaded so
//! that a bad file fails at start (or is refused on reload) with the key that is
//! wrong. Paths are relative to the file; durations are strings like `"30s"`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alpn_protocol::names::Names;
use alpn_protocol::names_config::NamesConfig;
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, so not also a `source` that error reports
        /// would print a second time).
        error: std::io::Error,
    },
    /// The file is not valid TOML, a key is unknown, or a value is of the
    /// wrong type or out of range (each value is checked as it is read).
    #[error("{path}: key {key:?}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The key, as a dotted path (`route[1].alpn`), or `.` for the whole file.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Values that are each well-formed but not usable: a file that cannot be
    /// read or a key that does not match its certificate, rules across keys.
    #[error("{path}: key {key:?}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, as a dotted path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    upgrade: Option<RawUpgrade>,
    direct: Option<RawListen>,
    metrics: Option<MetricsListener>,
    tls: RawTls,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    listen: SocketAddr,
    /// Shorthand for `names.upgrade_paths = [path]`.
    #[serde(default, deserialize_with = "de::upgrade_path")]
    path: Option<String>,
    /// The protocol's names, with the filter's keys.
    #[serde(default)]
    names: NamesConfig,
    #[serde(default, deserialize_with = "de::nets")]
    trusted_peers: Vec<IpNet>,
    #[serde(
        default = "de::default_ping_interval",
        deserialize_with = "de::nonzero_duration"
    )]
    ping_interval: Duration,
    tls: Option<RawCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    listen: SocketAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    #[serde(default)]
    sni: Vec<RawSniCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSniCert {
    #[serde(deserialize_with = "de::sni_name")]
    name: String,
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(deserialize_with = "de::alpn")]
    alpn: String,
    #[serde(default, deserialize_with = "de::lower_case")]
    sni: Option<String>,
    #[serde(deserialize_with = "de::backend")]
    backend: String,
    client_ca: Option<String>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    backend_tls: Option<RawBackendTls>,
    #[serde(default)]
    early_data: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTls {
    ca: String,
    #[serde(default, deserialize_with = "de::server_name")]
    sni: Option<String>,
}

/// A certificate chain with its private key.
#[derive(Debug)]
pub struct CertKey {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: PrivateKeyDer<'static>,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Where Envoy forwards approved upgrades; absent: no upgrade listener.
    pub upgrade: Option<UpgradeListener>,
    /// TLS routing with no upgrade in front; absent: no direct listener.
    pub direct: Option<SocketAddr>,
    /// `/metrics`, `/healthz`, `/readyz`; absent: no metrics listener.
    pub metrics: Option<MetricsListener>,
    /// The default server certificate.
    pub default_cert: CertKey,
    /// Server certificates by SNI name (lower case).
    pub sni_certs: Vec<(String, CertKey)>,
    /// Deadlines and caps.
    pub limits: Limits,
    /// Routes in file order.
    pub routes: Vec<Route>,
}

/// The upgrade listener.
#[derive(Debug)]
pub struct UpgradeListener {
    /// Address to bind.
    pub listen: SocketAddr,
    /// The protocol's names this listener validates upgrades with (paths,
    /// type and subprotocol tokens, headers), built once per configuration load.
    pub names: Names,
    /// Peers whose `X-Alpn-Client-Addr` is believed (Envoy).
    pub trusted_peers: Vec<IpNet>,
    /// How often `alpn-ping` and WebSocket tunnels are pinged.
    pub ping_interval: Duration,
    /// TLS on the upgrade listener itself (Envoy to router), if configured.
    pub tls: Option<CertKey>,
}

/// The metrics and health listener. It is often reachable from a whole
/// cluster, so it has a cap and a deadline of its own and can never take the
/// descriptors the data path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsListener {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Requests served at once; more are closed at once.
    #[serde(
        default = "MetricsListener::default_max_connections",
        deserialize_with = "de::at_least_one"
    )]
    pub max_connections: usize,
    /// The whole request, from accept to the last byte of the answer.
    #[serde(
        default = "MetricsListener::default_request_timeout",
        with = "humantime_serde"
    )]
    pub request_timeout: Duration,
}

impl MetricsListener {
    /// Default for `max_connections`: a few scrapers and probes at a time.
    pub const MAX_CONNECTIONS: usize = 16;
    /// Default for `request_timeout`.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

    fn default_max_connections() -> usize {
        Self::MAX_CONNECTIONS
    }

    fn default_request_timeout() -> Duration {
        Self::REQUEST_TIMEOUT
    }
}

/// Deadlines for each phase of a connection, and the connection caps; a key
/// left out of `[limits]` keeps its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Reading the upgrade request head.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// The inner TLS handshake, from its first byte.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long an upgraded connection may wait for its first inner byte: a
    /// client's pre-opened tunnel (PROTOCOL.md section 5) waits here, pinged,
    /// holding its place under `max_connections`, until the client sends its
    /// ClientHello; then `handshake_timeout` runs. At least
    /// `handshake_timeout`, at most [`Limits::MAX_PREOPEN_TIMEOUT`].
    #[serde(with = "humantime_serde")]
    pub preopen_timeout: Duration,
    /// Connecting to a backend.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Connections served at once (upgrade and direct listeners together);
    /// more are answered at once (503 on the upgrade listener, a close on the
    /// direct one) and `/readyz` reports not ready while the cap is full.
    #[serde(deserialize_with = "de::at_least_one")]
    pub max_connections: usize,
    /// Connections one client address may hold at once; `None`: no limit.
    #[serde(deserialize_with = "de::some_at_least_one")]
    pub max_connections_per_client: Option<usize>,
    /// How long live tunnels may drain after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// How long a closing connection waits for the peer to read what was sent
    /// and end its side (WebSocket Close, or EOF) before the socket is closed;
    /// closing earlier would turn the peer's late bytes into a reset that
    /// destroys data it has not read yet.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// A tunnel whose one direction has ended and that carried no byte for
    /// this long is closed (a peer that half-closed and went quiet).
    #[serde(with = "humantime_serde")]
    pub half_closed_timeout: Duration,
    /// A tunnel with bytes for one side that takes none of them for this
    /// long is cut (a client that stopped reading, a stuck backend), as
    /// nginx's `send_timeout`: otherwise that side holds the other side's
    /// connection for ever.
    #[serde(deserialize_with = "de::nonzero_duration")]
    pub send_timeout: Duration,
    /// TCP keepalive on client and backend connections: finds a peer gone
    /// without a FIN on a quiet tunnel.
    pub tcp_keepalive: TcpKeepalive,
    /// `TCP_USER_TIMEOUT` on client and backend connections: bytes sent and
    /// not acknowledged for this long end the connection (a peer gone while
    /// bytes were on their way); `0s` leaves the system's (about 15 minutes).
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
}

/// TCP keepalive probes: the first after `time` of silence, then one every
/// `interval`; `probes` unanswered ones end the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Silence before the first probe.
    #[serde(deserialize_with = "de::nonzero_duration")]
    pub time: Duration,
    /// Between probes.
    #[serde(deserialize_with = "de::nonzero_duration")]
    pub interval: Duration,
    /// Unanswered probes that end the connection.
    pub probes: u32,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive {
            time: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            probes: 6,
        }
    }
}

impl Limits {
    /// The longest `preopen_timeout`: a waiting tunnel holds a place under the
    /// connection cap, so the wait stays bounded.
    pub const MAX_PREOPEN_TIMEOUT: Duration = Duration::from_secs(3600);
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            preopen_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_connections_per_client: None,
            drain_grace: Duration::from_secs(30),
            close_timeout: Duration::from_secs(30),
            half_closed_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(60),
            tcp_keepalive: TcpKeepalive::default(),
            tcp_user_timeout: Duration::from_secs(120),
        }
    }
}

/// Where a negotiated ALPN (and optionally SNI) goes.
#[derive(Debug)]
pub struct Route {
    /// The ALPN protocol id.
    pub alpn: String,
    /// When set, the route applies only to this SNI name (lower case).
    pub sni: Option<String>,
    /// `host:port`, resolved at dial time.
    pub backend: String,
    /// When set, a client certificate verified against these CAs is required.
    pub client_ca: Option<Vec<CertificateDer<'static>>>,
    /// Send a PROXY protocol v2 header with the real client address.
    pub proxy_protocol: bool,
    /// Close a tunnel with no traffic for this long.
    pub idle_timeout: Option<Duration>,
    /// TLS to the backend.
    pub backend_tls: Option<BackendTls>,
    /// Take TLS 1.3 early data (0-RTT) from clients that resume, with
    /// single-use sessions kept in memory instead of stateless tickets.
    pub early_data: bool,
}

/// TLS from the router to a backend.
#[derive(Debug)]
pub struct BackendTls {
    /// CAs that verify the backend.
    pub ca: Vec<CertificateDer<'static>>,
    /// Name to verify and send as SNI; default: the backend host.
    pub sni: String,
}

/// Every certificate in the PEM file at `path`.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A certificate chain and its private key from PEM files; the key must be the
/// one the leaf certificate was issued for (a rotation that pairs a new
/// certificate with an old key would otherwise fail every handshake).
pub fn read_cert_key(cert: &Path, key: &Path) -> Result<CertKey, String> {
    let chain = read_certs(cert)?;
    let pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let private = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no usable private key: {e}", key.display()))?;
    let pair = CertKey {
        chain,
        key: private,
    };
    pair.check(cert, key)?;
    Ok(pair)
}

impl CertKey {
    /// Checks that the private key can sign and belongs to the leaf certificate;
    /// the message names both files.
    fn check(&self, cert: &Path, key: &Path) -> Result<(), String> {
        let provider = crate::tls::provider();
        let signing = provider
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| format!("{}: the private key cannot be used: {e}", key.display()))?;
        rustls::sign::CertifiedKey::new(self.chain.clone(), signing)
            .keys_match()
            .map_err(|e| {
                format!(
                    "{} is not the private key of the certificate in {} ({e})",
                    key.display(),
                    cert.display()
                )
            })
    }
}

/// What `load` needs to report errors and resolve paths.
struct Ctx<'a> {
    file: &'a Path,
    dir: PathBuf,
}

impl Ctx<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.to_path_buf(),
            key: key.into(),
            message: message.to_string(),
        }
    }

    fn certs(&self, key: &str, file: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        read_certs(&self.dir.join(file)).map_err(|e| self.invalid(key, e))
    }

    fn cert_key(&self, key: &str, cert: &str, private_key: &str) -> Result<CertKey, ConfigError> {
        // Checked one by one, so that the error names the key that is wrong.
        self.certs(&format!("{key}.cert"), cert)?;
        read_cert_key(&self.dir.join(cert), &self.dir.join(private_key))
            .map_err(|e| self.invalid(format!("{key}.key"), e))
    }
}

impl Config {
    /// Reads, parses and validates `file`, loading every certificate it names.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read {
            path: file.to_path_buf(),
            error,
        })?;
        Config::parse(&text, file)
    }

    /// Parses and validates `text` as the contents of `file`: errors name
    /// `file`, and the certificates it names are read relative to its directory.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Deserializer::parse(text).map_err(|e| {
                ConfigError::Syntax {
                    path: file.to_path_buf(),
                    key: ".".into(),
                    message: e.to_string(),
                }
            })?)
            .map_err(|e| ConfigError::Syntax {
                path: file.to_path_buf(),
                key: e.path().to_string(),
                message: e.inner().message().trim().to_string(),
            })?;
        let ctx = Ctx {
            file,
            dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        Config::validate(raw, &ctx)
    }

    /// The rules no single value can check: something to listen on, files
    /// read from disk, a key that matches its certificate, routes listed twice,
    /// a backend's host as the default SNI.
    fn validate(raw: RawConfig, ctx: &Ctx<'_>) -> Result<Config, ConfigError> {
        if raw.upgrade.is_none() && raw.direct.is_none() {
            return Err(ctx.invalid(
                "upgrade",
                "configure [upgrade], [direct] or both: there is nothing to listen on",
            ));
        }
        let upgrade = match raw.upgrade {
            None => None,
            Some(u) => {
                let tls = match u.tls {
                    Some(t) => Some(ctx.cert_key("upgrade.tls", &t.cert, &t.key)?),
                    None => None,
                };
                let mut names = u.names;
                if let Some(path) = u.path {
                    if names.upgrade_paths.is_some() {
                        return Err(ctx.invalid(
                            "upgrade.path",
                            "set the upgrade path once: either upgrade.path or upgrade.names.upgrade_paths",
                        ));
                    }
                    names.upgrade_paths = Some(vec![path]);
                }
                let names = names
                    .into_names()
                    .map_err(|e| ctx.invalid(format!("upgrade.names.{}", e.key), e.message))?;
                Some(UpgradeListener {
                    listen: u.listen,
                    names,
                    trusted_peers: u.trusted_peers,
                    ping_interval: u.ping_interval,
                    tls,
                })
            }
        };
        let limits = raw.limits;
        if limits.preopen_timeout < limits.handshake_timeout {
            return Err(ctx.invalid(
                "limits.preopen_timeout",
                format!(
                    "{} is shorter than limits.handshake_timeout ({}): the wait for a pre-opened tunnel's first byte must be at least the handshake deadline",
                    humantime::format_duration(limits.preopen_timeout),
                    humantime::format_duration(limits.handshake_timeout)
                ),
            ));
        }
        if limits.preopen_timeout > Limits::MAX_PREOPEN_TIMEOUT {
            return Err(ctx.invalid(
                "limits.preopen_timeout",
                format!(
                    "{} is longer than the most allowed, {} (a waiting tunnel holds a place under the connection cap)",
                    humantime::format_duration(limits.preopen_timeout),
                    humantime::format_duration(Limits::MAX_PREOPEN_TIMEOUT)
                ),
            ));
        }
        let default_cert = ctx.cert_key("tls", &raw.tls.cert, &raw.tls.key)?;
        let mut sni_certs = Vec::new();
        for (i, s) in raw.tls.sni.iter().enumerate() {
            sni_certs.push((
                s.name.clone(),
                ctx.cert_key(&format!("tls.sni[{i}]"), &s.cert, &s.key)?,
            ));
        }
        if raw.route.is_empty() {
            return Err(ctx.invalid("route", "configure at least one [[route]]"));
        }
        let mut seen = HashSet::new();
        let mut routes = Vec::with_capacity(raw.route.len());
        for (i, r) in raw.route.into_iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            if !seen.insert((r.alpn.clone(), r.sni.clone())) {
                return Err(ctx.invalid(
                    key("alpn"),
                    format!("{:?} is routed twice for the same SNI", r.alpn),
                ));
            }
            let client_ca = r
                .client_ca
                .as_deref()
                .map(|f| ctx.certs(&key("client_ca"), f))
                .transpose()?;
            let backend_tls = match r.backend_tls {
                None => None,
                Some(t) => {
                    let ca = ctx.certs(&key("backend_tls.ca"), &t.ca)?;
                    let sni = match t.sni {
                        Some(s) => s,
                        None => {
                            // `de::backend` made sure there is a host.
                            let host = backend_host(&r.backend).unwrap_or_default();
                            if ServerName::try_from(host).is_err() {
                                return Err(ctx.invalid(
                                    key("backend_tls.sni"),
                                    format!(
                                        "{host:?} (the backend's host; set this key) \
                                         is not a DNS name or IP address"
                                    ),
                                ));
                            }
                            host.to_string()
                        }
                    };
                    Some(BackendTls { ca, sni })
                }
            };
            routes.push(Route {
                alpn: r.alpn,
                sni: r.sni,
                backend: r.backend,
                client_ca,
                proxy_protocol: r.proxy_protocol,
                idle_timeout: r.idle_timeout,
                backend_tls,
                early_data: r.early_data,
            });
        }
        Ok(Config {
            upgrade,
            direct: raw.direct.map(|d| d.listen),
            metrics: raw.metrics,
            default_cert,
            sni_certs,
            limits,
            routes,
        })
    }
}

/// The host of `host:port` (`[v6]:port` too), if the port is a number.
fn backend_host(backend: &str) -> Option<&str> {
    let (host, port) = backend.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// Values checked as they are read, so that serde's path names the key: the
/// `deserialize_with` helpers of the raw configuration.
mod de {
    use std::time::Duration;

    use ipnet::IpNet;
    use rustls::pki_types::ServerName;
    use serde::de::{Deserializer, Error};
    use serde::Deserialize;

    pub(super) fn default_ping_interval() -> Duration {
        Duration::from_secs(30)
    }

    pub(super) fn upgrade_path<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<String>, D::Error> {
        let path = String::deserialize(d)?;
        if !alpn_protocol::names::valid_path(&path) {
            return Err(D::Error::custom(format!(
                "{path:?} must be a path starting with '/'"
            )));
        }
        Ok(Some(path))
    }

    /// An address or CIDR block; IPv4-mapped IPv6 ones become IPv4, as the
    /// client addresses they are compared with do.
    struct Net(IpNet);

    impl<'de> Deserialize<'de> for Net {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            alpn_protocol::client_addr::parse_net(&s)
                .map(Net)
                .ok_or_else(|| D::Error::custom(format!("{s:?} is not an address or CIDR block")))
        }
    }

    /// A list of [`Net`], each error naming its index.
    pub(super) fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        Ok(Vec::<Net>::deserialize(d)?
            .into_iter()
            .map(|n| n.0)
            .collect())
    }

    pub(super) fn nonzero_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value: Duration = humantime_serde::deserialize(d)?;
        if value.is_zero() {
            return Err(D::Error::custom("must be longer than 0s"));
        }
        Ok(value)
    }

    pub(super) fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        match usize::deserialize(d)? {
            0 => Err(D::Error::custom("must be at least 1")),
            n => Ok(n),
        }
    }

    pub(super) fn some_at_least_one<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<usize>, D::Error> {
        at_least_one(d).map(Some)
    }

    pub(super) fn sni_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let name = String::deserialize(d)?;
        if name.is_empty() {
            return Err(D::Error::custom("must not be empty"));
        }
        Ok(name.to_ascii_lowercase())
    }

    pub(super) fn lower_case<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Some(String::deserialize(d)?.to_ascii_lowercase()))
    }

    pub(super) fn alpn<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let alpn = String::deserialize(d)?;
        if alpn.is_empty() || alpn.len() > 255 {
            return Err(D::Error::custom("an ALPN protocol id has 1 to 255 bytes"));
        }
        Ok(alpn)
    }

    pub(super) fn backend<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let backend = String::deserialize(d)?;
        if super::backend_host(&backend).is_none() {
            return Err(D::Error::custom(format!("{backend:?} is not host:port")));
        }
        Ok(backend)
    }

    pub(super) fn server_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let name = String::deserialize(d)?;
        if ServerName::try_from(name.as_str()).is_err() {
            return Err(D::Error::custom(format!(
                "{name:?} is not a DNS name or IP address"
            )));
        }
        Ok(Some(name))
    }
}
