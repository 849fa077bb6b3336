//! The one rustls crypto provider every TLS and key operation of the mesh uses, chosen at build
//! time (ring: on the CPUs measured so far its AES-GCM is the faster one).

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// [`provider`] with its TLS 1.3 cipher suites only, for workload-to-workload TLS (HBONE),
/// which speaks nothing older: a ClientHello offers no suite the handshake could never use.
/// istiod-lite's serving side keeps [`provider`] (it serves TLS 1.2 clients too).
pub fn tls13_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = (*provider()).clone();
            p.cipher_suites
                .retain(|s| s.version() == &rustls::version::TLS13);
            Arc::new(p)
        })
        .clone()
}
