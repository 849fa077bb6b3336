//! The waypoint deployer (Kubernetes only): for each Gateway of class `istio-waypoint`, a
//! ServiceAccount, a Deployment and a Service named after it, owned by it (so deleting the
//! Gateway lets Kubernetes' garbage collector remove them), and the Gateway's status
//! (`Accepted`, `Programmed`, its address), as Istio's deployer does.
//!
//! Every object is written with server-side apply (field manager `istiod-lite`, forced), on
//! each change of the Gateways and every `resync` (so a deleted or edited Deployment comes
//! back). The root certificate is published as ConfigMap `istio-ca-root-cert` in each
//! waypoint's namespace and in the root namespace, where pods mount it, as istiod does. When a
//! Gateway disappears, its objects are deleted too (the garbage collector would, eventually).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config_source::{ClusterState, ObjectKey};
use crate::resources::waypoint::{
    DATAPLANE_MODE_LABEL, GATEWAY_NAME_LABEL, MANAGED_LABEL, MANAGED_VALUE, TUNNEL_LABEL,
    WAYPOINT_CLASS,
};
use crate::resources::Gateway;

/// The field manager of everything the deployer writes.
pub const FIELD_MANAGER: &str = "istiod-lite";
/// The ConfigMap pods mount the root certificate from (Istio's name).
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";

/// What the deployer needs to know.
#[derive(Debug, Clone)]
pub struct DeployerConfig {
    /// The waypoint container image.
    pub image: String,
    /// The control plane's address, as waypoints dial it (`https://host:port`).
    pub xds_address: String,
    /// The name in the control plane's serving certificate.
    pub control_plane_name: String,
    /// The CA in force: its trust bundle is published (and follows a root rotation within a
    /// resync).
    pub ca: crate::ca_reload::CurrentCa,
    /// The mesh's root namespace (the root certificate is published there too).
    pub root_namespace: String,
    /// The mesh's trust domain and cluster id, passed on to waypoints.
    pub trust_domain: String,
    /// How often everything is applied again, changed or not.
    pub resync: Duration,
}

/// Runs the deployer until the task is aborted.
pub fn spawn(
    client: Client,
    mut snapshots: watch::Receiver<Arc<ClusterState>>,
    config: DeployerConfig,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut deployed: BTreeSet<ObjectKey> = BTreeSet::new();
        // What each waypoint's objects were made from: made again when it changes, or on a
        // tick (which also repairs what was edited or deleted by hand).
        let mut applied: BTreeMap<ObjectKey, Value> = BTreeMap::new();
        let mut tick = tokio::time::interval(config.resync);
        let mut resync = true;
        loop {
            let state = snapshots.borrow_and_update().clone();
            let waypoints: BTreeMap<ObjectKey, Gateway> = state
                .gateways
                .iter()
                .filter(|(_, gw)| gw.spec.gateway_class_name == WAYPOINT_CLASS)
                .map(|(k, gw)| (k.clone(), gw.clone()))
                .collect();
            if resync {
                publish_roots(&client, &waypoints, &config).await;
            }
            for (key, gateway) in &waypoints {
                reconcile(&client, &state, key, gateway, &config, resync, &mut applied).await;
            }
            applied.retain(|k, _| waypoints.contains_key(k));
            for gone in deployed.iter().filter(|k| !waypoints.contains_key(*k)) {
                remove(&client, gone).await;
            }
            deployed = waypoints.keys().cloned().collect();
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    resync = false;
                }
                _ = tick.tick() => resync = true,
            }
        }
    })
}

/// The root certificate in each waypoint namespace and the root namespace.
async fn publish_roots(
    client: &Client,
    waypoints: &BTreeMap<ObjectKey, Gateway>,
    config: &DeployerConfig,
) {
    let mut namespaces: BTreeSet<&str> = waypoints.keys().map(|k| k.namespace.as_str()).collect();
    namespaces.insert(&config.root_namespace);
    for ns in namespaces {
        if let Err(e) = publish_root(client, ns, config.ca.load().bundle_pem()).await {
            tracing::warn!(namespace = %ns, error = %e, "could not publish the root certificate");
        }
    }
}

