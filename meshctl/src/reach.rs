//! How the debug verbs reach a node's ztunnel and istiod-lite: on the local cluster, inside
//! their network namespaces; on Kubernetes (`--kubeconfig`), through the API server. ztunnel's
//! admin endpoint listens on its pod's loopback (`127.0.0.1:15000`), which the pod proxy
//! cannot reach, so meshctl opens a port-forward to the pod (the portforward subresource, as
//! `kubectl port-forward` does) and speaks HTTP over it ([`crate::port_forward`]);
//! istiod-lite's `/debug/syncz` is on its monitoring port (`:15014`, all interfaces), reached
//! through the pod proxy subresource (`GET
//! /api/v1/namespaces/istio-system/pods/<pod>:15014/proxy/<path>`). The ztunnel pod is chosen
//! by `spec.nodeName` and the label `app=ztunnel`, istiod-lite's by `app=istiod`.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::admin;
use crate::cluster::plan::ZTUNNEL_ADMIN;
use crate::cluster::state::StateDir;
use crate::kube_api::{self, Target};
use crate::port_forward;

/// The namespace of the mesh's components on Kubernetes.
pub const SYSTEM_NAMESPACE: &str = "istio-system";

/// ztunnel's admin port.
const ZTUNNEL_ADMIN_PORT: u16 = 15000;

/// istiod-lite's monitoring port.
const ISTIOD_MONITORING_PORT: u16 = 15014;

/// Where the components are.
pub enum Reach {
    /// The local cluster of a state directory.
    Local(StateDir),
    /// A Kubernetes cluster.
    Kube {
        /// Runs the client's requests.
        runtime: tokio::runtime::Runtime,
        /// The API client.
        client: kube::Client,
    },
}

impl Reach {
    /// The local cluster of `state`, or the Kubernetes cluster `target` names.
    pub fn new(state: &StateDir, target: &Target) -> anyhow::Result<Reach> {
        let Some(kubeconfig) = target.kube() else {
            return Ok(Reach::Local(state.clone()));
        };
        let runtime = kube_api::runtime()?;
        let mut config = runtime.block_on(kube_api::config(kubeconfig))?;
        // A pod that does not answer makes the API server say 503; kube's default retries
        // of 503 (15, backing off for minutes) would hang the command instead of saying so.
        config.default_retry = false;
        let client = {
            // The client spawns its buffer task on the runtime.
            let _inside = runtime.enter();
            kube::Client::try_from(config)?
        };
        Ok(Reach::Kube { runtime, client })
    }

    /// `GET path` (JSON) from the admin endpoint of the ztunnel on `node`.
    pub fn ztunnel_admin(&self, node: &str, path: &str) -> anyhow::Result<Value> {
        match self {
            Reach::Local(state) => {
                let cluster = state
                    .load()
                    .context("no local cluster here (start one with `meshctl cluster up`)")?;
                let plan = cluster.node(node).with_context(|| {
                    format!("no node {node:?}: see `meshctl cluster status` for the nodes")
                })?;
                admin::get_json(
                    &plan.netns,
                    SocketAddr::V4(ZTUNNEL_ADMIN),
                    path,
                    &format!("ztunnel on {node}"),
                )
                .with_context(|| {
                    format!("is ztunnel-{node} running? `meshctl cluster start ztunnel-{node}`")
                })
            }
            Reach::Kube { runtime, client } => runtime.block_on(async {
                let pod = pod_of(
                    client,
                    "app=ztunnel",
                    Some(node),
                    &format!(
                        "no ztunnel pod on node {node:?}: see `kubectl get pods -n {SYSTEM_NAMESPACE} -l app=ztunnel -o wide` for the nodes"
                    ),
                )
                .await?;
                port_forward::get_json(client, SYSTEM_NAMESPACE, &pod, ZTUNNEL_ADMIN_PORT, path)
                    .await
            }),
        }
    }

    /// `GET path` (JSON) from istiod-lite's monitoring port.
    pub fn istiod(&self, path: &str) -> anyhow::Result<Value> {
        match self {
            Reach::Local(state) => {
                let cluster = state
                    .load()
                    .context("no local cluster here (start one with `meshctl cluster up`)")?;
                let node = cluster.control_node()?;
                admin::get_json(
                    &node.netns,
                    SocketAddr::V4(cluster.istiod_monitoring_addr),
                    path,
                    "istiod-lite",
                )
                .context("is istiod-lite running? `meshctl cluster start istiod`")
            }
            Reach::Kube { runtime, client } => runtime.block_on(async {
                let pod = pod_of(
                    client,
                    "app=istiod",
                    None,
                    &format!(
                        "no istiod pod in {SYSTEM_NAMESPACE} (is the mesh installed? `meshctl install --kubeconfig`)"
                    ),
                )
                .await?;
                proxy_get(client, &pod, ISTIOD_MONITORING_PORT, path).await
            }),
        }
    }
}

/// The name of a running pod in the system namespace with `labels` (on `node` if given).
async fn pod_of(
    client: &kube::Client,
    labels: &str,
    node: Option<&str>,
    missing: &str,
) -> anyhow::Result<String> {
    let mut params = ListParams::default().labels(labels);
    if let Some(node) = node {
        params = params.fields(&format!("spec.nodeName={node}"));
    }
    let pods = Api::<Pod>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .list(&params)
        .await
        .with_context(|| format!("listing pods {labels} in {SYSTEM_NAMESPACE}"))?;
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let pick = pods
        .items
        .iter()
        .find(|p| running(p))
        .or_else(|| pods.items.first());
    match pick.and_then(|p| p.metadata.name.clone()) {
        Some(name) => Ok(name),
        None => bail!("{missing}"),
    }
}

/// `GET path` through the pod proxy subresource, as JSON.
async fn proxy_get(
    client: &kube::Client,
    pod: &str,
    port: u16,
    path: &str,
) -> anyhow::Result<Value> {
    let url = format!("/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods/{pod}:{port}/proxy{path}");
    let request = http::Request::get(&url).body(Vec::new())?;
    let text = client.request_text(request).await.with_context(|| {
        format!("GET {path} of pod {SYSTEM_NAMESPACE}/{pod} port {port} through the API server")
    })?;
    serde_json::from_str(&text).with_context(|| format!("{pod}: {path} is not JSON"))
}
