//! Mutual TLS between workloads: TLS 1.3 only, ALPN `h2`, SPIFFE identities on both sides.
//!
//! The client knows which identities may answer for a destination and refuses any other. The
//! server requires a client certificate chaining to the trust bundle and from its own trust
//! domain; *what* that client may do is left to authorization policy, so the server exposes the
//! verified peer [`Identity`] through [`peer_identity`].

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ClientConfig, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, ServerConfig, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore,
    SignatureScheme,
};

use crate::cert::{identity_of, WorkloadCertificate};
use crate::identity::Identity;

/// ALPN protocol for HBONE.
pub const ALPN_H2: &[u8] = b"h2";

pub use crate::crypto::provider;
use crate::crypto::tls13_provider;

impl WorkloadCertificate {
    /// The server TLS config for this identity, built once per certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config_cache()
            .get_or_init(|| server_config(self))
            .clone()
    }
}

fn root_store(roots: &[CertificateDer<'static>]) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for root in roots {
        // A root that does not parse cannot anchor anything; skipping it fails closed.
        if let Err(e) = store.add(root.clone()) {
            tracing::warn!(error = %e, "ignoring unparseable root certificate");
        }
    }
    store
}

/// Client configs kept per certificate; beyond this many destinations' identity sets the
/// cache starts over (each set is one HBONE destination kind, so this is rarely reached).
const MAX_CLIENT_CONFIGS: usize = 1024;

/// [`client_config`], built once per certificate and `expected` (a new HBONE connection to a
/// known destination does not parse the trust bundle again).
pub fn cached_client_config(
    cert: &WorkloadCertificate,
    expected: &[Identity],
) -> Arc<ClientConfig> {
    let mut cache = cert
        .client_config_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(config) = cache.get(expected) {
        return config.clone();
    }
    if cache.len() >= MAX_CLIENT_CONFIGS {
        cache.clear();
    }
    let config = Arc::new(client_config(cert, expected.to_vec()));
    cache.insert(expected.to_vec(), config.clone());
    config
}

/// The client side of a workload connection: present `cert`, accept only a server proving one
/// of `expected`.
pub fn client_config(cert: &WorkloadCertificate, expected: Vec<Identity>) -> ClientConfig {
    let verifier = Arc::new(IdentityServerVerifier {
        roots: root_store(cert.roots()),
        expected,
        provider: provider(),
    });
    let mut config = ClientConfig::builder_with_provider(tls13_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the built-in provider")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(FixedClientCert(cert.certified_key())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Every connection re-proves its identities; no tickets to carry them across.
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    config
}

/// The server side for one workload identity: present `cert`, require a client certificate
/// from the same trust domain chaining to the bundle.
pub fn server_config(cert: &WorkloadCertificate) -> Arc<ServerConfig> {
    let roots = Arc::new(root_store(cert.roots()));
    let verifier = Arc::new(TrustDomainClientVerifier {
        inner: WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .ok(),
        trust_domain: cert.identity().trust_domain().to_string(),
    });
    let mut config = ServerConfig::builder_with_provider(tls13_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the built-in provider")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(FixedServerCert(cert.certified_key())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// The verified identity of the peer of an established connection.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<Identity> {
    let leaf = conn.peer_certificates()?.first()?;
    identity_of(leaf).ok()
}

#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct FixedServerCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// TLS 1.2 is never negotiated; refuse its signatures outright.
fn tls12_refused() -> Result<HandshakeSignatureValid, TlsError> {
    Err(TlsError::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, TlsError> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

fn supported_schemes() -> Vec<SignatureScheme> {
    provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// Checks the server chain against the bundle, then its URI SAN against the expected set.
#[derive(Debug)]
struct IdentityServerVerifier {
    roots: RootCertStore,
    expected: Vec<Identity>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for IdentityServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let got = identity_of(end_entity)
            .map_err(|e| TlsError::General(format!("server certificate: {e}")))?;
        if self.expected.contains(&got) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::debug!(server = %got, expected = ?self.expected.iter().map(ToString::to_string).collect::<Vec<_>>(), "server identity mismatch");
            Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes()
    }
}

/// webpki chain validation, then: the client's identity is in our trust domain.
#[derive(Debug)]
struct TrustDomainClientVerifier {
    /// `None` when the bundle is empty: every client is then refused.
    inner: Option<Arc<dyn ClientCertVerifier>>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let inner = self.inner.as_ref().ok_or(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))?;
        inner.verify_client_cert(end_entity, intermediates, now)?;
        let id = identity_of(end_entity)
            .map_err(|e| TlsError::General(format!("client certificate: {e}")))?;
        if id.trust_domain() != self.trust_domain {
            tracing::info!(client = %id, trust_domain = %self.trust_domain, "client certificate refused: foreign trust domain");
            return Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes()
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    fn id(s: &str) -> Identity {
        format!("spiffe://cluster.local/ns/{s}")
            .parse()
            .expect("identity")
    }

    /// The cipher suites a ClientHello (one TLS record) offers.
    fn offered_suites(hello: &[u8]) -> Vec<u16> {
        // Record header 5, handshake header 4, legacy version 2, random 32.
        let mut at = 5 + 4 + 2 + 32;
        at += 1 + usize::from(hello[at]); // legacy session id
        let len = usize::from(u16::from_be_bytes([hello[at], hello[at + 1]]));
        hello[at + 2..at + 2 + len]
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn the_hbone_client_hello_offers_tls13_suites_only() {
        let ca = crate::testing::TestCa::new("cluster.local", std::time::Duration::from_secs(3600));
        let cert = ca.issue(&id("a/sa/client"));
        let config = cached_client_config(&cert, &[id("b/sa/web")]);
        let name = ServerName::try_from("hbone").expect("name");
        let mut conn = rustls::ClientConnection::new(config, name).expect("client");
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).expect("ClientHello");
        let suites = offered_suites(&hello);
        assert!(!suites.is_empty(), "{hello:?}");
        // TLS 1.3 suites are 0x13xx (RFC 8446 B.4); TLS 1.2's ECDHE suites are 0xc0xx/0xccxx.
        assert!(
            suites.iter().all(|s| s >> 8 == 0x13),
            "only TLS 1.3 suites: {suites:04x?}"
        );
    }

    #[test]
    fn a_client_config_is_built_once_per_certificate_and_expected_identities() {
        let ca = crate::testing::TestCa::new("cluster.local", std::time::Duration::from_secs(3600));
        let cert = ca.issue(&id("a/sa/client"));
        let web = [id("b/sa/web")];
        let first = cached_client_config(&cert, &web);
        assert!(Arc::ptr_eq(&first, &cached_client_config(&cert, &web)));
        let other = cached_client_config(&cert, &[id("c/sa/db")]);
        assert!(
            !Arc::ptr_eq(&first, &other),
            "another destination gets its own"
        );
        let renewed = ca.issue(&id("a/sa/client"));
        assert!(
            !Arc::ptr_eq(&first, &cached_client_config(&renewed, &web)),
            "a new certificate starts a new cache"
        );
    }
}
