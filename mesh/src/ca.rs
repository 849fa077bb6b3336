//! The signing core of the mesh CA: CSR validation and leaf issuance.
//!
//! This module decides nothing about *who* may ask for *which* identity: that is the job of
//! the CA service in istiod-lite. It only guarantees that what it signs is well formed: one
//! URI SAN naming a valid identity, an EC P-256 key, a valid signature, a capped lifetime.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::prelude::FromDer;

use crate::cert::{parse_pem_certs, signed_by, CertError};
use crate::identity::{Identity, IdentityError};

/// Default workload certificate lifetime.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of a root the CA generates itself.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before "now" so that small clock skew between nodes is harmless.
const BACKDATE: Duration = Duration::from_secs(60);
/// Upper bound on a PEM CSR we are willing to parse.
const MAX_CSR_LEN: usize = 16 * 1024;

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Larger than any honest CSR.
    #[error("CSR is {0} bytes; the limit is 16 KiB")]
    TooLarge(usize),
    /// Not a PEM `CERTIFICATE REQUEST`.
    #[error("CSR is not a PEM CERTIFICATE REQUEST: {0}")]
    Pem(String),
    /// Not parseable, or the signature does not verify.
    #[error("CSR is malformed or its signature does not verify: {0}")]
    Invalid(String),
    /// The key is not EC P-256.
    #[error("CSR key must be EC P-256 (prime256v1)")]
    KeyType,
    /// SANs other than exactly one URI.
    #[error("CSR must carry exactly one URI SAN and no other SAN; found {uris} URI SAN(s) and {others} other SAN(s)")]
    Sans {
        /// How many URI SANs.
        uris: usize,
        /// How many SANs of other kinds.
        others: usize,
    },
    /// The URI SAN is not a workload identity.
    #[error("CSR URI SAN is not a workload identity: {0}")]
    Identity(#[from] IdentityError),
}

/// A CSR whose signature, key type and SAN have been checked.
pub struct VerifiedCsr {
    identity: Identity,
    request: CertificateSigningRequestParams,
}

impl VerifiedCsr {
    /// Parses and checks a PEM CSR.
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        if pem.len() > MAX_CSR_LEN {
            return Err(CsrError::TooLarge(pem.len()));
        }
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CsrError::Pem(e.to_string()))?;
        // Check the key curve ourselves: rcgen only reports the signature algorithm.
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der)
                .map_err(|e| CsrError::Invalid(e.to_string()))?;
        let spki = &parsed.certification_request_info.subject_pki;
        let is_p256 = spki.algorithm.algorithm
            == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
            && spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|oid| oid == x509_parser::oid_registry::OID_EC_P256);
        if !is_p256 {
            return Err(CsrError::KeyType);
        }
        let request = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
        let mut uris = Vec::new();
        let mut others = 0;
        for san in &request.params.subject_alt_names {
            match san {
                SanType::URI(u) => uris.push(u.as_str().to_string()),
                _ => others += 1,
            }
        }
        if uris.len() != 1 || others != 0 {
            return Err(CsrError::Sans {
                uris: uris.len(),
                others,
            });
        }
        let identity = uris[0].parse()?;
        Ok(VerifiedCsr { identity, request })
    }

    /// The identity the CSR asks for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// Why the CA could not be set up or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A CA certificate or key file is unusable.
    #[error("CA material: {0}")]
    Material(#[from] CertError),
    /// Key generation or signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    /// The CA certificate and key do not belong together, or the cert is not a CA.
    #[error("CA certificate unusable: {0}")]
    NotCa(String),
}

