//! In-pod mode: pods arrive over ZDS from the CNI agent, each with its network namespace.
//!
//! We connect to the agent (retrying with backoff), say hello, and serve each `add` by
//! starting a [`PodProxy`] in the handed-over namespace. After `snapshot_sent`, pods that were
//! not re-announced on this connection are stopped. A lost connection keeps every running pod
//! proxy: the agent re-announces them when we reconnect.
//!
//! Stopping a pod (`del`, missing from a snapshot, a new namespace for the same uid) drops its
//! [`PodProxy`]: the listeners close at once and its live connections drain for
//! `--pod-drain-secs`, then are closed. An `add` of the same pod (uid and namespace) before
//! then starts a new proxy that keeps them (see [`crate::proxy::live`]).
//!
//! The link is opened only once the xDS config is synced, so a ztunnel that takes pods over
//! from a running one (an upgrade: its listeners join the old ones' `SO_REUSEPORT` groups)
//! routes its first connection as well as the old one would. After the first snapshot is
//! applied it logs `ztunnel ready` with its pid, and `/healthz/ready` answers 200. On shutdown
//! ([`Pods::stop_all`]) every pod proxy stops accepting and its connections drain (see
//! [`crate::shutdown`]).
//!
//! Each served pod holds a [`CertLease`] on its identity: when the last pod of an identity
//! stops, that identity's certificate renewal stops after `--cert-release-grace-secs` (a pod of
//! the same identity added within it keeps the certificate). A stopped pod accepts no new
//! connections, and its open TLS sessions do not need the certificate again.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::cert_manager::CertLease;
use mesh::xds::XdsStatus;
use mesh::zds::{Request, ZdsClient, ZdsError};
use mesh::Identity;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::Serialize;
use tokio::sync::watch;

use crate::netns::Netns;
use crate::proxy::live::LiveConnections;
use crate::proxy::{PodContext, PodProxy, ProxyInputs};

/// The pods this ztunnel serves, by uid.
#[derive(Default)]
pub struct Pods {
    running: Mutex<BTreeMap<String, Served>>,
    /// A snapshot of the agent's pods has been applied (readiness).
    snapshot_applied: AtomicBool,
    /// ztunnel is stopping: every proxy was stopped and no pod is taken any more.
    stopping: AtomicBool,
}

/// A running pod proxy and the lease that keeps its identity's certificate renewed. Fields
/// drop in order: the proxy stops before the lease goes.
struct Served {
    proxy: PodProxy,
    _cert: CertLease,
}

/// One served pod, for `/config_dump`.
#[derive(Debug, Serialize)]
pub struct PodDump {
    /// Workload uid.
    pub uid: String,
    /// Identity the pod's traffic carries.
    pub identity: String,
    /// Inode of the pod's network namespace.
    pub netns_inode: u64,
}

impl Pods {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Served>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The served pods.
    pub fn dump(&self) -> Vec<PodDump> {
        self.lock()
            .values()
            .map(|Served { proxy: p, .. }| PodDump {
                uid: p.pod().uid.to_string(),
                identity: p.pod().identity.to_string(),
                netns_inode: p.pod().netns.inode(),
            })
            .collect()
    }

    /// How many pods are served.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no pod is served.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Whether a whole snapshot of the agent's pods has been applied since start.
    pub fn snapshot_applied(&self) -> bool {
        self.snapshot_applied.load(Ordering::Acquire)
    }

    /// Whether ztunnel is stopping ([`Pods::stop_all`] ran).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Stops every pod proxy for ztunnel's shutdown: listeners close, inbound HBONE
    /// connections get GOAWAY, live connections go on until the shutdown closes them. No pod
    /// is taken afterwards. Returns how many pods were served.
    pub fn stop_all(&self) -> usize {
        self.stopping.store(true, Ordering::Release);
        let all = std::mem::take(&mut *self.lock());
        let n = all.len();
        for (_, Served { proxy, _cert: cert }) in all {
            proxy.stop_for_shutdown();
            drop(cert);
        }
        n
    }
}

