//! Cluster identity: the cluster CA (rcgen), node certificates it signs, and the rustls
//! configurations of mutual TLS between nodes.
//!
//! Every node certificate names `wmail-cluster` and `node-<id>.wmail-cluster`; a node
//! dialling a peer checks the peer's certificate for the peer's own name, so one node cannot
//! stand in for another. A joining node has no certificate yet: it checks the member it
//! enrols at by the SHA-256 fingerprint of the CA certificate carried in its join token.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SignatureAlgorithm,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::NodeId;

/// The name every node certificate carries (a joining node checks it).
pub const CLUSTER_NAME: &str = "wmail-cluster";
/// The ALPN protocol of node-to-node QUIC.
pub const ALPN: &[u8] = b"wmail-cluster/1";

/// The certificate name of node `id`.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.{CLUSTER_NAME}")
}

/// Why a certificate or TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl TlsError {
    /// An error of `what`, caused by `error`.
    pub fn new(what: &str, error: impl std::fmt::Display) -> Self {
        Self(format!("{what}: {error}"))
    }
}

/// A cluster certificate authority: the material stored in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaMaterial {
    /// The CA's common name.
    pub name: String,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// Makes a new cluster CA (ECDSA P-256).
pub fn generate_ca() -> Result<CaMaterial, TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| TlsError::new("making the CA key", e))?;
    let serial: u64 = rand_u64();
    let name = format!("wmail cluster CA {serial:016x}");
    let cert = ca_params(&name).self_signed(&key).map_err(|e| TlsError::new("signing the CA certificate", e))?;
    Ok(CaMaterial { name, cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).expect("system random source");
    u64::from_be_bytes(bytes)
}

fn first_certificate(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::new("reading a certificate", e))
}

/// The SHA-256 of a certificate's DER encoding.
pub fn fingerprint_der(der: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The SHA-256 fingerprint of the (first) certificate in `cert_pem`.
pub fn fingerprint(cert_pem: &str) -> Result<[u8; 32], TlsError> {
    Ok(fingerprint_der(&first_certificate(cert_pem)?))
}

/// A node's new key pair: the private key stays on the node, the public key goes to the
/// member that signs its certificate.
pub struct NodeKey {
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The raw public key (an uncompressed P-256 point).
    pub public_key: Vec<u8>,
}

/// Makes a node key pair (ECDSA P-256).
pub fn generate_node_key() -> Result<NodeKey, TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| TlsError::new("making the node key", e))?;
    Ok(NodeKey { key_pem: key.serialize_pem(), public_key: key.public_key_raw().to_vec() })
}

/// Checks that `public_key` is what [`generate_node_key`] makes: an uncompressed P-256
/// point on the curve.
pub fn check_node_public_key(public_key: &[u8]) -> Result<(), TlsError> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
    if public_key.len() != 65 || public_key[0] != 4 {
        return Err(TlsError("the node's public key is not an uncompressed P-256 point".into()));
    }
    ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key)
        .map(drop)
        .map_err(|_| TlsError("the node's public key is not a point on P-256".into()))
}

/// A P-256 public key received from a joining node.
struct P256PublicKey(Vec<u8>);

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// How long a node certificate is valid by default; a node renews its own well before
/// (see `wmail_core`), so a stolen copy of a certificate stops working by itself. (A
/// removed node is kept out by the revoked-id check on every request, not by expiry: any
/// member holds the CA key and could sign itself a new one.)
pub const NODE_CERTIFICATE_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// A node certificate: PEM, and when it stops being valid.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its notAfter (ms since the epoch).
    pub expires_ms: u64,
}

/// The raw public key (as [`NodeKey::public_key`]) of a private key in PKCS#8 PEM.
pub fn public_key_of(key_pem: &str) -> Result<Vec<u8>, TlsError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::new("reading the node key", e))?;
    Ok(key.public_key_raw().to_vec())
}

/// Signs the certificate of node `node_id` for its `public_key` (from [`NodeKey`]) with the
/// cluster CA, valid from an hour ago (clocks differ) for `valid_for`.
pub fn issue_node_certificate(
    ca: &CaMaterial,
    node_id: NodeId,
    public_key: &[u8],
    valid_for: std::time::Duration,
) -> Result<IssuedCertificate, TlsError> {
    check_node_public_key(public_key)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let at = |seconds: u64| {
        time::OffsetDateTime::from_unix_timestamp(seconds as i64)
            .map_err(|e| TlsError::new("dating the node certificate", e))
    };
    let expires = now.as_secs() + valid_for.as_secs().max(1);
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| TlsError::new("reading the CA key", e))?;
    let issuer = Issuer::new(ca_params(&ca.name), ca_key);
    let mut params = CertificateParams::new(vec![CLUSTER_NAME.to_string(), node_name(node_id)])
        .map_err(|e| TlsError::new("naming the node certificate", e))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_name(node_id));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = at(now.as_secs().saturating_sub(3_600))?;
    params.not_after = at(expires)?;
    let cert = params
        .signed_by(&P256PublicKey(public_key.to_vec()), &issuer)
        .map_err(|e| TlsError::new("signing the node certificate", e))?;
    Ok(IssuedCertificate { cert_pem: cert.pem(), expires_ms: expires * 1_000 })
}

/// Whether the certificate `der` (already verified against the cluster CA) names node
/// `id`.
pub fn certificate_names_node(der: &[u8], id: NodeId) -> bool {
    let der = CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else { return false };
    let Ok(name) = ServerName::try_from(node_name(id)) else { return false };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// What a node presents to its peers and trusts in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's id (its certificate names it).
    pub node_id: NodeId,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl NodeIdentity {
    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(first_certificate(&self.ca_pem)?).map_err(|e| TlsError::new("trusting the cluster CA", e))?;
        Ok(roots)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::new("reading the node key", e))
    }

    /// The server side: presents the node certificate followed by the CA certificate (a
    /// joining node finds the CA there by its fingerprint), and verifies client
    /// certificates against the cluster CA. A client without a certificate is let in
    /// for enrolment only; one with a certificate from another CA is refused.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::new("building the client verifier", e))?;
        let chain = vec![first_certificate(&self.cert_pem)?, first_certificate(&self.ca_pem)?];
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::new("choosing TLS 1.3", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, self.key()?)
            .map_err(|e| TlsError::new("loading the node certificate", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The client side: trusts only the cluster CA and presents the node certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::new("choosing TLS 1.3", e))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![first_certificate(&self.cert_pem)?], self.key()?)
            .map_err(|e| TlsError::new("loading the node certificate", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The client side of a joining node: no certificate of its own; the member must present a
/// certificate for [`CLUSTER_NAME`] signed by the CA whose fingerprint the token carries.
pub fn join_client_config(ca_fingerprint: [u8; 32]) -> rustls::ClientConfig {
    let verifier = Arc::new(PinnedCaVerifier { ca_fingerprint, provider: provider() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("aws-lc-rs supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

/// Accepts a server whose chain contains the CA with the pinned fingerprint and whose
/// certificate that CA signed for the expected name.
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| fingerprint_der(cert) == self.ca_fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
