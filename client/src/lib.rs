//! The client end of a tunnel, as a library: [`connect`] opens a stream to a
//! routed service (`connect(server, alpn, options) -> stream`), directly or
//! through an upgrade, detecting which is needed (PROTOCOL.md section 6).
//! `alpn-tunnel` is a thin command line over it.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use alpn_tunnel::pem::read_certs;
//! use alpn_tunnel::{connect, Options};
//!
//! let ca = read_certs(std::path::Path::new("router-ca.pem"))?;
//! let options = Options { ca: Some(ca), ..Options::default() };
//! // An AsyncRead + AsyncWrite stream to the service routed for "postgresql".
//! let stream = connect("https://db.example.com", "postgresql", options).await?;
//! # drop(stream);
//! # Ok(())
//! # }
//! ```

pub mod cache;
mod closing;
pub mod config_file;
mod detect;
pub mod early_data;
mod early_hello;
mod forward;
pub mod handshake;
pub mod pem;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod server_url;
pub mod tls;
pub mod up;

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::closing::{Carrier, Tunnel};
use crate::pem::CertKey;
use crate::tls::client_config;
use alpn_protocol::framing::Io;
use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_protocol::handshake::AnswerError;
use alpn_protocol::names::Names;

pub use closing::CLOSE_DEADLINE;
pub use detect::Path;
pub use forward::{accept_until, accept_until_pooled, forward, forward_pooled};
pub use handshake::{inner_tls, upgrade};
pub use proxy::{Proxy, ProxyError};
pub use server_url::ServerUrl;

/// How to reach the router: detect, or as the user says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeMode {
    /// Detect a load balancer (PROTOCOL.md section 6); upgrade if one is there,
    /// climbing the [`LADDER`] of framings.
    Auto,
    /// Always connect directly.
    Never,
    /// Always upgrade, climbing the [`LADDER`] of framings as `auto` does.
    Always,
    /// Always upgrade, with this framing and no other.
    Framing(Framing),
}

impl UpgradeMode {
    /// Parses `auto`, `never`, `always`, `alpn`, `alpn-ping`, `websocket`, `websocket-ping`.
    pub fn parse(s: &str) -> Result<UpgradeMode, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => UpgradeMode::Auto,
            "never" => UpgradeMode::Never,
            "always" => UpgradeMode::Always,
            "alpn" => UpgradeMode::Framing(Framing::Alpn),
            "alpn-ping" => UpgradeMode::Framing(Framing::AlpnPing),
            "websocket" => UpgradeMode::Framing(Framing::WebSocket(Subprotocol::Alpn)),
            "websocket-ping" => UpgradeMode::Framing(Framing::WebSocket(Subprotocol::AlpnPing)),
            other => {
                return Err(format!(
                "{other:?}: use auto, never, always, alpn, alpn-ping, websocket or websocket-ping"
            ))
            }
        })
    }
}

/// The framing used when an upgrade is needed and none was named: WebSocket
/// passes the most load balancers. It offers subprotocol `alpn-ping` before
/// `alpn`, and pings after a quiet send side either way.
pub const DEFAULT_FRAMING: Framing = Framing::WebSocket(Subprotocol::Alpn);

/// The framings `auto` (and `always`) try in turn when an upgrade is refused
/// in a way that says "not this framing" (PROTOCOL.md section 6): WebSocket
/// passes the most middleboxes, `alpn-ping` can still be pinged, raw `alpn`
/// is the last resort.
pub const LADDER: [Framing; 3] = [DEFAULT_FRAMING, Framing::AlpnPing, Framing::Alpn];

/// Deadlines for each network step.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Each TLS handshake (outer and inner).
    pub tls: Duration,
    /// The answer to the upgrade request.
    pub upgrade: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            tls: Duration::from_secs(10),
            upgrade: Duration::from_secs(10),
        }
    }
}

/// Everything about a connection besides the server and the ALPN.
#[derive(Debug)]
pub struct Options {
    /// The inner TLS server name; default: the server's host.
    pub sni: Option<String>,
    /// CAs that verify the router (inner TLS); default: the system's roots.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// The client certificate, for routes that require one.
    pub client_cert: Option<CertKey>,
    /// CAs that verify the load balancer (outer TLS); default: the system's roots.
    pub outer_ca: Option<Vec<CertificateDer<'static>>>,
    /// Detect, or force a path.
    pub upgrade: UpgradeMode,
    /// The protocol's tokens and duplicate header, which must be the server's
    /// (the upgrade path is the server URL's).
    pub names: Names,
    /// A ping goes out after this long with nothing sent, on every framing
    /// but raw `alpn` (which cannot carry one); zero disables pings.
    pub ping_interval: Duration,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// The local address to connect from; default: the system's choice.
    pub bind: Option<std::net::IpAddr>,
    /// The HTTP proxy the outer connection goes through, with `CONNECT`; the
    /// binary chooses it with [`proxy::choose`]. Default: none.
    pub proxy: Option<Proxy>,
    /// Where detection results and the framing that worked are kept across
    /// runs; `None` (the library's default): only for the life of the [`Client`].
    pub cache: Option<cache::Cache>,
    /// On an upgrade, send the inner ClientHello right behind the request
    /// instead of after the 101: a round trip less per fresh tunnel, where
    /// every hop passes bytes sent before the answer ([`probe`] finds out).
    /// Default: off.
    pub early_hello: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sni: None,
            ca: None,
            client_cert: None,
            outer_ca: None,
            upgrade: UpgradeMode::Auto,
            names: Names::default(),
            ping_interval: Duration::from_secs(30),
            timeouts: Timeouts::default(),
            bind: None,
            proxy: None,
            cache: None,
            early_hello: false,
        }
    }
}

