//! The shared library of the mesh.
//!
//! - [`identity`]: SPIFFE workload identities.
//! - [`cert`], [`ca`]: workload certificates, CSRs and the CA's signing core.
//! - [`tls`]: rustls configs for mutual TLS between workloads; [`crypto`]: the crypto provider.
//! - [`cert_manager`]: per-identity certificates fetched from the CA and renewed at half-life.
//! - [`hbone`]: the HBONE tunnel (HTTP/2 CONNECT over mutual TLS), client pool and server.
//! - [`capture`]: the in-pod traffic capture rules (iptables and policy routing).
//! - [`zds`]: the CNI agent ↔ ztunnel link that hands over pod network namespaces.
//! - [`metrics`]: Prometheus metrics: Istio-compatible `istio_tcp_*`, `process_*`, `tokio_*`,
//!   and the xDS client's and certificate manager's `mesh_*`.
//! - [`logging`]: every daemon's log set-up, JSON line schema and run-time filter (`/logging`).
//! - [`http_server`]: the small HTTP server behind admin, metrics and readiness ports.
//! - [`runtime`]: a proxy's control and data-plane tokio runtimes.
//! - [`copy`]: bidirectional byte copying: half-close on a clean end, abort on an error.
//! - [`tcp_congestion`]: the congestion control of a socket, checked once at start.
//! - [`tcp_keepalive`]: TCP keepalive on proxied sockets.
//! - [`limits`]: the open-file limit raised at start; an accept loop that survives running out of
//!   file descriptors (counted, logged, shed with a reset, backed off).
//! - [`model`]: typed workloads, services and L4 authorization policies, converted from/to proto.
//! - [`store`]: the in-memory config store the proxy reads (by uid, IP, VIP, host name).
//! - [`rbac`]: L4 authorization: a connection's verdict under the policies in scope (pure).
//! - [`l7authz`]: L7 authorization and JWT authentication at the waypoint (pure).
//! - [`xds`]: the delta ADS client that keeps the store in sync with the control plane.
//!
//! Everything here is async on tokio and free of process-wide state other than the crypto
//! provider choice and, when a daemon calls [`logging::init`], its log subscriber.

pub mod ca;
pub mod ca_client;
pub mod capture;
pub mod cert;
pub mod cert_manager;
pub mod copy;
pub mod crypto;
pub mod hbone;
pub mod http_server;
pub mod identity;
pub mod l7authz;
pub mod limits;
pub mod logging;
pub mod memmove;
pub mod metrics;
pub mod model;
pub mod rbac;
pub mod runtime;
pub mod store;
pub mod tcp_congestion;
pub mod tcp_keepalive;
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::expect_used, missing_docs)]
pub mod testing;
pub mod tls;
pub mod xds;
pub mod zds;

pub use identity::Identity;
