//! Workload certificates: the key a process generated for an identity, the chain the CA
//! signed for it, and the trust bundle that came with it.
//!
//! Keys are generated here (EC P-256) and never leave the process: only the CSR does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::client::ClientConfig;
use rustls::server::ServerConfig;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::identity::{Identity, IdentityError};

/// Why a certificate, key or chain could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A PEM block could not be decoded.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// The chain is empty.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// A certificate could not be parsed as X.509.
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    /// The leaf does not carry exactly one SPIFFE URI SAN.
    #[error("certificate must carry exactly one spiffe:// URI SAN, found {0}")]
    SanCount(usize),
    /// The leaf's URI SAN is not a valid identity.
    #[error("certificate URI SAN is not a workload identity: {0}")]
    Identity(#[from] IdentityError),
    /// The leaf names another identity than the one asked for.
    #[error("certificate is for {got}, expected {want}")]
    WrongIdentity {
        /// The identity that was asked for.
        want: Box<Identity>,
        /// The identity the certificate carries.
        got: Box<Identity>,
    },
    /// The key could not be generated, parsed or used for signing.
    #[error("key error: {0}")]
    Key(String),
    /// Building the CSR or certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A freshly generated key pair and the PEM CSR that asks the CA to certify it for an identity.
pub struct CsrAndKey {
    /// The PEM-encoded certificate signing request.
    pub csr_pem: String,
    /// The private key; it stays in this process.
    pub key: KeyPair,
}

/// Generates an EC P-256 key and a CSR with an empty subject and `identity` as its one URI SAN.
pub fn new_csr(identity: &Identity) -> Result<CsrAndKey, CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok(CsrAndKey {
        csr_pem: csr.pem()?,
        key,
    })
}

/// Parses every certificate in a PEM string (several blocks allowed).
pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::Pem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Reads the one `spiffe://` URI SAN of a DER certificate.
pub fn identity_of(der: &[u8]) -> Result<Identity, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::X509(e.to_string()))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| CertError::X509(e.to_string()))?;
    let uris: Vec<&str> = sans
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [one] => Ok(one.parse()?),
        other => Err(CertError::SanCount(other.len())),
    }
}

/// Serial number of a DER certificate, lower-case hex.
pub fn serial_of(der: &[u8]) -> Result<String, CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::X509(e.to_string()))?;
    Ok(cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Whether the key of `issuer` (DER) signed `cert` (DER).
pub fn signed_by(cert: &[u8], issuer: &[u8]) -> bool {
    match (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(issuer),
    ) {
        (Ok((_, cert)), Ok((_, issuer))) => {
            cert.verify_signature(Some(issuer.public_key())).is_ok()
        }
        _ => false,
    }
}

/// Validity window of a DER certificate.
pub fn validity_of(der: &[u8]) -> Result<(SystemTime, SystemTime), CertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::X509(e.to_string()))?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok((
        to_system(cert.validity().not_before),
        to_system(cert.validity().not_after),
    ))
}

/// A certificate the CA signed for one identity, with its key and trust bundle.
pub struct WorkloadCertificate {
    identity: Identity,
    /// Leaf first, then intermediates; the root is not sent to peers.
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    certified: Arc<CertifiedKey>,
    server_config: OnceLock<Arc<ServerConfig>>,
    /// Client configs built with this certificate, by the identities the server must prove.
    client_configs: Mutex<HashMap<Vec<Identity>, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// Assembles a certificate from the CA's answer (PEM, leaf first, roots last) and the key
    /// that made the CSR. Checks that the leaf names `identity`. As in Istio, the last element
    /// is the trust bundle and may hold several roots (a root rotation's overlap): all of them
    /// are trusted. A one-element answer holding several certificates ends with its root.
    pub fn from_ca_response(
        identity: &Identity,
        key: &KeyPair,
        cert_chain: &[String],
    ) -> Result<Self, CertError> {
        let (chain, roots) = match cert_chain {
            [] => return Err(CertError::EmptyChain),
            [only] => {
                let mut certs = parse_pem_certs(only)?;
                let root = if certs.len() > 1 { certs.pop() } else { None };
                (certs, root.into_iter().collect())
            }
            [signed @ .., bundle] => {
                let mut chain = Vec::new();
                for pem in signed {
                    chain.extend(parse_pem_certs(pem)?);
                }
                (chain, parse_pem_certs(bundle)?)
            }
        };
        Self::new(identity, key.serialize_der(), chain, roots)
    }

    /// Assembles a certificate from DER parts: PKCS#8 key, chain (leaf first, no root) and roots.
    pub fn new(
        identity: &Identity,
        pkcs8_key: Vec<u8>,
        chain: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or(CertError::EmptyChain)?;
        let got = identity_of(leaf)?;
        if &got != identity {
            return Err(CertError::WrongIdentity {
                want: Box::new(identity.clone()),
                got: Box::new(got),
            });
        }
        let (not_before, not_after) = validity_of(leaf)?;
        let key = PrivatePkcs8KeyDer::from(pkcs8_key);
        let signing = crate::crypto::provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.clone_key()))
            .map_err(|e| CertError::Key(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(chain.clone(), signing));
        Ok(WorkloadCertificate {
            identity: identity.clone(),
            chain,
            roots,
            key,
            not_before,
            not_after,
            certified,
            server_config: OnceLock::new(),
            client_configs: Mutex::default(),
        })
    }

    /// Adds roots to the trust bundle (root rotation: old and new roots both trusted).
    pub fn with_extra_roots(
        mut self,
        extra: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Self {
        for root in extra {
            if !self.roots.contains(&root) {
                self.roots.push(root);
            }
        }
        self.server_config = OnceLock::new();
        self.client_configs = Mutex::default();
        self
    }

    /// The identity this certificate proves.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The chain sent to peers: leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The trusted roots.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The PKCS#8 private key.
    pub fn key(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.key
    }

    /// Start of validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether the certificate is past its end of validity at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// The moment half of the lifetime has passed: when renewal is due.
    pub fn half_life(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime / 2
    }

    /// The chain and key in the form rustls signs with.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// Where the TLS module keeps this certificate's server config once built.
    pub(crate) fn server_config_cache(&self) -> &OnceLock<Arc<ServerConfig>> {
        &self.server_config
    }

    /// Where the TLS module keeps the client configs built with this certificate.
    pub(crate) fn client_config_cache(&self) -> &Mutex<HashMap<Vec<Identity>, Arc<ClientConfig>>> {
        &self.client_configs
    }
}
