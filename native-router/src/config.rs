//! The router's configuration: one TOML file, validated when it is loaded so
//! that a bad file fails at start (or is refused on reload) with the key that is
//! wrong. Paths are relative to the file; durations are strings like `"30s"`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or of the wrong type.
    #[error("{path}: key {key:?}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The key, as a dotted path (`route[1].alpn`), or `.` for the whole file.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed TOML but not usable.
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
    metrics: Option<RawMetrics>,
    tls: RawTls,
    limits: Option<RawLimits>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    listen: String,
    path: Option<String>,
    trusted_peers: Option<Vec<String>>,
    ping_interval: Option<String>,
    tls: Option<RawCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
    max_connections: Option<usize>,
    request_timeout: Option<String>,
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
    name: String,
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_timeout: Option<String>,
    handshake_timeout: Option<String>,
    connect_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    drain_grace: Option<String>,
    close_timeout: Option<String>,
    half_closed_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    alpn: String,
    sni: Option<String>,
    backend: String,
    client_ca: Option<String>,
    #[serde(default)]
    proxy_protocol: bool,
    idle_timeout: Option<String>,
    backend_tls: Option<RawBackendTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTls {
    ca: String,
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
    /// The only path upgrades are accepted on.
    pub path: String,
    /// The protocol's names this listener validates upgrades with (the path
    /// above, the defaults otherwise), built once per configuration load.
    pub names: alpn_protocol::names::Names,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListener {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Requests served at once; more are closed at once.
    pub max_connections: usize,
    /// The whole request, from accept to the last byte of the answer.
    pub request_timeout: Duration,
}

impl MetricsListener {
    /// Default for `max_connections`: a few scrapers and probes at a time.
    pub const MAX_CONNECTIONS: usize = 16;
    /// Default for `request_timeout`.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
}

/// Deadlines for each phase of a connection, and the connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Reading the upgrade request head.
    pub header_timeout: Duration,
    /// The inner TLS handshake.
    pub handshake_timeout: Duration,
    /// Connecting to a backend.
    pub connect_timeout: Duration,
    /// Connections served at once (upgrade and direct listeners together);
    /// more are answered at once (503 on the upgrade listener, a close on the
    /// direct one) and `/readyz` reports not ready while the cap is full.
    pub max_connections: usize,
    /// Connections one client address may hold at once; `None`: no limit.
    pub max_connections_per_client: Option<usize>,
    /// How long live tunnels may drain after SIGTERM.
    pub drain_grace: Duration,
    /// How long a closing connection waits for the peer to read what was sent
    /// and end its side (WebSocket Close, or EOF) before the socket is closed;
    /// closing earlier would turn the peer's late bytes into a reset that
    /// destroys data it has not read yet.
    pub close_timeout: Duration,
    /// A tunnel whose one direction has ended and that carried no byte for
    /// this long is closed (a peer that half-closed and went quiet).
    pub half_closed_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_connections_per_client: None,
            drain_grace: Duration::from_secs(30),
            close_timeout: Duration::from_secs(30),
            half_closed_timeout: Duration::from_secs(300),
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

    fn addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.invalid(
                key,
                format!("{value:?} is not an address like 127.0.0.1:9001"),
            )
        })
    }

    fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => humantime::parse_duration(v).map_err(|e| {
                self.invalid(key, format!("{v:?} is not a duration like \"30s\": {e}"))
            }),
        }
    }

    fn at_least_one(&self, key: &str, value: Option<usize>) -> Result<Option<usize>, ConfigError> {
        match value {
            Some(0) => Err(self.invalid(key, "must be at least 1")),
            v => Ok(v),
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
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Deserializer::parse(&text).map_err(|e| {
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

    fn validate(raw: RawConfig, ctx: &Ctx<'_>) -> Result<Config, ConfigError> {
        if raw.upgrade.is_none() && raw.direct.is_none() {
            return Err(ctx.invalid(
                "upgrade",
                "configure [upgrade], [direct] or both: there is nothing to listen on",
            ));
        }
        let limits = Limits::default();
        let limits = match raw.limits {
            None => limits,
            Some(l) => Limits {
                header_timeout: ctx.duration(
                    "limits.header_timeout",
                    l.header_timeout.as_deref(),
                    limits.header_timeout,
                )?,
                handshake_timeout: ctx.duration(
                    "limits.handshake_timeout",
                    l.handshake_timeout.as_deref(),
                    limits.handshake_timeout,
                )?,
                connect_timeout: ctx.duration(
                    "limits.connect_timeout",
                    l.connect_timeout.as_deref(),
                    limits.connect_timeout,
                )?,
                max_connections: ctx
                    .at_least_one("limits.max_connections", l.max_connections)?
                    .unwrap_or(limits.max_connections),
                max_connections_per_client: ctx.at_least_one(
                    "limits.max_connections_per_client",
                    l.max_connections_per_client,
                )?,
                drain_grace: ctx.duration(
                    "limits.drain_grace",
                    l.drain_grace.as_deref(),
                    limits.drain_grace,
                )?,
                close_timeout: ctx.duration(
                    "limits.close_timeout",
                    l.close_timeout.as_deref(),
                    limits.close_timeout,
                )?,
                half_closed_timeout: ctx.duration(
                    "limits.half_closed_timeout",
                    l.half_closed_timeout.as_deref(),
                    limits.half_closed_timeout,
                )?,
            },
        };
        let upgrade = match raw.upgrade {
            None => None,
            Some(u) => {
                let path = u.path.unwrap_or_else(|| "/connectionupgrade".into());
                if !alpn_protocol::names::valid_path(&path) {
                    return Err(ctx.invalid(
                        "upgrade.path",
                        format!("{path:?} must be a path starting with '/'"),
                    ));
                }
                let mut trusted_peers = Vec::new();
                for (i, p) in u.trusted_peers.unwrap_or_default().iter().enumerate() {
                    let net = p
                        .parse::<IpNet>()
                        .or_else(|_| p.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            ctx.invalid(
                                format!("upgrade.trusted_peers[{i}]"),
                                format!("{p:?} is not an address or CIDR block"),
                            )
                        })?;
                    trusted_peers.push(net);
                }
                let ping_interval = ctx.duration(
                    "upgrade.ping_interval",
                    u.ping_interval.as_deref(),
                    Duration::from_secs(30),
                )?;
                if ping_interval.is_zero() {
                    return Err(ctx.invalid("upgrade.ping_interval", "must be longer than 0s"));
                }
                let tls = match u.tls {
                    Some(t) => Some(ctx.cert_key("upgrade.tls", &t.cert, &t.key)?),
                    None => None,
                };
                let names = alpn_protocol::names::Names {
                    upgrade_paths: vec![path.clone()],
                    ..Default::default()
                };
                Some(UpgradeListener {
                    listen: ctx.addr("upgrade.listen", &u.listen)?,
                    path,
                    names,
                    trusted_peers,
                    ping_interval,
                    tls,
                })
            }
        };
        let direct = raw
            .direct
            .map(|d| ctx.addr("direct.listen", &d.listen))
            .transpose()?;
        let metrics = match raw.metrics {
            None => None,
            Some(m) => Some(MetricsListener {
                listen: ctx.addr("metrics.listen", &m.listen)?,
                max_connections: ctx
                    .at_least_one("metrics.max_connections", m.max_connections)?
                    .unwrap_or(MetricsListener::MAX_CONNECTIONS),
                request_timeout: ctx.duration(
                    "metrics.request_timeout",
                    m.request_timeout.as_deref(),
                    MetricsListener::REQUEST_TIMEOUT,
                )?,
            }),
        };
        let default_cert = ctx.cert_key("tls", &raw.tls.cert, &raw.tls.key)?;
        let mut sni_certs = Vec::new();
        for (i, s) in raw.tls.sni.iter().enumerate() {
            let key = format!("tls.sni[{i}]");
            if s.name.is_empty() {
                return Err(ctx.invalid(format!("{key}.name"), "must not be empty"));
            }
            sni_certs.push((
                s.name.to_ascii_lowercase(),
                ctx.cert_key(&key, &s.cert, &s.key)?,
            ));
        }
        if raw.route.is_empty() {
            return Err(ctx.invalid("route", "configure at least one [[route]]"));
        }
        let mut seen = HashSet::new();
        let mut routes = Vec::with_capacity(raw.route.len());
        for (i, r) in raw.route.into_iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            if r.alpn.is_empty() || r.alpn.len() > 255 {
                return Err(ctx.invalid(key("alpn"), "an ALPN protocol id has 1 to 255 bytes"));
            }
            let sni = r.sni.map(|s| s.to_ascii_lowercase());
            if !seen.insert((r.alpn.clone(), sni.clone())) {
                return Err(ctx.invalid(
                    key("alpn"),
                    format!("{:?} is routed twice for the same SNI", r.alpn),
                ));
            }
            let host = backend_host(&r.backend).ok_or_else(|| {
                ctx.invalid(key("backend"), format!("{:?} is not host:port", r.backend))
            })?;
            let client_ca = r
                .client_ca
                .as_deref()
                .map(|f| ctx.certs(&key("client_ca"), f))
                .transpose()?;
            let idle_timeout = r
                .idle_timeout
                .as_deref()
                .map(|v| ctx.duration(&key("idle_timeout"), Some(v), Duration::ZERO))
                .transpose()?;
            let backend_tls = match r.backend_tls {
                None => None,
                Some(t) => {
                    let ca = ctx.certs(&key("backend_tls.ca"), &t.ca)?;
                    let (sni, default) = match t.sni {
                        Some(s) => (s, ""),
                        None => (host.to_string(), " (the backend's host; set this key)"),
                    };
                    if ServerName::try_from(sni.as_str()).is_err() {
                        return Err(ctx.invalid(
                            key("backend_tls.sni"),
                            format!("{sni:?}{default} is not a DNS name or IP address"),
                        ));
                    }
                    Some(BackendTls { ca, sni })
                }
            };
            routes.push(Route {
                alpn: r.alpn,
                sni,
                backend: r.backend,
                client_ca,
                proxy_protocol: r.proxy_protocol,
                idle_timeout,
                backend_tls,
            });
        }
        Ok(Config {
            upgrade,
            direct,
            metrics,
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
