//! The node agent's Prometheus metrics (`GET /metrics` on `--monitoring-addr`) and its admin
//! endpoint (`GET|POST /logging` on `--admin-addr`, loopback).
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `cni_agent_enrolled_pods` | gauge | | pods captured and handed to ztunnel now |
//! | `cni_agent_rule_installs_total` | counter | `reason` | capture rules written into a pod (`new`: a pod enrolled by CNI ADD or a label change; `restart`: rules rewritten by the start pass; `repair`: rules found missing or changed on an enrolled pod and rewritten) |
//! | `cni_agent_rule_install_failures_total` | counter | | rule installs that failed (retried every pass) |
//! | `cni_agent_ztunnel_connected` | gauge | | 1 while the node's ztunnel is connected over ZDS |
//!
//! Rules found already in place are not counted: the counters move only when the agent wrote.

use std::sync::Arc;

use http::StatusCode;
use mesh::http_server::{Call, Handler, Reply};
use mesh::logging::LogReload;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ztunnel::Hub;

/// Why the agent wrote a pod's capture rules.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum InstallReason {
    /// A pod newly enrolled (CNI ADD, or a label change seen by a reconcile pass).
    new,
    /// The start pass of a (re)started agent.
    restart,
    /// Rules found missing or changed on an enrolled pod ([`crate::repair`]).
    repair,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: InstallReason,
}

/// The agent's metrics; shared by the CNI, reconcile and ZDS tasks.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    installs: Family<ReasonLabels, Counter>,
    install_failures: Counter,
    enrolled: Gauge,
    ztunnel_connected: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let installs = Family::<ReasonLabels, Counter>::default();
        let install_failures = Counter::default();
        let enrolled = Gauge::default();
        let ztunnel_connected = Gauge::default();
        registry.register(
            "cni_agent_enrolled_pods",
            "Pods captured and handed to ztunnel",
            enrolled.clone(),
        );
        registry.register(
            "cni_agent_rule_installs",
            "Capture rules written into a pod, by reason",
            installs.clone(),
        );
        registry.register(
            "cni_agent_rule_install_failures",
            "Capture rule installs that failed",
            install_failures.clone(),
        );
        registry.register(
            "cni_agent_ztunnel_connected",
            "1 while the node's ztunnel is connected over ZDS",
            ztunnel_connected.clone(),
        );
        AgentMetrics {
            registry,
            installs,
            install_failures,
            enrolled,
            ztunnel_connected,
        }
    }
}

impl AgentMetrics {
    /// Adds the process metrics (`process_*`, the runtime's `tokio_*`, `mesh_build_info`).
    pub fn with_process(mut self, runtime: tokio::runtime::Handle) -> Self {
        mesh::metrics::register_process(&mut self.registry, "cni-agent", &[("main", runtime)]);
        self
    }

    /// Counts rules written into a pod.
    pub fn installed(&self, reason: InstallReason) {
        self.installs.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a failed install.
    pub fn install_failed(&self) {
        self.install_failures.inc();
    }

    /// The exposition, with the gauges read from `hub` now.
    pub fn encode(&self, hub: &Hub) -> String {
        self.enrolled
            .set(i64::try_from(hub.enrolled_count()).unwrap_or(i64::MAX));
        self.ztunnel_connected
            .set(i64::from(hub.ztunnel_connected()));
        mesh::metrics::encode(&self.registry)
    }
}

/// `GET /metrics`.
pub fn metrics_handler(metrics: Arc<AgentMetrics>, hub: Arc<Hub>) -> Handler {
    Arc::new(move |call: &Call<'_>| match call.path {
        "/metrics" => Reply {
            status: StatusCode::OK,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: metrics.encode(&hub),
        },
        _ => Reply::status(StatusCode::NOT_FOUND, "GET /metrics\n"),
    })
}

/// `GET|POST /logging`.
pub fn admin_handler(reload: LogReload) -> Handler {
    Arc::new(move |call: &Call<'_>| match call.path {
        "/logging" => mesh::logging::reply(&reload, call),
        _ => Reply::status(StatusCode::NOT_FOUND, "endpoints: GET|POST /logging\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_are_counted_by_reason_and_gauges_follow_the_hub() {
        let metrics = AgentMetrics::default();
        metrics.installed(InstallReason::new);
        metrics.installed(InstallReason::new);
        metrics.installed(InstallReason::restart);
        metrics.install_failed();
        let text = metrics.encode(&Hub::default());
        for want in [
            "cni_agent_rule_installs_total{reason=\"new\"} 2",
            "cni_agent_rule_installs_total{reason=\"restart\"} 1",
            "cni_agent_rule_install_failures_total 1",
            "cni_agent_enrolled_pods 0",
            "cni_agent_ztunnel_connected 0",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
