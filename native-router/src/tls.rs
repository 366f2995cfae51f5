//! Every TLS configuration the router uses, built once per configuration load
//! ([`Configs`]) and shared as `Arc`, so that no connection reads or builds one.
//!
//! The inner TLS (PROTOCOL.md section 5): read the ClientHello first, choose the
//! route from its ALPN list and SNI, then finish the handshake with exactly that
//! route's ALPN and client-certificate policy. No route: the handshake fails with
//! the `no_application_protocol` alert. Also the upgrade listener's own TLS
//! (Envoy to router) and the client configuration towards each backend that
//! wants TLS: one per route, so its session cache lets later dials resume.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor, TlsConnector};

use crate::config::{BackendTls, CertKey, Config, Route};
use crate::early_data::{self, EarlyTls};
use crate::route;

/// The crypto provider (ring: builds with a C compiler alone).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding `cas`: every verifier the router builds (of client
/// certificates, of backends) starts from one.
pub(crate) fn root_store(
    cas: &[CertificateDer<'static>],
) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

/// Every TLS configuration of one configuration load: the inner TLS per route,
/// the upgrade listener's acceptor and the client configuration towards each
/// route's backend. A reload builds a new set, so a changed certificate or CA
/// takes effect for new connections, and no session outlives its generation.
pub(crate) struct Configs {
    inner: InnerTls,
    /// By route index; `None` where the backend takes plain TCP.
    backends: Vec<Option<BackendConnector>>,
    upgrade: Option<TlsAcceptor>,
}

impl fmt::Debug for Configs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Configs")
            .field("inner", &self.inner)
            .field("backends", &self.backends)
            .field("upgrade", &self.upgrade.is_some())
            .finish()
    }
}

impl Configs {
    /// Builds every TLS configuration `config` names.
    pub(crate) fn new(config: &Config) -> Result<Configs, rustls::Error> {
        let provider = provider();
        let backends = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.backend_tls
                    .as_ref()
                    .map(|t| BackendConnector::new(&provider, t, i))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(Configs {
            inner: InnerTls::with_provider(&provider, config)?,
            backends,
            upgrade: upgrade_acceptor(&provider, config)?,
        })
    }

    /// The inner TLS server configurations.
    pub(crate) fn inner(&self) -> &InnerTls {
        &self.inner
    }

    /// TLS towards the backend of route `index`, if it wants TLS.
    pub(crate) fn backend(&self, index: usize) -> Option<&BackendConnector> {
        self.backends.get(index).and_then(Option::as_ref)
    }

    /// The upgrade listener's acceptor, if it takes TLS.
    pub(crate) fn upgrade(&self) -> Option<&TlsAcceptor> {
        self.upgrade.as_ref()
    }
}

/// The upgrade listener's own TLS (as Envoy's upstream TLS speaks it: HTTP/1.1).
fn upgrade_acceptor(
    provider: &Arc<CryptoProvider>,
    config: &Config,
) -> Result<Option<TlsAcceptor>, rustls::Error> {
    let Some(ck) = config.upgrade.as_ref().and_then(|u| u.tls.as_ref()) else {
        return Ok(None);
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(ck.chain.clone(), ck.key.clone_key())?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// TLS towards one route's backend: one client configuration for every dial
/// (its session cache lets later handshakes resume) and the name to verify.
#[derive(Clone)]
pub(crate) struct BackendConnector {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl fmt::Debug for BackendConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackendConnector({})", self.name.to_str())
    }
}

impl BackendConnector {
    /// The connector of route `index` (its number in errors).
    fn new(
        provider: &Arc<CryptoProvider>,
        tls: &BackendTls,
        index: usize,
    ) -> Result<BackendConnector, rustls::Error> {
        let name = ServerName::try_from(tls.sni.clone()).map_err(|e| {
            rustls::Error::General(format!(
                "route[{index}].backend_tls.sni: {:?} is not a DNS name or IP address: {e}",
                tls.sni
            ))
        })?;
        let config = client_config_with(provider, &tls.ca, &[], None)?;
        Ok(BackendConnector {
            connector: TlsConnector::from(config),
            name,
        })
    }

    /// Runs the TLS handshake with the backend on `io`.
    pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>> {
        self.connector.connect(self.name.clone(), io).await
    }
}

/// A fatal `no_application_protocol` alert record, sent in the clear before any
/// handshake message (RFC 8446 section 6; alert 120).
const NO_APPLICATION_PROTOCOL: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x78];

