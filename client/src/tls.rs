//! The client's TLS configurations: the crypto provider, trust roots (given
//! CAs or the system's), and a client configuration offering an ALPN list with
//! an optional client certificate.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::pem::CertKey;

/// The crypto provider (ring: builds with a C compiler alone).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A root store holding `cas`.
pub fn root_store(cas: &[CertificateDer<'static>]) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone())?;
    }
    Ok(roots)
}

/// A TLS client configuration trusting `cas`, offering `alpn` (may be empty),
/// with an optional client certificate.
pub fn client_config(
    cas: &[CertificateDer<'static>],
    alpn: &[&str],
    client_cert: Option<&CertKey>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(cas)?), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier);
    let mut config = match client_cert {
        Some(ck) => builder.with_client_auth_cert(ck.chain.clone(), ck.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