/// A certificate authority: the signing key and certificate, the chain above it, the roots.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_pem: String,
    ca_key_pem: String,
    /// Intermediates above the signing cert and the root, PEM, in order; last is the root.
    chain_above_pem: Vec<String>,
    root_pem: String,
    /// Every root the mesh trusts, PEM, concatenated: the signing root, and during a root
    /// rotation the other one. The last element of every issued chain.
    bundle_pem: String,
    trust_domain: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a self-signed root for `trust_domain`.
    pub fn generate_root(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "mesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ROOT_TTL).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        Ok(CertificateAuthority {
            ca_key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            ca_cert_pem: pem.clone(),
            chain_above_pem: Vec::new(),
            bundle_pem: pem.clone(),
            root_pem: pem,
            trust_domain: trust_domain.to_string(),
        })
    }

    /// Loads CA material in the layout operators already use for a plug-in CA:
    /// the signing cert and key, the chain from it up to the root (may be empty when the
    /// signing cert is the root), and the trust bundle: one root, or several during a root
    /// rotation. The signing chain's root is the signing certificate itself when it is in the
    /// bundle, else the last certificate of the chain when there is one, else the bundle's
    /// first; it must be in the bundle.
    pub fn from_pem(
        trust_domain: &str,
        ca_cert_pem: &str,
        ca_key_pem: &str,
        cert_chain_pem: &str,
        root_cert_pem: &str,
    ) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(ca_key_pem)?;
        let ca_der = parse_pem_certs(ca_cert_pem)?
            .into_iter()
            .next()
            .ok_or(CertError::EmptyChain)?;
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&ca_der)
            .map_err(|e| CaError::NotCa(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(CaError::NotCa(
                "the signing certificate has no CA basic constraint".into(),
            ));
        }
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::NotCa(
                "the CA key does not match the CA certificate".into(),
            ));
        }
        let bundle = parse_pem_certs(root_cert_pem)?;
        // The chain without roots, from the signing certificate up; its top must be signed by
        // a root of the bundle (or be one).
        let mut signed = vec![ca_der.clone()];
        if !cert_chain_pem.trim().is_empty() {
            for cert in parse_pem_certs(cert_chain_pem)? {
                if cert != ca_der && !bundle.contains(&cert) {
                    signed.push(cert);
                }
            }
        }
        let root = if bundle.contains(&ca_der) {
            ca_der.clone()
        } else {
            let top = signed.last().unwrap_or(&ca_der);
            bundle
                .iter()
                .find(|root| signed_by(top, root))
                .cloned()
                .ok_or_else(|| {
                    CaError::NotCa(
                        "no root of the trust bundle (root-cert.pem) signed the signing chain"
                            .into(),
                    )
                })?
        };
        let root_pem = pem_of(&root);
        let mut chain_above_pem: Vec<String> = signed.iter().skip(1).map(|c| pem_of(c)).collect();
        if ca_der != root {
            chain_above_pem.push(root_pem.clone());
        }
        let bundle_pem = bundle.iter().map(|c| pem_of(c)).collect();
        let issuer = Issuer::from_ca_cert_der(&ca_der, key)?;
        Ok(CertificateAuthority {
            issuer,
            ca_cert_pem: pem_of(&ca_der),
            ca_key_pem: ca_key_pem.to_string(),
            chain_above_pem,
            root_pem,
            bundle_pem,
            trust_domain: trust_domain.to_string(),
        })
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM: what every workload trusts.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Every trusted root, PEM, concatenated: what proxies trust, published as
    /// `root-cert.pem`, and the last element of every chain this CA issues.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The signing certificate, PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The signing key, PEM, for persisting a generated root. Handle with care.
    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    /// Signs a verified CSR for `ttl`, starting now. Returns the chain as the CA API sends it:
    /// PEM, leaf first, root last.
    pub fn sign(&self, csr: &VerifiedCsr, ttl: Duration) -> Result<Vec<String>, CaError> {
        self.sign_valid_from(csr, SystemTime::now() - BACKDATE, ttl + BACKDATE)
    }

    /// Signs with an explicit validity window (tests use it for expired certificates).
    pub fn sign_valid_from(
        &self,
        csr: &VerifiedCsr,
        not_before: SystemTime,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        let params = leaf_params(
            vec![SanType::URI(csr.identity.to_string().try_into()?)],
            not_before,
            ttl,
        );
        let cert = params.signed_by(&csr.request.public_key, &self.issuer)?;
        Ok(self.chain_for(cert.pem()))
    }

    /// Issues a server certificate for the control plane itself (DNS and IP SANs), with a key
    /// generated here. Returns (chain PEM leaf first, root last; key PEM).
    pub fn issue_server_cert(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<(Vec<String>, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        // Backdated for clock skew, and lasting `ttl` from now, as workload certificates do.
        let params = leaf_params(sans, SystemTime::now() - BACKDATE, ttl + BACKDATE);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((self.chain_for(cert.pem()), key.serialize_pem()))
    }

    /// Creates an intermediate CA under this one (for plug-in CA setups and tests).
    pub fn issue_intermediate(&self, trust_domain: &str) -> Result<CertificateAuthority, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "mesh intermediate CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ROOT_TTL / 2).into();
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain_above = vec![self.ca_cert_pem.clone()];
        chain_above.extend(self.chain_above_pem.iter().cloned());
        chain_above.dedup();
        if chain_above.last() != Some(&self.root_pem) {
            chain_above.push(self.root_pem.clone());
        }
        Ok(CertificateAuthority {
            ca_key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            ca_cert_pem: cert.pem(),
            chain_above_pem: chain_above,
            root_pem: self.root_pem.clone(),
            bundle_pem: self.bundle_pem.clone(),
            trust_domain: trust_domain.to_string(),
        })
    }

    /// Leaf, signing certificate and intermediates (unless the signer is the root), then the
    /// whole trust bundle as one last element: Istio's CA API puts the roots last, several
    /// concatenated during a root rotation.
    fn chain_for(&self, leaf_pem: String) -> Vec<String> {
        let mut chain = vec![leaf_pem];
        if let Some((_root, intermediates)) = self.chain_above_pem.split_last() {
            chain.push(self.ca_cert_pem.clone());
            chain.extend(intermediates.iter().cloned());
        }
        chain.push(self.bundle_pem.clone());
        chain
    }
}

