//! Detecting a load balancer (PROTOCOL.md section 6): a test TLS handshake that
//! offers only the route's ALPN. The server negotiating it means no load balancer
//! is in the way; no ALPN, `http/1.1`/`h2`, a `no_application_protocol` alert, an
//! unadvertised protocol or a close during the handshake mean an L7 load balancer
//! is; any other failure is an error, not a guess.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use super::{roots, Client, ClientError, DEFAULT_FRAMING};
use alpn_protocol::framing::Framing;

/// How a tunnel reaches the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// TLS straight to the router (its direct port, or through a TCP load balancer).
    Direct,
    /// An upgrade with this framing, then TLS inside.
    Upgrade(Framing),
}

impl Path {
    /// For logs and the probe.
    pub fn describe(&self) -> String {
        match self {
            Path::Direct => "no load balancer in the way: direct TLS".into(),
            Path::Upgrade(f) => {
                format!("an L7 load balancer is in the way: upgrade ({})", f.name())
            }
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Direct => write!(f, "direct TLS"),
            Path::Upgrade(framing) => write!(f, "upgrade {}", framing.name()),
        }
    }
}

/// What the test handshake showed.
#[derive(Debug)]
pub(crate) enum Finding {
    /// The server negotiated the route's ALPN.
    Negotiated,
    /// The server answered with this ALPN (or none), so something else terminates TLS.
    OtherAlpn(Option<String>),
    /// The handshake failed in a way that means a load balancer: the reason.
    LoadBalancerFailure(String),
}

/// Runs the test handshake: TCP connect, then TLS offering only `alpn`, trusting
/// both the router's CA and the load balancer's roots (either may answer).
pub(crate) async fn test_handshake(client: &Client) -> Result<Finding, ClientError> {
    let mut trusted: Vec<CertificateDer<'static>> = roots(&client.options.ca)?;
    if let Ok(outer) = roots(&client.options.outer_ca) {
        trusted.extend(outer);
    }
    let config =
        detection_config(client, &trusted).map_err(|e| ClientError::Roots(e.to_string()))?;
    let tcp = client.tcp().await?;
    // The handshake's failure is the finding, not an error of the step.
    let handshake = async { Ok(super::inner_tls(tcp, Arc::clone(&config), client.sni()).await) };
    let result = client
        .deadline(
            "the detection TLS handshake",
            client.options.timeouts.tls,
            handshake,
        )
        .await?;
    match result {
        Ok(tls) => {
            let alpn = tls
                .get_ref()
                .1
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            if alpn.as_deref() == Some(client.alpn.as_str()) {
                Ok(Finding::Negotiated)
            } else {
                Ok(Finding::OtherAlpn(alpn))
            }
        }
        Err(e) => classify(&e)
            .map(Finding::LoadBalancerFailure)
            .ok_or_else(|| ClientError::Detect(e.to_string())),
    }
}

/// The test handshake's configuration: only the route's ALPN, and a server
/// certificate that chains to a trusted root and is valid either for the inner
/// name (the router answered) or for the URL's host (a load balancer did).
fn detection_config(
    client: &Client,
    trusted: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let roots = crate::tls::root_store(trusted)?;
    let provider = crate::tls::provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let host = ServerName::try_from(client.server.host.clone())
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let verifier = Arc::new(EitherName { webpki, host });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &client.options.client_cert {
        Some(ck) => builder.with_client_auth_cert(ck.chain.clone(), ck.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![client.alpn.as_bytes().to_vec()];
    Ok(Arc::new(config))
}

/// Full WebPKI verification, for the name sent or for the server's host.
#[derive(Debug)]
struct EitherName {
    webpki: Arc<WebPkiServerVerifier>,
    host: ServerName<'static>,
}

impl ServerCertVerifier for EitherName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .or_else(|_| {
                self.webpki
                    .verify_server_cert(end_entity, intermediates, &self.host, ocsp, now)
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The reason, if this handshake failure means an L7 load balancer.
pub(crate) fn classify(e: &io::Error) -> Option<String> {
    use rustls::AlertDescription as A;
    match super::rustls_error(e) {
        Some(rustls::Error::AlertReceived(A::NoApplicationProtocol)) => {
            Some("no_application_protocol alert".into())
        }
        Some(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SelectedUnofferedApplicationProtocol,
        )) => Some("the server chose a protocol that was not offered".into()),
        Some(_) => None,
        None => matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        )
        .then(|| "the connection was closed during the handshake".into()),
    }
}

/// The path to use for `client` (the detection of PROTOCOL.md section 6), and
/// what the test handshake showed.
pub(crate) async fn detect(client: &Client) -> Result<(Path, String), ClientError> {
    Ok(match test_handshake(client).await? {
        Finding::Negotiated => (
            Path::Direct,
            format!("the test handshake negotiated {:?}", client.alpn),
        ),
        Finding::OtherAlpn(alpn) => (
            Path::Upgrade(DEFAULT_FRAMING),
            match alpn {
                Some(a) => format!("the test handshake answered ALPN {a:?}"),
                None => "the test handshake answered no ALPN".into(),
            },
        ),
        Finding::LoadBalancerFailure(why) => (
            Path::Upgrade(DEFAULT_FRAMING),
            format!("the test handshake: {why}"),
        ),
    })
}
