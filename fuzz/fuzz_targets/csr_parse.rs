//! Certificate signing requests as the CA receives them: PEM text from any caller.
//!
//! The input is tried twice: as PEM text (when it is UTF-8), and as the DER body of a PEM
//! `CERTIFICATE REQUEST` block, so mutations reach the ASN.1 parser and not only the PEM
//! decoder. Never panics; a CSR that passes is signed by a fixed test CA, and the leaf it gets
//! names the identity the CSR asked for.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mesh::ca::{CertificateAuthority, VerifiedCsr, DEFAULT_CERT_TTL};
use mesh::cert::{identity_of, parse_pem_certs};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        CertificateAuthority::generate_root("cluster.local").expect("test root generates")
    })
}

fn check(pem: &str) {
    let Ok(csr) = VerifiedCsr::from_pem(pem) else {
        return;
    };
    let chain = ca()
        .sign(&csr, DEFAULT_CERT_TTL)
        .expect("a verified CSR can be signed");
    let leaf = parse_pem_certs(&chain[0]).expect("the CA emits PEM it can read back");
    let issued = identity_of(&leaf[0]).expect("the leaf carries one SPIFFE SAN");
    assert_eq!(
        &issued,
        csr.identity(),
        "the leaf names what the CSR asked for"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    let block = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", data.to_vec()));
    check(&block);
});
