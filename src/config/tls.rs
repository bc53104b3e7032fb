//! The CA certificates of `auth.jwks_ca`: read here so that `warden check`
//! and the JWKS client refuse the same files for the same reasons.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The certificates of a PEM file: at least one, every one readable.
pub fn read_ca(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: not a PEM file of certificates ({e:?})"))?;
    if certs.is_empty() {
        return Err(format!("{path}: holds no certificate"));
    }
    Ok(certs)
}
