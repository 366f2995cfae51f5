//! TLS for the tests: a self-signed certificate made with rcgen at test time (no
//! keys checked in) and a blocking rustls client that trusts it.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A certificate authority for tests and the demo.
pub fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate signed by a CA, in PEM and DER.
pub struct Leaf {
    /// The certificate, PEM.
    pub pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    /// Its private key, DER.
    pub key: PrivateKeyDer<'static>,
}

/// A certificate for `names` (and common name `cn`) signed by `issuer`.
pub fn leaf(names: &[&str], cn: &str, issuer: &CertifiedIssuer<'static, KeyPair>) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.signed_by(&key, issuer).unwrap();
    Leaf {
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
        key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    }
}

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

    /// The certificate and its key in one PEM file in `dir` (HAProxy's form).
    pub fn combined(&self, dir: &Path) -> PathBuf {
        let path = dir.join("combined.pem");
        let pem = fs::read_to_string(&self.pem).unwrap() + &fs::read_to_string(&self.key).unwrap();
        fs::write(&path, pem).unwrap();
        path
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