/// Why a tunnel could not be opened. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The system's trusted roots could not be loaded and none were given.
    #[error("no trusted roots: {0}; pass the CA with --ca / --outer-ca")]
    Roots(String),
    /// TCP connect failed.
    #[error(
        "cannot connect to {addr}: {error} (check the server address and that it is reachable)"
    )]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        error: io::Error,
    },
    /// A step took longer than its deadline.
    #[error("{step} to {addr} did not finish within {}", humantime::format_duration(*.after))]
    Timeout {
        /// The step.
        step: &'static str,
        /// The address.
        addr: String,
        /// The deadline.
        after: Duration,
    },
    /// The outer TLS (to the load balancer) failed.
    #[error("TLS to the load balancer {addr} failed: {error}{}", outer_hint(.error))]
    OuterTls {
        /// The address.
        addr: String,
        /// Why.
        error: io::Error,
    },
    /// The server did not switch protocols.
    #[error("the upgrade to {url} failed: {error}{}", upgrade_hint(.error, .asked))]
    Upgrade {
        /// The server.
        url: String,
        /// The upgrade type's token the client sent.
        asked: String,
        /// What it answered.
        error: AnswerError,
    },
    /// The inner TLS (to the router) failed.
    #[error("TLS to the router for ALPN {alpn:?} via {path} failed: {error}{}", inner_hint(.error, .path))]
    InnerTls {
        /// The ALPN asked for.
        alpn: String,
        /// Direct, or the framing.
        path: Path,
        /// Why.
        error: io::Error,
    },
    /// The way through the HTTP proxy failed: the proxy's own error (boxed:
    /// it carries the proxy).
    #[error(transparent)]
    Proxy(Box<ProxyError>),
    /// Every framing of the [`LADDER`] was refused in a way that says "not
    /// this framing".
    #[error("the upgrade to {url} was refused in every framing: {}", refusals_text(.refusals))]
    EveryFraming {
        /// The server.
        url: String,
        /// Each framing tried, and its refusal.
        refusals: Vec<(Framing, AnswerError)>,
    },
    /// The remembered (or detected) path failed in a way that the other path
    /// would explain, and the other path failed too.
    #[error("{first_path} failed: {first}; then {second_path}, which that failure pointed to, failed too: {second}")]
    BothPaths {
        /// The path tried first.
        first_path: Path,
        /// Why it failed.
        first: Box<ClientError>,
        /// The other path.
        second_path: Path,
        /// Why that failed.
        second: Box<ClientError>,
    },
    /// Detection met a failure that says nothing about load balancers.
    #[error("detecting whether a load balancer is in the way failed: {0}")]
    Detect(String),
    /// The server refused the route's ALPN and then `http/1.1` too, both with
    /// `no_application_protocol`: no load balancer is in the way, the router
    /// (its direct port) just has no route for this ALPN.
    #[error(
        "the server {addr} has no route for ALPN {alpn:?}: it refused {alpn:?} and then http/1.1 with no_application_protocol, so no load balancer is in the way (check the ALPN name, or ask the server's operator to add a route)"
    )]
    NoRoute {
        /// The address.
        addr: String,
        /// The ALPN asked for.
        alpn: String,
    },
}

impl From<ProxyError> for ClientError {
    fn from(e: ProxyError) -> ClientError {
        ClientError::Proxy(Box::new(e))
    }
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn outer_hint(e: &io::Error) -> &'static str {
    match rustls_error(e) {
        Some(rustls::Error::InvalidCertificate(_)) => {
            " (the load balancer's certificate is not trusted: pass its CA with --outer-ca FILE)"
        }
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)) => {
            " (the server refused http/1.1: it is not an HTTP load balancer; if it is the router's direct port, use --upgrade auto or never)"
        }
        _ => "",
    }
}

/// Whether `e` is a `no_application_protocol` alert from the server.
fn is_no_alpn_alert(e: &io::Error) -> bool {
    matches!(
        rustls_error(e),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    )
}

/// What to check when the server does not take the client's names.
const NAMES_ADVICE: &str = "the client's names must be the server's: --alpn-token, --alpn-ping-token, --websocket-token, --alpn-subprotocol, --alpn-ping-subprotocol";

