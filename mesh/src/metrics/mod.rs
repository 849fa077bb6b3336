//! Prometheus metrics shared by the mesh's processes (prometheus-client; see
//! `docs/observability.md` for why this crate and not `metrics`).
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `process_cpu_seconds_total` | counter | | user + system CPU time of the process |
//! | `process_resident_memory_bytes` | gauge | | resident set size |
//! | `process_virtual_memory_bytes` | gauge | | virtual memory size |
//! | `process_open_fds` | gauge | | open file descriptors |
//! | `process_max_fds` | gauge | | soft limit on open file descriptors |
//! | `process_start_time_seconds` | gauge | | start time, unix seconds |
//! | `process_threads` | gauge | | OS threads |
//! | `tokio_workers` | gauge | `runtime` | worker threads of the runtime |
//! | `tokio_worker_busy_seconds_total` | counter | `runtime` | time its workers spent polling tasks, summed |
//! | `tokio_alive_tasks` | gauge | `runtime` | tasks alive in the runtime |
//! | `mesh_build_info` | gauge | `component`, `version` | always 1 |
//! | `mesh_accept_errors_total` | counter | `listener`, `reason` | failed accepts: `fd_limit` (out of file descriptors; queued connections are reset) or `other` (the listener's own errors; a connection the client aborted before it was taken is retried at once and not counted) ([`crate::limits`]) |
//! | `mesh_accept_shed_total` | counter | `listener` | connections reset while queued because the process was out of file descriptors ([`crate::limits`]) |
//! | `mesh_xds_connected` | gauge | | 1 while the delta ADS stream is up |
//! | `mesh_xds_reconnects_total` | counter | | retries after the stream ended or an attempt failed |
//! | `mesh_xds_messages_total` | counter | `type` | responses received |
//! | `mesh_xds_acks_total` | counter | `type` | responses applied and ACKed |
//! | `mesh_xds_nacks_total` | counter | `type` | responses rejected |
//! | `mesh_xds_last_ack_timestamp_seconds` | gauge | | unix time of the last ACK, 0 if never |
//! | `mesh_xds_last_nack_timestamp_seconds` | gauge | | unix time of the last NACK, 0 if never |
//! | `mesh_xds_apply_seconds` | histogram | `type` | response received → applied to the store |
//! | `mesh_certificates` | gauge | `state` | identities with a valid certificate renewed on schedule (`available`), a valid one whose last renewal failed and that is served until its `not_after` (`refresh_failing`), or none valid (`pending`) |
//! | `mesh_certificate_expiration_timestamp_seconds` | gauge | `identity` | when the identity's certificate expires, unix seconds |
//! | `mesh_certificate_seconds_to_expiry` | gauge | `identity` | seconds until the identity's certificate expires |
//! | `mesh_certificate_refresh_failures` | gauge | `identity` | certificate requests that failed in a row since the last success (0 when healthy) |
//! | `mesh_certificate_rotations_total` | counter | | certificates renewed (replacing an identity's previous one) |
//! | `mesh_certificate_requests_failed_total` | counter | `reason` | CA requests that failed: `unavailable`, `refused`, `bad_response` |
//! | `istio_tcp_connections_opened_total` | counter | Istio's TCP labels | connections opened ([`tcp`]) |
//! | `istio_tcp_connections_closed_total` | counter | Istio's TCP labels | connections closed |
//! | `istio_tcp_sent_bytes_total` | counter | Istio's TCP labels | bytes server → client |
//! | `istio_tcp_received_bytes_total` | counter | Istio's TCP labels | bytes client → server |
//!
//! `runtime` is `data`, `control`, or `main` for a process with one runtime. `type` is
//! `address`, `authorization`, `l7_policy`, `request_authn`, `routes` (or `unknown`).
//!
//! A binary calls [`register_process`] once, then [`register_xds`] and
//! [`register_certificates`] if it runs those clients. Everything read at scrape time
//! (`process_*`, `tokio_*`, certificates held) costs nothing between scrapes.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub mod process;
pub mod runtime;
pub mod tcp;
pub mod xds;

pub use crate::cert_manager::metrics::CertMetrics;
pub use process::ProcessCollector;
pub use runtime::RuntimeCollector;
pub use tcp::{
    set_label, share_label, Label, Reporter, SecurityPolicy, TcpLabels, TcpMetrics, TcpSeries,
};
pub use xds::XdsMetrics;

/// The mesh's version, as `mesh_build_info` reports it (one version for the workspace).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Registers what every process exports: `process_*`, `tokio_*` for each named runtime, and
/// `mesh_build_info{component}`.
///
/// ```
/// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
/// let mut registry = prometheus_client::registry::Registry::default();
/// mesh::metrics::register_process(&mut registry, "cni-agent", &[("main", runtime.handle().clone())]);
/// let text = mesh::metrics::encode(&registry);
/// assert!(text.contains("mesh_build_info{component=\"cni-agent\""));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn register_process(
    registry: &mut Registry,
    component: &str,
    runtimes: &[(&str, tokio::runtime::Handle)],
) {
    registry.register_collector(Box::new(ProcessCollector::default()));
    registry.register_collector(Box::new(RuntimeCollector::new(
        runtimes.iter().map(|(name, h)| (*name, h.clone())),
    )));
    let info = Family::<[(&'static str, String); 2], Gauge>::default();
    info.get_or_create(&[
        ("component", component.to_string()),
        ("version", VERSION.to_string()),
    ])
    .set(1);
    registry.register(
        "mesh_build_info",
        "The component and its version; always 1",
        info,
    );
}

/// Registers the xDS client's metrics (`mesh_xds_*`); get them from
/// [`crate::xds::XdsClient::metrics`] before running the client.
pub fn register_xds(registry: &mut Registry, metrics: &XdsMetrics) {
    metrics.register(registry);
}

/// Registers the certificate manager's metrics (`mesh_certificate*`; they live with the
/// manager, in [`crate::cert_manager::metrics`]).
pub use crate::cert_manager::metrics::register as register_certificates;

/// Encodes a registry in the OpenMetrics text format (what Prometheus asks for first; it also
/// reads it as the classic text format), ending with `# EOF`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_process_exports_build_info_process_and_runtime_metrics() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut registry = Registry::default();
        register_process(
            &mut registry,
            "ztunnel",
            &[("main", runtime.handle().clone())],
        );
        let text = encode(&registry);
        let info = format!("mesh_build_info{{component=\"ztunnel\",version=\"{VERSION}\"}} 1");
        assert!(text.contains(&info), "{info} missing:\n{text}");
        assert!(text.contains("tokio_workers{runtime=\"main\"} 1"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
