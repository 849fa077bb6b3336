//! The shared library of the mesh.
//!
//! - [`identity`]: SPIFFE workload identities.
//! - [`cert`], [`ca`]: workload certificates, CSRs and the CA's signing core.
//! - [`tls`]: rustls configs for mutual TLS between workloads.
//! - [`cert_manager`]: per-identity certificates fetched from the CA and renewed at half-life.
//! - [`hbone`]: the HBONE tunnel (HTTP/2 CONNECT over mutual TLS), client pool and server.
//! - [`copy`]: bidirectional byte copying with half-close and growing buffers.
//!
//! Everything here is async on tokio and free of process-wide state other than the crypto
//! provider choice.

pub mod ca;
pub mod ca_client;
pub mod cert;
pub mod cert_manager;
pub mod copy;
pub mod hbone;
pub mod identity;
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::expect_used, missing_docs)]
pub mod testing;
pub mod tls;

pub use identity::Identity;