fn upgrade_hint(e: &AnswerError, asked: &str) -> String {
    const NAMES: &str = NAMES_ADVICE;
    let AnswerError::Status {
        status,
        reason,
        upgrade,
    } = e
    else {
        return String::new();
    };
    match status {
        404 => " (check the upgrade path in the server URL)".into(),
        200..=399 => " (a web page answered, not the upgrade: the upgrade path in the server URL is probably not the server's)".into(),
        403 | 429 => " (refused by policy: ask the server's operator)".into(),
        426 => match upgrade {
            Some(allowed) if allowed.split(',').any(|t| t.trim().eq_ignore_ascii_case(asked)) => {
                " (try another framing with --upgrade alpn-ping or websocket)".into()
            }
            Some(allowed) => format!(
                " (this client asked for upgrade type {asked:?}, the server allows {allowed}: {NAMES}; or choose another framing with --upgrade)"
            ),
            // A proxy on the way may drop the list; the reason still has it.
            None => format!(
                " (this client asked for upgrade type {asked:?}, which the server does not take: {NAMES}; or choose another framing with --upgrade)"
            ),
        },
        400 if reason.contains("Sec-WebSocket-Protocol") => {
            format!(" (the server allows none of the WebSocket subprotocols offered: {NAMES})")
        }
        400 => " (try another framing with --upgrade alpn-ping or websocket)".into(),
        502..=504 => " (the router behind the load balancer is not answering)".into(),
        _ => String::new(),
    }
}

fn refusals_text(refusals: &[(Framing, AnswerError)]) -> String {
    let mut text: Vec<String> = refusals
        .iter()
        .map(|(f, e)| format!("{}: {e}", f.name()))
        .collect();
    if refusals
        .iter()
        .all(|(_, e)| matches!(e, AnswerError::Status { status: 403, .. }))
    {
        text.push("(refused by policy, or by a firewall that passes none of them: ask the server's operator)".into());
    }
    if refusals
        .iter()
        .all(|(_, e)| matches!(e, AnswerError::Status { status: 426, .. }))
    {
        let allowed = refusals.iter().find_map(|(_, e)| match e {
            AnswerError::Status { upgrade, .. } => upgrade.clone(),
            _ => None,
        });
        text.push(format!(
            "(the server takes none of this client's upgrade types{}: {NAMES_ADVICE})",
            allowed
                .map(|a| format!(", it allows {a}"))
                .unwrap_or_default()
        ));
    }
    text.join("; ")
}

/// Why an upgrade failure says "not this framing" (PROTOCOL.md section 6),
/// so that `auto` tries the next one; `None` when another framing would fare
/// no better: a wrong path (404), a rate limit (429), a server error (5xx), a
/// deadline, a failure before or after the upgrade.
fn not_this_framing(e: &ClientError) -> Option<&'static str> {
    let ClientError::Upgrade { error, .. } = e else {
        return None;
    };
    match error {
        AnswerError::Status { status: 400, .. } => {
            Some("a 400, as from a middlebox that strips or rewrites upgrade headers")
        }
        // The filter's own 403 (a source not allowed) is the same for every
        // framing; a WAF's 403 for an upgrade token it does not pass is not.
        // The two cannot be told apart, and the protocol climbs on 403.
        AnswerError::Status { status: 403, .. } => {
            Some("a 403, as from a WAF that passes only some upgrade types")
        }
        AnswerError::Status { status: 426, .. } => Some("a 426: this upgrade type is not accepted"),
        AnswerError::BadSwitch(_) => Some("a 101 that is not what was asked"),
        AnswerError::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        )
        .then_some("the connection was closed before the answer"),
        AnswerError::Status { .. } | AnswerError::Malformed(_) => None,
    }
}

/// The other path, and why, when `failure` of `path` is what that path would
/// explain (PROTOCOL.md section 6): direct TLS closed during the handshake or
/// answered as a load balancer would; an upgrade whose load balancer turned
/// out to be no HTTP server (it refused `http/1.1`).
fn other_path(path: Path, failure: &ClientError) -> Option<(Path, &'static str)> {
    match (path, failure) {
        (Path::Direct, ClientError::InnerTls { error, .. })
            if detect::classify(error).is_some()
                || matches!(
                    rustls_error(error),
                    Some(rustls::Error::NoApplicationProtocol)
                ) =>
        {
            Some((
                Path::Upgrade(DEFAULT_FRAMING),
                "an L7 load balancer in the way would explain that",
            ))
        }
        (Path::Upgrade(_), ClientError::NoRoute { .. }) => Some((
            Path::Direct,
            "the server refused http/1.1, so it is no HTTP load balancer",
        )),
        _ => None,
    }
}

/// What a client knows of its path, and why.
#[derive(Debug, Clone)]
struct Known {
    path: Path,
    why: String,
    /// Whether it is in the persistent cache as it is.
    stored: bool,
}

/// A tunnel as opened: the inner TLS, the path in use (the framing the server
/// switched to), the path asked for, and why that path.
struct Opened {
    tls: InnerTls,
    in_use: Path,
    asked: Path,
    /// Set when the ladder climbed: which framings were refused, and how.
    climbed: Option<String>,
}