fn leaf_params(sans: Vec<SanType>, not_before: SystemTime, ttl: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = (not_before + ttl).into();
    params.serial_number = Some(random_serial());
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::{identity_of, new_csr, WorkloadCertificate};

    fn id(s: &str) -> Identity {
        s.parse().expect("valid identity")
    }

    #[test]
    fn server_certificates_last_their_ttl_and_have_distinct_serials() {
        let ca = CertificateAuthority::generate_root("cluster.local").expect("root");
        let names = vec![
            "istiod.istio-system.svc".to_string(),
            "10.0.0.1".to_string(),
        ];
        let ttl = Duration::from_secs(600);
        let (a, _) = ca.issue_server_cert(&names, ttl).expect("issued");
        let (b, _) = ca.issue_server_cert(&names, ttl).expect("issued");
        let der = |pem: &str| parse_pem_certs(pem).expect("pem").remove(0);
        let (_, not_after) = crate::cert::validity_of(&der(&a[0])).expect("validity");
        let left = not_after
            .duration_since(SystemTime::now())
            .expect("not expired");
        assert!(
            left > ttl - Duration::from_secs(5),
            "{left:?}: backdating ate the TTL"
        );
        let serial = |pem: &str| crate::cert::serial_of(&der(pem)).expect("serial");
        assert!(!serial(&a[0]).is_empty());
        assert!(serial(&a[0]).chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(serial(&a[0]), serial(&b[0]));
    }

    #[test]
    fn signs_a_csr_into_a_chain_that_names_the_identity() {
        let ca = CertificateAuthority::generate_root("cluster.local").expect("root");
        let who = id("spiffe://cluster.local/ns/default/sa/sleep");
        let csr = new_csr(&who).expect("csr");
        let verified = VerifiedCsr::from_pem(&csr.csr_pem).expect("verified");
        assert_eq!(verified.identity(), &who);
        let chain = ca.sign(&verified, DEFAULT_CERT_TTL).expect("signed");
        assert_eq!(chain.len(), 2, "leaf then root");
        assert_eq!(chain[1], ca.root_pem());
        let cert = WorkloadCertificate::from_ca_response(&who, &csr.key, &chain).expect("usable");
        assert_eq!(cert.identity(), &who);
        assert_eq!(identity_of(&cert.chain()[0]).expect("san"), who);
        let lifetime = cert
            .not_after()
            .duration_since(cert.not_before())
            .expect("ordered");
        assert_eq!(lifetime, DEFAULT_CERT_TTL + BACKDATE);
    }

    #[test]
    fn intermediate_chain_is_leaf_intermediate_root() {
        let root = CertificateAuthority::generate_root("cluster.local").expect("root");
        let inter = root
            .issue_intermediate("cluster.local")
            .expect("intermediate");
        let reloaded = CertificateAuthority::from_pem(
            "cluster.local",
            inter.ca_cert_pem(),
            inter.ca_key_pem(),
            &inter.chain_above_pem.concat(),
            root.root_pem(),
        )
        .expect("plug-in CA loads");
        let who = id("spiffe://cluster.local/ns/a/sa/b");
        let csr = new_csr(&who).expect("csr");
        let chain = reloaded
            .sign(
                &VerifiedCsr::from_pem(&csr.csr_pem).expect("ok"),
                DEFAULT_CERT_TTL,
            )
            .expect("signed");
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[1], inter.ca_cert_pem());
        assert_eq!(chain[2], root.root_pem());
    }

    #[test]
    fn a_bundle_of_two_roots_ends_every_chain_and_is_all_trusted() {
        let old = CertificateAuthority::generate_root("cluster.local").expect("old");
        let new = CertificateAuthority::generate_root("cluster.local").expect("new");
        let bundle = format!("{}{}", old.root_pem(), new.root_pem());
        // The signer moved to the new root; the old one is still trusted (the overlap).
        let ca = CertificateAuthority::from_pem(
            "cluster.local",
            new.ca_cert_pem(),
            new.ca_key_pem(),
            "",
            &bundle,
        )
        .expect("loads");
        assert_eq!(ca.root_pem(), new.root_pem(), "the signing root");
        let who = id("spiffe://cluster.local/ns/a/sa/b");
        let csr = new_csr(&who).expect("csr");
        let verified = VerifiedCsr::from_pem(&csr.csr_pem).expect("ok");
        let chain = ca.sign(&verified, DEFAULT_CERT_TTL).expect("signed");
        assert_eq!(chain.len(), 2, "leaf, then the bundle as one element");
        assert_eq!(parse_pem_certs(&chain[1]).expect("pem").len(), 2);
        let cert = WorkloadCertificate::from_ca_response(&who, &csr.key, &chain).expect("ok");
        assert_eq!(cert.chain().len(), 1, "no root is sent to peers");
        assert_eq!(cert.roots().len(), 2, "both roots trusted");

        // A signer whose root is not in the bundle is refused.
        let err = CertificateAuthority::from_pem(
            "cluster.local",
            new.ca_cert_pem(),
            new.ca_key_pem(),
            "",
            old.root_pem(),
        )
        .expect_err("root missing from the bundle");
        assert!(err.to_string().contains("trust bundle"), "{err}");

        // An intermediate under the old root loads against the two-root bundle.
        let inter = old
            .issue_intermediate("cluster.local")
            .expect("intermediate");
        let plugged = CertificateAuthority::from_pem(
            "cluster.local",
            inter.ca_cert_pem(),
            inter.ca_key_pem(),
            "",
            &bundle,
        )
        .expect("loads");
        assert_eq!(plugged.root_pem(), old.root_pem());
    }

    #[test]
    fn plug_in_ca_with_mismatched_key_is_refused() {
        let a = CertificateAuthority::generate_root("cluster.local").expect("a");
        let b = CertificateAuthority::generate_root("cluster.local").expect("b");
        let err = CertificateAuthority::from_pem(
            "cluster.local",
            a.ca_cert_pem(),
            b.ca_key_pem(),
            "",
            a.root_pem(),
        )
        .expect_err("mismatch");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn refuses_two_sans() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().expect("uri")),
            SanType::URI("spiffe://cluster.local/ns/a/sa/c".try_into().expect("uri")),
        ];
        let pem = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let err = VerifiedCsr::from_pem(&pem).err().expect("refused");
        assert!(
            matches!(err, CsrError::Sans { uris: 2, others: 0 }),
            "{err}"
        );

        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().expect("uri")),
            SanType::DnsName("evil.example".try_into().expect("dns")),
        ];
        let pem = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let err = VerifiedCsr::from_pem(&pem).err().expect("refused");
        assert!(
            matches!(err, CsrError::Sans { uris: 1, others: 1 }),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_bad_signature() {
        let who = id("spiffe://cluster.local/ns/a/sa/b");
        let csr = new_csr(&who).expect("csr");
        let mut der = CertificateSigningRequestDer::from_pem_slice(csr.csr_pem.as_bytes())
            .expect("pem")
            .as_ref()
            .to_vec();
        // The signature is the last element: flip its final byte.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let pem = pem::Pem::new("CERTIFICATE REQUEST", der);
        let err = VerifiedCsr::from_pem(&pem::encode(&pem))
            .err()
            .expect("refused");
        assert!(matches!(err, CsrError::Invalid(_)), "{err}");
    }

    #[test]
    fn refuses_non_p256_keys_and_garbage() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().expect("uri"),
        )];
        let pem = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        assert!(matches!(
            VerifiedCsr::from_pem(&pem),
            Err(CsrError::KeyType)
        ));
        assert!(matches!(
            VerifiedCsr::from_pem("not pem at all"),
            Err(CsrError::Pem(_))
        ));
        let junk = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(VerifiedCsr::from_pem(junk).is_err());
        assert!(matches!(
            VerifiedCsr::from_pem(&"A".repeat(20_000)),
            Err(CsrError::TooLarge(_))
        ));
    }
}
