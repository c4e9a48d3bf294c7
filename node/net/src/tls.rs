//! TLS server configuration from PEM files, with one process-wide crypto provider, and the
//! client side of opportunistic TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why TLS could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing or holds no certificate.
    #[error("cannot read certificates from {path}: {reason}; give a PEM certificate chain in [tls] cert")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key file is missing or holds no private key.
    #[error("cannot read the private key from {path}: {reason}; give a PEM private key in [tls] key")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key does not match the certificate, or rustls refused them.
    #[error("the TLS certificate and key are not usable together: {0}")]
    Config(String),
}

/// Installs aws-lc-rs as the process-wide rustls crypto provider (idempotent). Several
/// dependencies bring their own provider, so rustls cannot pick one by itself.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A TLS client that encrypts without checking who is on the other side: opportunistic
/// STARTTLS between MTAs (RFC 3207 §4.1 leaves authentication to policy; RFC 7435) and load
/// tools. The handshake signatures are still verified; never use it where identity matters.
pub fn opportunistic_tls_connector() -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Opportunistic TLS: encrypt, without checking who is on the other side.
#[derive(Debug)]
struct AcceptAnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let provider = rustls::crypto::CryptoProvider::get_default().expect("crypto provider installed");
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let provider = rustls::crypto::CryptoProvider::get_default().expect("crypto provider installed");
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::CryptoProvider::get_default()
            .expect("crypto provider installed")
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Builds a TLS acceptor (TLS 1.2 and 1.3) from a PEM certificate chain and private key.
pub fn load_tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate { path: cert.to_owned(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Certificate { path: cert.to_owned(), reason: "no certificate in the file".into() });
    }
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_generated_certificate_and_explains_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        load_tls_acceptor(&cert, &key).unwrap();

        let Err(missing) = load_tls_acceptor(&dir.path().join("nope.pem"), &key) else {
            panic!("loaded a missing file")
        };
        assert!(missing.to_string().contains("nope.pem"), "{missing}");
        let Err(swapped) = load_tls_acceptor(&key, &cert) else { panic!("loaded a key as a certificate") };
        assert!(matches!(swapped, TlsError::Certificate { .. } | TlsError::Key { .. }), "{swapped}");
    }
}
