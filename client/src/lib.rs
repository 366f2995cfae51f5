//! The client end of a tunnel, as a library: [`connect`] opens a stream to a
//! routed service (`connect(server, alpn, options) -> stream`), directly or
//! through an upgrade, detecting which is needed (PROTOCOL.md section 6).
//! `alpn-tunnel` is a thin command line over it.

pub mod config_file;
mod detect;
mod forward;
pub mod handshake;
pub mod pem;
pub mod probe;
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

use crate::pem::CertKey;
use crate::tls::client_config;
use alpn_protocol::framing::Io;
use alpn_protocol::framing::{Framing, Subprotocol};
use alpn_protocol::handshake::AnswerError;

pub use detect::Path;
pub use forward::{accept_until, forward};
pub use handshake::{inner_tls, upgrade};
pub use server_url::ServerUrl;

/// How to reach the router: detect, or as the user says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeMode {
    /// Detect a load balancer (PROTOCOL.md section 6); upgrade with WebSocket if one is there.
    Auto,
    /// Always connect directly.
    Never,
    /// Always upgrade, with WebSocket.
    Always,
    /// Always upgrade, with this framing.
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
    /// A ping goes out after this long with nothing sent, on every framing
    /// but raw `alpn` (which cannot carry one); zero disables pings.
    pub ping_interval: Duration,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// The local address to connect from; default: the system's choice.
    pub bind: Option<std::net::IpAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sni: None,
            ca: None,
            client_cert: None,
            outer_ca: None,
            upgrade: UpgradeMode::Auto,
            ping_interval: Duration::from_secs(30),
            timeouts: Timeouts::default(),
            bind: None,
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
    #[error("the upgrade to {url} failed: {error}{}", upgrade_hint(.error))]
    Upgrade {
        /// The server.
        url: String,
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

fn upgrade_hint(e: &AnswerError) -> &'static str {
    match e {
        AnswerError::Status { status: 404, .. } => " (check the upgrade path in the server URL)",
        AnswerError::Status {
            status: 403 | 429, ..
        } => " (refused by policy: ask the server's operator)",
        AnswerError::Status {
            status: 426 | 400, ..
        } => " (try another framing with --upgrade alpn-ping or websocket)",
        AnswerError::Status {
            status: 502..=504, ..
        } => " (the router behind the load balancer is not answering)",
        _ => "",
    }
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
    /// The path detection found, kept for the life of this client (cleared
    /// when the server turns out to have no route for the ALPN).
    detected: Mutex<Option<Path>>,
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
pub(crate) type InnerTls = tokio_rustls::client::TlsStream<Box<dyn Io>>;

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
        Ok(Client {
            server,
            alpn: alpn.to_string(),
            options,
            configs: Configs { inner, outer },
            detected: Mutex::new(None),
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

    fn detected(&self) -> std::sync::MutexGuard<'_, Option<Path>> {
        self.detected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How this client reaches the router: as configured, or detected once
    /// for the life of this client.
    pub async fn path(&self) -> Result<Path, ClientError> {
        match self.path_choice() {
            PathChoice::Fixed(path, _) => Ok(path),
            PathChoice::Detect => {
                if let Some(p) = *self.detected() {
                    return Ok(p);
                }
                let found = detect::detect(self).await?;
                *self.detected() = Some(found);
                log::info!("{}: {}", self.server, found.describe());
                Ok(found)
            }
        }
    }

    /// Opens one tunnel: the stream to the routed service, and the path in use
    /// (for an upgrade, the framing the server switched to).
    pub async fn connect(&self) -> Result<(Box<dyn Io>, Path), ClientError> {
        let path = self.path().await?;
        self.open(path).await
    }

    /// Opens one tunnel along `path`.
    pub async fn connect_via(&self, path: Path) -> Result<Box<dyn Io>, ClientError> {
        self.open(path).await.map(|(stream, _)| stream)
    }

    /// Opens one tunnel along `path`; returns it and the path in use.
    pub async fn open(&self, path: Path) -> Result<(Box<dyn Io>, Path), ClientError> {
        let (tls, in_use) = self.pipeline(path).await?;
        Ok((Box::new(tls), in_use))
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
        timeout(after, work).await.unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                step,
                addr: self.server.authority(),
                after,
            })
        })
    }

    /// The connect pipeline, the one way a tunnel is opened (and the probe's
    /// last step): TCP; for an upgrade, outer TLS (`https://`) and the
    /// upgrade; then the inner TLS, whose ALPN must be the route's.
    pub(crate) async fn pipeline(&self, path: Path) -> Result<(InnerTls, Path), ClientError> {
        let (carrier, in_use): (Box<dyn Io>, Path) = match path {
            Path::Direct => (Box::new(self.tcp().await?), path),
            Path::Upgrade(framing) => {
                let framed = self.upgraded(framing).await?;
                let in_use = Path::Upgrade(framed.framing());
                (Box::new(framed), in_use)
            }
        };
        Ok((self.inner(carrier, in_use).await?, in_use))
    }

    /// TCP to the server, from `options.bind` if set.
    pub(crate) async fn tcp(&self) -> Result<TcpStream, ClientError> {
        let addr = self.server.authority();
        let connect = async {
            let Some(local) = self.options.bind else {
                return TcpStream::connect(&addr).await;
            };
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address of that family");
            for remote in tokio::net::lookup_host(&addr)
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
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        let tcp = self
            .deadline("TCP connect", self.options.timeouts.connect, async {
                connect.await.map_err(|error| ClientError::Connect {
                    addr: addr.clone(),
                    error,
                })
            })
            .await?;
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
                        self.detected().take();
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
        let stream = self.http_connection().await?;
        let host = self.server.authority();
        let answer = async {
            upgrade(
                stream,
                framing,
                &host,
                &self.server.path,
                self.options.ping_interval,
            )
            .await
            .map_err(|error| ClientError::Upgrade {
                url: self.server.to_string(),
                error,
            })
        };
        self.deadline("the upgrade answer", self.options.timeouts.upgrade, answer)
            .await
    }

    /// The inner TLS on `carrier`, which must negotiate the route's ALPN.
    async fn inner(&self, carrier: Box<dyn Io>, path: Path) -> Result<InnerTls, ClientError> {
        let failed = |error| ClientError::InnerTls {
            alpn: self.alpn.clone(),
            path,
            error,
        };
        let handshake = async {
            inner_tls(carrier, self.configs.inner.clone(), self.sni())
                .await
                .map_err(failed)
        };
        let tls = self
            .deadline(
                "the inner TLS handshake",
                self.options.timeouts.tls,
                handshake,
            )
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