fn inner_hint(e: &io::Error, path: &Path) -> &'static str {
    use rustls::AlertDescription as A;
    match rustls_error(e) {
        Some(rustls::Error::AlertReceived(A::NoApplicationProtocol)) if *path == Path::Direct => {
            " (the server has no route for this ALPN, or an L7 load balancer is in the way: try --upgrade auto)"
        }
        Some(rustls::Error::AlertReceived(A::NoApplicationProtocol)) => " (the router has no route for this ALPN)",
        Some(rustls::Error::AlertReceived(A::CertificateRequired)) => {
            " (this route requires a client certificate: pass --cert FILE --key FILE)"
        }
        Some(rustls::Error::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown)) => {
            " (the router does not accept this client certificate)"
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            " (the router's certificate is not trusted or not for this name: pass its CA with --ca FILE, or the name with --sni)"
        }
        Some(rustls::Error::NoApplicationProtocol) => {
            " (the server negotiated no ALPN: an L7 load balancer is in the way; use --upgrade auto)"
        }
        _ => "",
    }
}

/// An error of an open tunnel, with advice where there is some. With TLS 1.3 a
/// router that refuses the client certificate says so only after the handshake,
/// on the first read, so such errors surface here rather than from `connect`.
/// An end without TLS `close_notify` is a truncation and says so.
pub fn explain(e: &io::Error, path: Path) -> String {
    if is_truncation(e) {
        return format!(
            "the tunnel was cut (truncated): the server ended it without TLS close_notify, e.g. the backend failed or reset, or the connection was cut on the way; what was received may be incomplete ({e})"
        );
    }
    format!("{e}{}", inner_hint(e, &path))
}

