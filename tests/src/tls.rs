//! TLS for the tests: a self-signed certificate made with rcgen at test time (no
//! keys checked in) and a blocking rustls client that trusts it.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A TLS client stream over TCP.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A server certificate for `envoy.test`, written as PEM files.
pub struct ServerCert {
    /// The certificate chain file.
    pub pem: PathBuf,
    /// The private key file.
    pub key: PathBuf,
    der: CertificateDer<'static>,
}

impl ServerCert {
    /// Generates the certificate (for `envoy.test`, `localhost` and
    /// `127.0.0.1`) into `dir`.
    pub fn generate(dir: &Path) -> ServerCert {
        let names = vec!["envoy.test".into(), "localhost".into(), "127.0.0.1".into()];
        let cert = rcgen::generate_simple_self_signed(names).expect("certificate");
        let (pem, key) = (dir.join("server.pem"), dir.join("server.key"));
        fs::write(&pem, cert.cert.pem()).unwrap();
        fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
        ServerCert {
            pem,
            key,
            der: cert.cert.der().clone(),
        }
    }

    /// The certificate, for trust stores.
    pub fn der(&self) -> CertificateDer<'static> {
        self.der.clone()
    }

    /// Connects to `addr` as `envoy.test`, offering `alpn`, and completes the
    /// handshake; returns the stream, or the error a client would report.
    pub fn connect(&self, addr: SocketAddr, alpn: &[&str]) -> io::Result<TlsStream> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.der.clone())
            .expect("trust the test certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = ServerName::try_from("envoy.test").unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, crate::http::connect(addr));
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }
}

/// The ALPN protocol a handshake agreed on.
pub fn negotiated(stream: &TlsStream) -> Option<String> {
    stream
        .conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}