/// First wait before reconnecting to the CNI agent.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait: the agent refuses new pods until ztunnel has re-linked (they would have no
/// proxy), and a failed connect to a unix socket costs nothing, so a restarted agent is found
/// within a second.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Runs the ZDS link forever, once the xDS config is synced: connect, serve, reconnect.
pub async fn run(
    inputs: ProxyInputs,
    pods: Arc<Pods>,
    socket: PathBuf,
    mut xds: watch::Receiver<XdsStatus>,
) {
    if !xds.borrow().is_synced() {
        tracing::info!("waiting for the xDS config before taking pods");
        // An error: the xDS client is gone, which only happens at shutdown.
        let _ = xds.wait_for(XdsStatus::is_synced).await;
    }
    let mut backoff = RECONNECT_BACKOFF_MIN;
    loop {
        match ZdsClient::connect(&socket).await {
            Ok(client) => {
                tracing::info!(socket = %socket.display(), "connected to the CNI agent");
                backoff = RECONNECT_BACKOFF_MIN;
                if let Err(e) = serve(&inputs, &pods, &client).await {
                    tracing::warn!(error = %e, "CNI agent link lost; pods keep running, reconnecting");
                }
            }
            Err(e) => {
                tracing::debug!(socket = %socket.display(), error = %e, retry_ms = backoff.as_millis() as u64, "CNI agent not reachable yet");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

async fn serve(inputs: &ProxyInputs, pods: &Pods, client: &ZdsClient) -> Result<(), ZdsError> {
    let mut announced: HashSet<String> = HashSet::new();
    loop {
        let request = match client.next().await {
            Ok(r) => r,
            Err(ZdsError::Io(e)) => return Err(ZdsError::Io(e)),
            Err(e) => {
                // Already answered with an error ack; the link stays up.
                tracing::warn!(error = %e, "bad ZDS message refused");
                continue;
            }
        };
        let result = match request {
            Request::Add { uid, info, netns } => {
                announced.insert(uid.clone());
                add(inputs, pods, uid, info, netns)
            }
            Request::Keep { uid } => {
                announced.insert(uid.clone());
                if pods.lock().contains_key(&uid) {
                    Ok(())
                } else {
                    Err(format!("keep for unknown pod {uid}"))
                }
            }
            Request::Del { uid } => {
                announced.remove(&uid);
                if pods.lock().remove(&uid).is_none() {
                    tracing::debug!(%uid, "del for a pod not served");
                }
                Ok(())
            }
            Request::SnapshotSent => {
                let mut running = pods.lock();
                let stale: Vec<String> = running
                    .keys()
                    .filter(|uid| !announced.contains(*uid))
                    .cloned()
                    .collect();
                for uid in stale {
                    tracing::info!(%uid, "pod not in the agent's snapshot; stopping it");
                    running.remove(&uid);
                }
                let served = running.len();
                drop(running);
                if !pods.snapshot_applied.swap(true, Ordering::AcqRel) {
                    tracing::info!(
                        pid = std::process::id(),
                        pods = served,
                        "ztunnel ready: xDS synced and every pod of the agent's snapshot served"
                    );
                }
                Ok(())
            }
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "ZDS request failed");
        }
        client.ack(result).await?;
    }
}

fn add(
    inputs: &ProxyInputs,
    pods: &Pods,
    uid: String,
    info: Option<proto::zds::WorkloadInfo>,
    netns: std::os::fd::OwnedFd,
) -> Result<(), String> {
    if pods.stopping() {
        return Err("ztunnel is stopping".into());
    }
    let netns = Netns::from_fd(netns).map_err(|e| format!("bad network namespace fd: {e}"))?;
    let identity = identity_for(inputs, &uid, info.as_ref())?;
    if let Some(existing) = pods.lock().get(&uid) {
        if existing.proxy.pod().netns.inode() == netns.inode() {
            // Re-announced after a reconnect: already serving it.
            return Ok(());
        }
    }
    // Leased before the replaced proxy (if any) drops its own: an identity that stays is
    // never released.
    let cert = inputs.certs.lease(&identity);
    let uid_shared: Arc<str> = uid.as_str().into();
    let pod = PodContext {
        metrics: inputs.telemetry.pod(&uid, info.as_ref()),
        cap: inputs.limits.pod_cap(&uid_shared),
        uid: uid_shared,
        identity,
        netns,
        sockets: inputs.sockets.clone(),
    };
    let proxy = PodProxy::start(inputs, pod)
        .map_err(|e| format!("cannot open listeners in the pod's namespace: {e}"))?;
    let replaced = pods.lock().insert(uid, Served { proxy, _cert: cert });
    // Stopped outside the lock: stopping drains the pod's connections.
    drop(replaced);
    Ok(())
}

/// The pod's identity: from the control plane's workload if known, else from the agent's info.
fn identity_for(
    inputs: &ProxyInputs,
    uid: &str,
    info: Option<&proto::zds::WorkloadInfo>,
) -> Result<Identity, String> {
    if let Some(w) = inputs.store.workload(uid) {
        return Ok(w.identity.clone());
    }
    let info = info.ok_or_else(|| {
        format!("pod {uid} is unknown to the control plane and the agent sent no workload info")
    })?;
    let sa = if info.service_account.is_empty() {
        "default"
    } else {
        &info.service_account
    };
    Identity::new(&inputs.config.trust_domain, &info.namespace, sa).map_err(|e| e.to_string())
}

/// `ztunnel_pods{state}`: pods served, and removed pods whose connections are draining.
pub struct PodStates {
    /// The pods served.
    pub pods: Arc<Pods>,
    /// Live connections, which know the draining pods.
    pub live: Arc<LiveConnections>,
}

impl std::fmt::Debug for PodStates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodStates").finish_non_exhaustive()
    }
}

impl Collector for PodStates {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let serving = self.pods.len();
        let draining = self.live.draining().len();
        let mut family = encoder.encode_descriptor(
            "ztunnel_pods",
            "Pods served by this ztunnel (serving), and removed pods whose connections drain (draining)",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in [("serving", serving), ("draining", draining)] {
            ConstGauge::new(n as i64).encode(family.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}