/// Whether a tunnel error means the stream was cut rather than ended: the
/// inner TLS ended without `close_notify` (rustls reports `UnexpectedEof`),
/// or a framing ended inside a frame.
pub fn is_truncation(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

/// Roots from `given`, or the system's.
fn roots(
    given: &Option<Vec<CertificateDer<'static>>>,
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    if let Some(cas) = given {
        return Ok(cas.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        return Err(ClientError::Roots(format!(
            "no system roots found ({:?})",
            found.errors
        )));
    }
    Ok(found.certs)
}

/// The TLS configurations a connection needs, built once per [`Client`].
struct Configs {
    inner: Arc<ClientConfig>,
    /// `inner` with TLS 1.3 early data enabled, for pre-opened tunnels; it
    /// shares `inner`'s session cache.
    early: Arc<ClientConfig>,
    /// Only for `https://` servers.
    outer: Option<Arc<ClientConfig>>,
}

/// A client for one server and one ALPN: builds its TLS configurations once and
/// opens as many tunnels as asked.
pub struct Client {
    server: ServerUrl,
    alpn: String,
    options: Options,
    configs: Configs,
    /// The path detection (or the framing ladder) found, kept for the life of
    /// this client and in the persistent cache; dropped when a failure
    /// contradicts it.
    known: Mutex<Option<Known>>,
}

/// How a client's path is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathChoice {
    /// Fixed by the settings or the URL, and why.
    Fixed(Path, &'static str),
    /// Detected by a test handshake (PROTOCOL.md section 6).
    Detect,
}

/// The inner TLS stream of a tunnel, over whatever carries it (TCP, or an
/// upgraded connection to a load balancer).
pub(crate) use closing::InnerTls;

impl Client {
    /// A client of `server` for `alpn`.
    pub fn new(server: ServerUrl, alpn: &str, options: Options) -> Result<Client, ClientError> {
        let bad = |e: rustls::Error| ClientError::Roots(e.to_string());
        let inner = client_config(&roots(&options.ca)?, &[alpn], options.client_cert.as_ref())
            .map_err(bad)?;
        let outer = match server.tls {
            true => {
                Some(client_config(&roots(&options.outer_ca)?, &["http/1.1"], None).map_err(bad)?)
            }
            false => None,
        };
        let mut early = (*inner).clone();
        early.enable_early_data = true;
        Ok(Client {
            server,
            alpn: alpn.to_string(),
            options,
            configs: Configs {
                inner,
                early: Arc::new(early),
                outer,
            },
            known: Mutex::new(None),
        })
    }

    /// The server.
    pub fn server(&self) -> &ServerUrl {
        &self.server
    }

    /// The inner TLS server name.
    pub fn sni(&self) -> &str {
        self.options.sni.as_deref().unwrap_or(&self.server.host)
    }

    /// How the path is chosen, from `--upgrade` and the URL's scheme: the one
    /// place that decides it, for tunnels and the probe alike.
    pub fn path_choice(&self) -> PathChoice {
        match self.options.upgrade {
            UpgradeMode::Never => PathChoice::Fixed(Path::Direct, "--upgrade never"),
            UpgradeMode::Always => {
                PathChoice::Fixed(Path::Upgrade(DEFAULT_FRAMING), "--upgrade always")
            }
            UpgradeMode::Framing(f) => {
                PathChoice::Fixed(Path::Upgrade(f), "--upgrade names the framing")
            }
            UpgradeMode::Auto if !self.server.tls => PathChoice::Fixed(
                Path::Upgrade(DEFAULT_FRAMING),
                "an http:// server is reached by an upgrade (no TLS to detect with)",
            ),
            UpgradeMode::Auto => PathChoice::Detect,
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Option<Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The HTTP proxy the server is reached through (without credentials),
    /// part of the cache's key: what is behind a proxy may differ.
    pub fn via_proxy(&self) -> Option<String> {
        self.options.proxy.as_ref().map(|p| p.url.to_string())
    }

    /// Whether a refused upgrade climbs the [`LADDER`]: in `auto` and
    /// `always`, never with a framing set.
    fn climbs(&self) -> bool {
        matches!(
            self.options.upgrade,
            UpgradeMode::Auto | UpgradeMode::Always
        )
    }

    /// What the persistent cache holds for this server, if it is on.
    pub fn cached(&self) -> Option<cache::Entry> {
        self.options
            .cache
            .as_ref()?
            .get(&self.server, self.via_proxy().as_deref())
    }

    /// The path known from an earlier tunnel of this client or from the cache.
    fn recall(&self) -> Option<Known> {
        if let Some(k) = self.known().clone() {
            return Some(k);
        }
        let entry = self.cached()?;
        log::info!("{}: {} (cached)", self.server, entry.describe());
        let k = Known {
            path: entry.path,
            why: entry.why,
            stored: true,
        };
        *self.known() = Some(k.clone());
        Some(k)
    }

    /// Keeps `path` as the one that works, in memory and in the cache.
    pub(crate) fn remember(&self, path: Path, why: &str) {
        let mut known = self.known();
        if matches!(&*known, Some(k) if k.path == path && k.stored) {
            return;
        }
        *known = Some(Known {
            path,
            why: why.to_string(),
            stored: true,
        });
        drop(known);
        if let Some(cache) = &self.options.cache {
            cache.put(&self.server, self.via_proxy().as_deref(), path, why);
        }
    }

    /// Drops what is known (a failure contradicted it), in memory and in the cache.
    fn forget(&self) {
        self.known().take();
        if let Some(cache) = &self.options.cache {
            cache.remove(&self.server, self.via_proxy().as_deref());
        }
    }

    /// How this client reaches the router: as configured, or as remembered
    /// or detected (once, then kept for the life of this client).
    pub async fn path(&self) -> Result<Path, ClientError> {
        self.start().await.map(|(path, _)| path)
    }

    /// The path to try first, and whether it was remembered (from an earlier
    /// tunnel or run) rather than found just now.
    async fn start(&self) -> Result<(Path, bool), ClientError> {
        match self.path_choice() {
            PathChoice::Fixed(Path::Upgrade(first), _) if self.climbs() => {
                Ok(match self.recall() {
                    Some(Known {
                        path: Path::Upgrade(f),
                        ..
                    }) => (Path::Upgrade(f), true),
                    _ => (Path::Upgrade(first), false),
                })
            }
            PathChoice::Fixed(path, _) => Ok((path, false)),
            PathChoice::Detect => {
                if let Some(k) = self.recall() {
                    return Ok((k.path, true));
                }
                let (found, why) = detect::detect(self).await?;
                *self.known() = Some(Known {
                    path: found,
                    why: why.clone(),
                    stored: false,
                });
                log::info!("{}: {} ({why})", self.server, found.describe());
                Ok((found, false))
            }
        }
    }

    /// Opens one tunnel: the stream to the routed service, and the path in use
    /// (for an upgrade, the framing the server switched to). In `auto`, a
    /// refused upgrade climbs the [`LADDER`], and a failure that the other
    /// path would explain is retried once on that path (PROTOCOL.md section 6).
    pub async fn connect(&self) -> Result<(Box<dyn Io>, Path), ClientError> {
        let (tls, in_use) = self.establish().await?;
        Ok((Box::new(Tunnel::new(tls)), in_use))
    }

    async fn establish(&self) -> Result<(InnerTls, Path), ClientError> {
        let (path, remembered) = self.start().await?;
        let first = match self.climb(path).await {
            Ok(opened) => return Ok(self.opened(opened, None)),
            Err(e) => e,
        };
        let detects = self.path_choice() == PathChoice::Detect;
        let fallback = other_path(path, &first)
            .filter(|_| detects)
            // Detection itself just saw the route's ALPN refused; a fresh
            // "no route" is the answer, not a reason to go back.
            .filter(|_| remembered || !matches!(first, ClientError::NoRoute { .. }));
        let Some((other, why)) = fallback else {
            let contradicted = matches!(first, ClientError::EveryFraming { .. })
                || (detects && other_path(path, &first).is_some());
            if remembered && contradicted {
                log::warn!("{}: {path} failed ({first}): forgetting it", self.server);
                self.forget();
            }
            return Err(first);
        };
        log::warn!(
            "{}: {path} failed ({first}); {why}: trying {other} once",
            self.server
        );
        self.forget();
        match self.climb(other).await {
            Ok(opened) => {
                let why = format!("{path} failed ({why})");
                Ok(self.opened(opened, Some(why)))
            }
            Err(second) => Err(ClientError::BothPaths {
                first_path: path,
                first: Box::new(first),
                second_path: other,
                second: Box::new(second),
            }),
        }
    }

    /// Records a tunnel that opened: in `auto` (and `always`) the path that
    /// worked is remembered, with why.
    fn opened(&self, opened: Opened, fell_back: Option<String>) -> (InnerTls, Path) {
        let remembers = self.path_choice() == PathChoice::Detect || self.climbs();
        if remembers {
            let found = self.known().as_ref().map(|k| k.why.clone());
            let why = match (fell_back, opened.climbed, found) {
                (Some(f), Some(c), _) => format!("{f}; {c}"),
                (Some(f), None, _) => f,
                (None, Some(c), _) => c,
                (None, None, Some(found)) => found,
                (None, None, None) => match opened.asked {
                    Path::Upgrade(_) => "the first framing of the ladder worked".into(),
                    Path::Direct => "direct TLS worked".into(),
                },
            };
            self.remember(opened.asked, &why);
        }
        (opened.tls, opened.in_use)
    }

    /// Opens a tunnel along `path`; an upgrade that is refused in a way that
    /// says "not this framing" tries the next framing of the [`LADDER`] where
    /// the settings allow it.
    async fn climb(&self, path: Path) -> Result<Opened, ClientError> {
        let first = match path {
            Path::Upgrade(f) if self.climbs() => f,
            _ => {
                let (tls, in_use) = self.pipeline(path).await?;
                return Ok(Opened {
                    tls,
                    in_use,
                    asked: path,
                    climbed: None,
                });
            }
        };
        let mut rungs = vec![first];
        rungs.extend(LADDER.iter().copied().filter(|f| *f != first));
        let mut refusals: Vec<(Framing, AnswerError)> = Vec::new();
        for (i, &framing) in rungs.iter().enumerate() {
            let failure = match self.pipeline(Path::Upgrade(framing)).await {
                Ok((tls, in_use)) => {
                    let climbed = (!refusals.is_empty()).then(|| {
                        let refused: Vec<String> = refusals
                            .iter()
                            .map(|(f, e)| format!("{} was refused ({e})", f.name()))
                            .collect();
                        format!("{}; {} was accepted", refused.join(", "), framing.name())
                    });
                    if let Some(why) = &climbed {
                        log::info!("{}: chose framing {}: {why}", self.server, framing.name());
                    }
                    return Ok(Opened {
                        tls,
                        in_use,
                        asked: Path::Upgrade(framing),
                        climbed,
                    });
                }
                Err(e) => e,
            };
            let Some(reason) = not_this_framing(&failure) else {
                log::info!(
                    "{}: upgrade {} failed in a way another framing would not change ({failure}): no other framing is tried",
                    self.server,
                    framing.name()
                );
                return Err(failure);
            };
            let ClientError::Upgrade { error, .. } = failure else {
                unreachable!("not_this_framing is only ever about upgrade answers")
            };
            match rungs.get(i + 1) {
                Some(next) => log::warn!(
                    "{}: upgrade {} refused ({error}): {reason}, which says not this framing: trying {}",
                    self.server,
                    framing.name(),
                    next.name()
                ),
                None => log::warn!(
                    "{}: upgrade {} refused ({error}): {reason}; no framing is left",
                    self.server,
                    framing.name()
                ),
            }
            refusals.push((framing, error));
        }
        Err(ClientError::EveryFraming {
            url: self.server.to_string(),
            refusals,
        })
    }

    /// Opens one tunnel along `path`.
    pub async fn connect_via(&self, path: Path) -> Result<Box<dyn Io>, ClientError> {
        self.open(path).await.map(|(stream, _)| stream)
    }

    /// Opens one tunnel along exactly `path` (no ladder, no fallback); returns
    /// it and the path in use.
    pub async fn open(&self, path: Path) -> Result<(Box<dyn Io>, Path), ClientError> {
        let (tls, in_use) = self.pipeline(path).await?;
        Ok((Box::new(Tunnel::new(tls)), in_use))
    }

    /// Runs one network step under its deadline: the step's own result, or
    /// [`ClientError::Timeout`] naming the step. Every step of the client
    /// goes through here.
    pub(crate) async fn deadline<T>(
        &self,
        step: &'static str,
        after: Duration,
        work: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        self.deadline_at(step, self.server.authority(), after, work)
            .await
    }

    /// [`Client::deadline`] for a step with another peer than the server (the proxy).
    pub(crate) async fn deadline_at<T>(
        &self,
        step: &'static str,
        addr: String,
        after: Duration,
        work: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        timeout(after, work)
            .await
            .unwrap_or_else(|_| Err(ClientError::Timeout { step, addr, after }))
    }

    /// The connect pipeline, the one way a tunnel is opened (and the probe's
    /// last step): TCP; for an upgrade, outer TLS (`https://`) and the
    /// upgrade; then the inner TLS, whose ALPN must be the route's.
    pub(crate) async fn pipeline(&self, path: Path) -> Result<(InnerTls, Path), ClientError> {
        let (carrier, in_use) = match path {
            Path::Direct => (Carrier::Direct(self.tcp().await?), path),
            Path::Upgrade(framing) if self.options.early_hello => {
                return self.early_hello(framing).await;
            }
            Path::Upgrade(framing) => {
                let framed = self.upgraded(framing).await?;
                let in_use = Path::Upgrade(framed.framing());
                (Carrier::Upgraded(framed), in_use)
            }
        };
        Ok((self.inner(carrier, in_use).await?, in_use))
    }

    /// The proxy the outer connection goes through, if any.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.options.proxy.as_ref()
    }

    /// A TCP stream to the server: directly, or through the proxy's `CONNECT`.
    pub(crate) async fn tcp(&self) -> Result<TcpStream, ClientError> {
        let Some(proxy) = self.proxy() else {
            let addr = self.server.authority();
            return self
                .deadline("TCP connect", self.options.timeouts.connect, async {
                    self.dial(&addr)
                        .await
                        .map_err(|error| ClientError::Connect { addr, error })
                })
                .await;
        };
        let mut tcp = self.proxy_tcp(proxy).await?;
        self.proxy_connect(&mut tcp, proxy).await?;
        Ok(tcp)
    }

    /// TCP to the proxy.
    pub(crate) async fn proxy_tcp(&self, proxy: &Proxy) -> Result<TcpStream, ClientError> {
        let after = self.options.timeouts.connect;
        let at = format!("the proxy {proxy}");
        self.deadline_at("TCP connect", at, after, async {
            self.dial(&proxy.url.authority()).await.map_err(|error| {
                ClientError::from(ProxyError::Connect {
                    proxy: proxy.clone(),
                    error,
                })
            })
        })
        .await
    }

    /// Asks the proxy on `tcp` for a tunnel to the server; the proxy's status line.
    pub(crate) async fn proxy_connect(
        &self,
        tcp: &mut TcpStream,
        proxy: &Proxy,
    ) -> Result<String, ClientError> {
        let target = self.server.authority();
        let after = self.options.timeouts.connect;
        let at = format!("the proxy {proxy}");
        self.deadline_at("the answer to CONNECT", at, after, async {
            Ok(proxy::connect(tcp, proxy, &target).await?)
        })
        .await
    }

    /// TCP to `addr`, from `options.bind` if set.
    async fn dial(&self, addr: &str) -> io::Result<TcpStream> {
        let tcp = match self.options.bind {
            None => TcpStream::connect(addr).await?,
            Some(local) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address of that family");
                let mut connected = None;
                for remote in tokio::net::lookup_host(addr)
                    .await?
                    .filter(|r| r.is_ipv4() == local.is_ipv4())
                {
                    let socket = if local.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(local, 0))?;
                    match socket.connect(remote).await {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                connected.ok_or(last)?
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// TLS to the load balancer of an `https://` server, offering `http/1.1`.
    pub(crate) async fn outer_tls(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let addr = self.server.authority();
        let config = self
            .configs
            .outer
            .clone()
            .ok_or_else(|| ClientError::OuterTls {
                addr: addr.clone(),
                error: io::Error::other("no TLS to an http:// server"),
            })?;
        let handshake = async {
            inner_tls(tcp, config, &self.server.host)
                .await
                .map_err(|error| {
                    // Detection took the route's ALPN being refused for a load
                    // balancer; http/1.1 refused the same way says the server is
                    // the router and has no route for it (PROTOCOL.md section 6).
                    if is_no_alpn_alert(&error) && self.path_choice() == PathChoice::Detect {
                        self.known().take();
                        return ClientError::NoRoute {
                            addr: addr.clone(),
                            alpn: self.alpn.clone(),
                        };
                    }
                    ClientError::OuterTls {
                        addr: addr.clone(),
                        error,
                    }
                })
        };
        self.deadline(
            "TLS handshake with the load balancer",
            self.options.timeouts.tls,
            handshake,
        )
        .await
    }

    /// The connection an upgrade request goes on: TCP, with outer TLS for an
    /// `https://` server.
    pub(crate) async fn http_connection(&self) -> Result<Box<dyn Io>, ClientError> {
        let tcp = self.tcp().await?;
        Ok(match self.server.tls {
            true => Box::new(self.outer_tls(tcp).await?),
            false => Box::new(tcp),
        })
    }

    /// A new connection upgraded with `framing`, in the framing the server
    /// switched to.
    pub(crate) async fn upgraded(
        &self,
        framing: Framing,
    ) -> Result<alpn_protocol::framing::Framed<Box<dyn Io>>, ClientError> {
        self.upgraded_sending(framing, &[]).await
    }

    /// [`Client::upgraded`], with `early` (the inner ClientHello) sent in the
    /// same write as the request.
    pub(crate) async fn upgraded_sending(
        &self,
        framing: Framing,
        early: &[u8],
    ) -> Result<alpn_protocol::framing::Framed<Box<dyn Io>>, ClientError> {
        let stream = self.http_connection().await?;
        let host = self.server.authority();
        let answer = async {
            handshake::upgrade_sending(
                stream,
                framing,
                &host,
                &self.server.path,
                &self.options.names,
                self.options.ping_interval,
                early,
            )
            .await
            .map_err(|error| ClientError::Upgrade {
                url: self.server.to_string(),
                asked: self
                    .options
                    .names
                    .type_token(framing.upgrade_type())
                    .to_string(),
                error,
            })
        };
        self.deadline("the upgrade answer", self.options.timeouts.upgrade, answer)
            .await
    }

    /// The inner TLS on `carrier`, which must negotiate the route's ALPN.
    async fn inner(&self, carrier: Carrier, path: Path) -> Result<InnerTls, ClientError> {
        let handshake = inner_tls(carrier, self.configs.inner.clone(), self.sni());
        self.checked_inner(handshake, path, "the inner TLS handshake")
            .await
    }

    /// [`Client::inner`] on a pre-opened tunnel: where the route took early
    /// data before (its session allows it), what `first` yields (the local
    /// application's first bytes: [`early_data::first_bytes`]) goes with the
    /// ClientHello (TLS 1.3 0-RTT); `first` is not awaited otherwise.
    ///
    /// What `first` yielded is left in `taken` when it fails: the caller
    /// sends it on the tunnel it opens instead.
    pub(crate) async fn inner_early(
        &self,
        carrier: Carrier,
        path: Path,
        first: impl Future<Output = Vec<u8>>,
        taken: &mut Vec<u8>,
    ) -> Result<InnerTls, ClientError> {
        use tokio::io::AsyncWriteExt;
        let handshake = async {
            let name = handshake::server_name(self.sni())?;
            let mut possible = false;
            let connect = tokio_rustls::TlsConnector::from(self.configs.early.clone())
                .early_data(true)
                .connect_with(name, carrier, |c| possible = c.early_data().is_some());
            // With early data possible, this returns before anything is sent.
            let mut tls = connect.await?;
            if possible {
                *taken = first.await;
                tls.write_all(taken).await?;
            }
            // Sends the ClientHello (and the early data) and finishes the handshake.
            tls.flush().await?;
            Ok(tls)
        };
        let tls = self
            .checked_inner(handshake, path, "the inner TLS handshake")
            .await?;
        taken.clear();
        Ok(tls)
    }

    /// Runs the inner TLS `handshake` along `path` under its deadline (`step`
    /// names it in a timeout); it must negotiate the route's ALPN.
    async fn checked_inner(
        &self,
        handshake: impl Future<Output = io::Result<InnerTls>>,
        path: Path,
        step: &'static str,
    ) -> Result<InnerTls, ClientError> {
        let failed = |error| ClientError::InnerTls {
            alpn: self.alpn.clone(),
            path,
            error,
        };
        let handshake = async { handshake.await.map_err(failed) };
        let tls = self
            .deadline(step, self.options.timeouts.tls, handshake)
            .await?;
        if tls.get_ref().1.alpn_protocol() != Some(self.alpn.as_bytes()) {
            return Err(failed(io::Error::other(
                rustls::Error::NoApplicationProtocol,
            )));
        }
        Ok(tls)
    }
}

/// Opens a stream to the service routed for `alpn` at `server`: the library
/// form of `alpn-tunnel connect`.
pub async fn connect(
    server: &str,
    alpn: &str,
    options: Options,
) -> Result<Box<dyn Io>, ClientError> {
    let server = ServerUrl::parse(server).map_err(ClientError::Detect)?;
    Client::new(server, alpn, options)?
        .connect()
        .await
        .map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_that_say_not_this_framing_climb_the_ladder() {
        let refused = |error| ClientError::Upgrade {
            url: "https://lb".into(),
            asked: "websocket".into(),
            error,
        };
        let status = |status| {
            refused(AnswerError::Status {
                status,
                reason: String::new(),
                upgrade: None,
            })
        };
        for climbs in [400, 403, 426] {
            assert!(not_this_framing(&status(climbs)).is_some(), "{climbs}");
        }
        for stays in [404, 405, 429, 500, 502, 503] {
            assert!(not_this_framing(&status(stays)).is_none(), "{stays}");
        }
        let closed = io::Error::new(io::ErrorKind::UnexpectedEof, "closed");
        assert!(not_this_framing(&refused(AnswerError::Io(closed))).is_some());
        assert!(not_this_framing(&refused(AnswerError::BadSwitch("x".into()))).is_some());
        let timeout = ClientError::Timeout {
            step: "the upgrade answer",
            addr: "lb".into(),
            after: Duration::from_secs(1),
        };
        assert!(not_this_framing(&timeout).is_none());
    }

    #[test]
    fn stream_errors_carry_the_advice() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        assert!(
            explain(&e, Path::Direct).contains("pass --cert FILE --key FILE"),
            "{}",
            explain(&e, Path::Direct)
        );
    }
}
