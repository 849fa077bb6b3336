//! What every part of the node agent shares: its settings, the enrolment source, the ZDS
//! hub, whether the start pass is done, and the blocking pool.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh::capture::CaptureOptions;

use crate::enrollment::{Enrollment, PodKey};
use crate::metrics::AgentMetrics;
use crate::ztunnel::Hub;

/// Where to install the plugin (both given, or no install).
#[derive(Debug, Clone)]
pub struct InstallDirs {
    /// The CNI network config directory (`*.conflist`).
    pub conf_dir: PathBuf,
    /// The CNI plugin binary directory.
    pub bin_dir: PathBuf,
}

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where ztunnel connects (ZDS).
    pub zds_socket: PathBuf,
    /// Where the plugin connects.
    pub cni_socket: PathBuf,
    /// The cluster id in workload uids (`<cluster>//v1/Pod/<ns>/<name>`).
    pub cluster_id: String,
    /// Capture options (DNS).
    pub capture: CaptureOptions,
    /// This node's name: the pods whose `spec.nodeName` it is are the agent's.
    pub node_name: String,
    /// Pause between reconcile passes.
    pub reconcile_interval: Duration,
    /// Pause between checks of enrolled pods' capture rules ([`crate::repair`]); `None`
    /// turns the checks off.
    pub rule_check_interval: Option<Duration>,
    /// Install into the CNI config, when set.
    pub install: Option<InstallDirs>,
    /// Where to serve `GET /metrics`, when set.
    pub monitoring_addr: Option<std::net::SocketAddr>,
    /// Where to serve the admin endpoint (`/logging`), when set.
    pub admin_addr: Option<std::net::SocketAddr>,
}

/// The agent's shared parts, but for the pods it manages.
pub(crate) struct NodeCtx {
    pub(crate) config: AgentConfig,
    pub(crate) enrollment: Arc<dyn Enrollment>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Arc<AgentMetrics>,
    /// The start pass read the config source (ztunnel connections are accepted from then).
    started: AtomicBool,
}

impl NodeCtx {
    /// A context that has not started yet.
    pub(crate) fn new(
        config: AgentConfig,
        enrollment: Arc<dyn Enrollment>,
        hub: Arc<Hub>,
        metrics: Arc<AgentMetrics>,
    ) -> Self {
        NodeCtx {
            config,
            enrollment,
            hub,
            metrics,
            started: AtomicBool::new(false),
        }
    }

    /// The workload uid of a pod.
    pub(crate) fn uid(&self, key: &PodKey) -> String {
        format!("{}//v1/Pod/{}/{}", self.config.cluster_id, key.0, key.1)
    }

    /// Whether the start pass has read the config source.
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// The start pass has read the config source.
    pub(crate) fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }
}

/// Runs `f` on the blocking pool.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal: {e}"))
}
