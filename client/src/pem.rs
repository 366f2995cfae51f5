//! Certificates and keys from PEM files: the CAs that verify the router and the
//! load balancer, and the client certificate with its key (checked to belong
//! together, so a mismatch is a clear error here rather than a failed handshake).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain with its private key.
#[derive(Debug, PartialEq, Eq)]
pub struct CertKey {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: PrivateKeyDer<'static>,
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
/// one the leaf certificate was issued for.
pub fn read_cert_key(cert: &Path, key: &Path) -> Result<CertKey, String> {
    let chain = read_certs(cert)?;
    let pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let private = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no usable private key: {e}", key.display()))?;
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(private.clone_key())
        .map_err(|e| format!("{}: the private key cannot be used: {e}", key.display()))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|e| {
            format!(
                "{} is not the private key of the certificate in {} ({e})",
                key.display(),
                cert.display()
            )
        })?;
    Ok(CertKey {
        chain,
        key: private,
    })
}
