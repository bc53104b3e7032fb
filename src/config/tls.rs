//! TLS for warden's own HTTP clients (an issuer's JWKS, remote MCP
//! servers): rustls on ring, and the CA certificates of `auth.jwks_ca`, read
//! here so that `warden check` and the client refuse the same files for the
//! same reasons.

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

/// A TLS client configuration: the server's certificate checked against
/// the CAs of the PEM file `ca` if given, else the web's roots built into
/// warden (webpki-roots).
pub fn client_config(ca: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(ca) => {
            for cert in read_ca(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{ca}: a certificate rustls refuses: {e}"))?;
            }
        }
    }
    // ring, not aws-lc-rs (a C build of minutes on two cores). rustls marks
    // it deprecated for lacking post-quantum key exchange, which guards
    // secrecy against later decryption; what these clients fetch is public
    // keys and tool calls whose secrecy the remote server's own TLS choices
    // bound anyway.
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