/// One waypoint: its objects (when its Gateway changed, or on a resync), then its status
/// (when it differs).
async fn reconcile(
    client: &Client,
    state: &ClusterState,
    key: &ObjectKey,
    gateway: &Gateway,
    config: &DeployerConfig,
    resync: bool,
    applied: &mut BTreeMap<ObjectKey, Value>,
) {
    // The Gateway minus its status: what the objects are made from.
    let source = json!([
        gateway.metadata.uid,
        gateway.metadata.generation,
        gateway.metadata.labels,
        gateway.spec
    ]);
    let failure = if resync || applied.get(key) != Some(&source) {
        match deploy(client, key, gateway, config).await {
            Ok(()) => {
                tracing::debug!(gateway = %key, "waypoint objects applied");
                applied.insert(key.clone(), source);
                None
            }
            Err(e) => {
                tracing::warn!(gateway = %key, error = %e, "could not deploy the waypoint");
                applied.remove(key);
                Some(format!("deploying the waypoint failed: {e}"))
            }
        }
    } else {
        None
    };
    let cluster_ip = state
        .services
        .get(key)
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None");
    let status = desired_status(key, gateway, cluster_ip, failure.as_deref());
    if !same_status(gateway, &status) {
        if let Err(e) = write_status(client, key, status).await {
            tracing::warn!(gateway = %key, error = %e, "could not write the Gateway's status");
        }
    }
}

fn owner(key: &ObjectKey, gateway: &Gateway) -> Value {
    json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": key.name,
        "uid": gateway.metadata.uid.clone().unwrap_or_default(),
        "controller": true,
    }])
}

fn labels(name: &str) -> Value {
    json!({GATEWAY_NAME_LABEL: name, MANAGED_LABEL: MANAGED_VALUE})
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The ServiceAccount, Service and Deployment of one waypoint.
pub fn objects(key: &ObjectKey, gateway: &Gateway, config: &DeployerConfig) -> [Value; 3] {
    let (ns, name) = (&key.namespace, &key.name);
    let meta = json!({"name": name, "namespace": ns, "labels": labels(name),
                      "ownerReferences": owner(key, gateway)});
    let service_account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta});
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {
            "selector": {GATEWAY_NAME_LABEL: name},
            "ports": [
                {"name": "mesh", "port": 15008, "protocol": "TCP", "targetPort": 15008},
                {"name": "status-port", "port": 15021, "protocol": "TCP", "targetPort": 15021},
            ],
        },
    });
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let env = json!([
        {"name": "POD_NAME", "valueFrom": field("metadata.name")["valueFrom"]},
        {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")["valueFrom"]},
        {"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")["valueFrom"]},
        {"name": "NODE_NAME", "valueFrom": field("spec.nodeName")["valueFrom"]},
        {"name": "INSTANCE_IP", "valueFrom": field("status.podIP")["valueFrom"]},
        {"name": "GATEWAY_NAME", "value": name},
        {"name": "TRUST_DOMAIN", "value": config.trust_domain},
        {"name": "XDS_ADDRESS", "value": config.xds_address},
        {"name": "CA_ADDRESS", "value": config.xds_address},
        {"name": "CA_SERVER_NAME", "value": config.control_plane_name},
        {"name": "CA_ROOT_CA", "value": "/var/run/secrets/istio/root-cert.pem"},
        {"name": "CA_TOKEN_FILE", "value": "/var/run/secrets/tokens/istio-token"},
    ]);
    let pod_labels = json!({
        GATEWAY_NAME_LABEL: name, MANAGED_LABEL: MANAGED_VALUE,
        DATAPLANE_MODE_LABEL: "none", TUNNEL_LABEL: "http",
    });
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
                                    "prometheus.io/path": "/metrics"},
                },
                "spec": {
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1337, "runAsGroup": 1337,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "waypoint",
                        "image": config.image,
                        "env": env,
                        "ports": [
                            {"name": "hbone", "containerPort": 15008, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
                            {"name": "status-port", "containerPort": 15021, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021},
                                           "periodSeconds": 5},
                        "resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                                      "limits": {"memory": "256Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false,
                                            "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [
                            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
                        {"name": "istiod-ca-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}},
                    ],
                },
            },
        },
    });
    [service_account, service, deployment]
}