/// Server certificates by SNI, with a default.
#[derive(Debug)]
struct SniCerts {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()));
        Some(named.unwrap_or(&self.default).clone())
    }
}

/// The server configurations, one per route, built once per configuration load.
pub(crate) struct InnerTls {
    per_route: Vec<Arc<ServerConfig>>,
}

impl fmt::Debug for InnerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InnerTls({} routes)", self.per_route.len())
    }
}

fn certified(provider: &CryptoProvider, ck: &CertKey) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let key = provider.key_provider.load_private_key(ck.key.clone_key())?;
    Ok(Arc::new(CertifiedKey::new(ck.chain.clone(), key)))
}

impl InnerTls {
    fn with_provider(
        provider: &Arc<CryptoProvider>,
        config: &Config,
    ) -> Result<InnerTls, rustls::Error> {
        let mut by_name = HashMap::new();
        for (name, ck) in &config.sni_certs {
            by_name.insert(name.clone(), certified(provider, ck)?);
        }
        let certs = Arc::new(SniCerts {
            by_name,
            default: certified(provider, &config.default_cert)?,
        });
        let per_route = config
            .routes
            .iter()
            .map(|r| server_config(provider, certs.clone(), r))
            .collect::<Result<_, _>>()?;
        Ok(InnerTls { per_route })
    }
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    certs: Arc<SniCerts>,
    route: &Route,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &route.client_ca {
        None => builder.with_no_client_auth(),
        Some(cas) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(root_store(cas)?, provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![route.alpn.as_bytes().to_vec()];
    if route.early_data {
        // 0-RTT (early_data.rs): sessions kept in memory, each resumed once,
        // so that early data cannot be replayed; the answer to it goes out
        // behind the server's flight. A store per route and per
        // configuration load, as the ticketer below.
        config.session_storage = ServerSessionMemoryCache::new(early_data::SESSIONS);
        config.max_early_data_size = early_data::MAX_EARLY_DATA;
        config.send_half_rtt_data = true;
    } else {
        // Stateless session tickets, so that every client can resume
        // (rustls's default keeps 256 sessions in memory, two per full
        // handshake). A ticketer per route and per configuration load: a
        // ticket resumes only on the route (and its client-certificate
        // policy) that issued it, and not past a reload. No 0-RTT.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    }
    Ok(Arc::new(config))
}

/// What the ClientHello and the handshake established.
#[derive(Debug, Clone, Default)]
pub(crate) struct Handshake {
    /// The SNI the client sent.
    pub(crate) sni: Option<String>,
    /// The index of the chosen route.
    pub(crate) route: usize,
    /// Whether the client resumed an earlier session (a session ticket).
    pub(crate) resumed: bool,
    /// Whether its early data (0-RTT) was accepted.
    pub(crate) early_data: bool,
}

impl Handshake {
    /// The kind of handshake, as the log and the metric say it.
    pub(crate) fn kind(&self) -> &'static str {
        match (self.resumed, self.early_data) {
            (true, true) => "resumed_0rtt",
            (true, false) => "resumed",
            (false, _) => "full",
        }
    }
}

/// The inner TLS stream: tokio-rustls's, or, on a route that takes early
/// data, one that may start before the client's `Finished`.
pub(crate) enum Inner<S> {
    /// The handshake is complete.
    Done(TlsStream<S>),
    /// A route with `early_data`.
    Early(EarlyTls<S>),
}

macro_rules! inner {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Inner::Done($s) => {
                let $s = Pin::new($s);
                $e
            }
            Inner::Early($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Inner<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        inner!(self, s => s.poll_read(cx, buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Inner<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        inner!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        inner!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Inner::Done(s) => s.is_write_vectored(),
            Inner::Early(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        inner!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        inner!(self, s => s.poll_shutdown(cx))
    }
}

/// Why the inner handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// No offered protocol has a route; `no_application_protocol` was sent.
    #[error("no route for ALPN {offered:?} (SNI {sni:?})")]
    NoRoute {
        /// What the client offered.
        offered: Vec<String>,
        /// The SNI it sent.
        sni: Option<String>,
    },
    /// The ClientHello could not be read or was not TLS.
    #[error("bad ClientHello: {0}")]
    Hello(io::Error),
    /// The handshake itself failed (bad or missing client certificate, ...).
    #[error("handshake failed for route {route}: {error}")]
    Handshake {
        /// The route's ALPN.
        route: String,
        /// What rustls reported.
        error: io::Error,
    },
}

impl HandshakeError {
    /// A short label for metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            HandshakeError::NoRoute { .. } => "no_route",
            HandshakeError::Hello(_) => "bad_client_hello",
            HandshakeError::Handshake { error, .. } => {
                match error
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                {
                    Some(rustls::Error::NoCertificatesPresented) => "client_certificate_missing",
                    Some(rustls::Error::InvalidCertificate(_)) => "client_certificate_invalid",
                    Some(rustls::Error::AlertReceived(_)) => "alert_received",
                    _ => "handshake",
                }
            }
        }
    }
}

/// Runs the inner handshake on `io` and returns the stream and what was chosen.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    tls: &InnerTls,
    routes: &[Route],
) -> Result<(Inner<S>, Handshake), HandshakeError> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
        .await
        .map_err(HandshakeError::Hello)?;
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_string);
    let offered: Vec<&[u8]> = hello.alpn().map(|it| it.collect()).unwrap_or_default();
    let chosen = route::choose(routes, sni.as_deref(), &offered)
        .and_then(|r| routes.iter().position(|x| std::ptr::eq(x, r)));
    let Some(index) = chosen else {
        let offered = offered
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let mut io = start.io;
        let _ = io.write_all(&NO_APPLICATION_PROTOCOL).await;
        let _ = io.shutdown().await;
        return Err(HandshakeError::NoRoute { offered, sni });
    };
    let config = tls.per_route[index].clone();
    let failed = |error| HandshakeError::Handshake {
        route: routes[index].alpn.clone(),
        error,
    };
    if !routes[index].early_data {
        let stream = start.into_stream(config).await.map_err(failed)?;
        let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let hs = Handshake {
            sni,
            route: index,
            resumed,
            early_data: false,
        };
        return Ok((Inner::Done(stream), hs));
    }
    let mut io = start.io;
    let conn = match start.accepted.into_connection(config) {
        Ok(conn) => conn,
        Err((error, mut alert)) => {
            let mut out = Vec::new();
            let _ = alert.write_all(&mut out);
            let _ = io.write_all(&out).await;
            return Err(failed(io::Error::new(io::ErrorKind::InvalidData, error)));
        }
    };
    let mut stream = EarlyTls::start(io, conn).await.map_err(failed)?;
    let resumed = stream.connection().handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let hs = Handshake {
        sni,
        route: index,
        resumed,
        early_data: stream.early_data_accepted(),
    };
    Ok((Inner::Early(stream), hs))
}

/// A TLS client configuration trusting `cas`, offering `alpn` (may be empty),
/// with an optional client certificate. Build it once and share it: its
/// session cache is what lets later handshakes resume.
fn client_config_with(
    provider: &Arc<CryptoProvider>,
    cas: &[CertificateDer<'static>],
    alpn: &[&str],
    client_cert: Option<&CertKey>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(root_store(cas)?, provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier);
    let mut config = match client_cert {
        Some(ck) => builder.with_client_auth_cert(ck.chain.clone(), ck.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