async fn deploy(
    client: &Client,
    key: &ObjectKey,
    gateway: &Gateway,
    config: &DeployerConfig,
) -> Result<(), kube::Error> {
    let [sa, svc, deployment] = objects(key, gateway, config);
    let ns = key.namespace.as_str();
    let name = key.name.as_str();
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .patch(name, &apply_params(), &Patch::Apply(&sa))
        .await?;
    Api::<Service>::namespaced(client.clone(), ns)
        .patch(name, &apply_params(), &Patch::Apply(&svc))
        .await?;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(name, &apply_params(), &Patch::Apply(&deployment))
        .await?;
    Ok(())
}

async fn publish_root(client: &Client, namespace: &str, root_pem: &str) -> Result<(), kube::Error> {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": namespace},
                    "data": {"root-cert.pem": root_pem}});
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(ROOT_CERT_CONFIGMAP, &apply_params(), &Patch::Apply(&cm))
        .await
        .map(drop)
}

/// The Gateway's status: Accepted, and Programmed unless `failure` says why not; its address
/// (the Service's cluster IP once allocated, and its host name). A condition whose status is
/// unchanged keeps its `lastTransitionTime`.
fn desired_status(
    key: &ObjectKey,
    gateway: &Gateway,
    cluster_ip: Option<String>,
    failure: Option<&str>,
) -> Value {
    let generation = gateway.metadata.generation.unwrap_or(0);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let previous = gateway
        .status
        .as_ref()
        .map(|s| s.0.clone())
        .unwrap_or_default();
    let since = |kind: &str, status: &str| {
        previous["conditions"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == kind && c["status"] == status)
            })
            .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
            .unwrap_or_else(|| now.clone())
    };
    let condition = |kind: &str, ok: bool, reason: &str, message: &str| {
        let status = if ok { "True" } else { "False" };
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "observedGeneration": generation, "lastTransitionTime": since(kind, status)})
    };
    let mut addresses = vec![json!({"type": "Hostname",
        "value": format!("{}.{}.svc.cluster.local", key.name, key.namespace)})];
    if let Some(ip) = cluster_ip {
        addresses.insert(0, json!({"type": "IPAddress", "value": ip}));
    }
    let programmed = match failure {
        None => condition(
            "Programmed",
            true,
            "Programmed",
            "the waypoint's ServiceAccount, Deployment and Service are in place",
        ),
        Some(why) => condition("Programmed", false, "Invalid", why),
    };
    json!({
        "addresses": addresses,
        "conditions": [condition("Accepted", true, "Accepted", "resource accepted"), programmed],
    })
}

/// Whether the Gateway already has `status`.
fn same_status(gateway: &Gateway, status: &Value) -> bool {
    gateway.status.as_ref().is_some_and(|s| s.0 == *status)
}

async fn write_status(client: &Client, key: &ObjectKey, status: Value) -> Result<(), kube::Error> {
    let patch = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": key.name, "namespace": key.namespace},
        "status": status,
    });
    Api::<Gateway>::namespaced(client.clone(), &key.namespace)
        .patch_status(&key.name, &apply_params(), &Patch::Apply(&patch))
        .await
        .map(drop)
}

async fn remove(client: &Client, key: &ObjectKey) {
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    let dp = DeleteParams::background();
    let results = [
        Api::<Deployment>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(drop),
        Api::<Service>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(drop),
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(drop),
    ];
    for result in results {
        match result {
            Ok(()) | Err(kube::Error::Api(_)) => {}
            Err(e) => {
                tracing::warn!(gateway = %key, error = %e, "could not remove a waypoint object")
            }
        }
    }
    tracing::info!(gateway = %key, "waypoint removed with its Gateway");
}
