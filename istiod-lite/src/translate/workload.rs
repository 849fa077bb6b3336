//! Pods → workloads.
//!
//! Every pod with an IP becomes a workload, enrolled or not, so node tunnels know the
//! non-mesh pods they talk to as well. Skipped: pods in phase Succeeded or Failed, pods
//! without `status.podIP(s)` (not started yet). Host-network pods are kept with
//! `network_mode: HOST_NETWORK` (never looked up by IP, never tunnelled).
//!
//! - enrolled (tunnel HBONE, else NONE): pod label `istio.io/dataplane-mode=ambient`, or the
//!   namespace's label `istio.io/dataplane-mode=ambient` unless the pod says `none`; a pod
//!   labelled `networking.istio.io/tunnel=http` (a waypoint) terminates HBONE itself: tunnel
//!   HBONE and `native_tunnel`;
//! - uid `<cluster_id>//v1/Pod/<ns>/<name>`; addresses from `status.podIPs` (else `podIP`);
//!   identity from the trust domain, namespace and `spec.serviceAccountName` (`default`);
//!   node `spec.nodeName`; cluster id and network from the options;
//! - canonical name: label `service.istio.io/canonical-name`, `app.kubernetes.io/name`,
//!   `app`, else the workload name; canonical revision: `service.istio.io/canonical-revision`,
//!   `app.kubernetes.io/version`, `version`, else `latest`;
//! - workload name and type from the controlling owner: a ReplicaSet's pods belong to its
//!   Deployment (the ReplicaSet name without the pod-template-hash suffix), a Job's to the Job
//!   or, when the Job is named `<cronjob>-<8 to 10 digits>`, to the CronJob; other owners
//!   (StatefulSet, DaemonSet, ...) give their name with type POD; no owner: the pod itself;
//! - status HEALTHY when Running, not being deleted, and (if it has conditions) Ready=True;
//! - services: every Service of the pod's namespace whose EndpointSlices list the pod, when
//!   it has no selector; otherwise every one with a non-empty selector matching the
//!   pod's labels, with ports resolved for this pod ([`super::service::workload_ports`]);
//! - authorization_policies: the WORKLOAD_SELECTOR policies of its namespace, and of the root
//!   namespace, whose selector matches the pod's labels, then the policy its
//!   PeerAuthentications give it, if any ([`super::peer_authentication`]);
//! - waypoint: see [`super::waypoint`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use mesh::model::{HealthStatus, NetworkMode, TunnelProtocol, Workload, WorkloadType};
use mesh::Identity;

use super::peer_authentication::PeerAuthentications;
use super::policy::TranslatedPolicy;
use super::service::{is_translated, workload_ports};
use super::waypoint::{waypoint_for, Attachment};
use super::{labels, service_hostname, TranslateOptions, Warnings, DATAPLANE_MODE_LABEL};
use crate::config_source::{ClusterState, ObjectKey};

/// Label carrying the hash that a Deployment's ReplicaSet appends to its name.
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Pod label saying the pod terminates HBONE itself (value `http`), as waypoints do.
pub const TUNNEL_LABEL: &str = "networking.istio.io/tunnel";

/// The workloads of the snapshot, sorted by uid.
pub(crate) fn workloads(
    state: &ClusterState,
    options: &TranslateOptions,
    policies: &[TranslatedPolicy],
    peer_auth: &PeerAuthentications,
    warnings: &mut Warnings,
) -> Vec<Workload> {
    let mut out: Vec<Workload> = state
        .pods
        .iter()
        .filter_map(|(key, pod)| workload(state, options, policies, peer_auth, key, pod, warnings))
        .collect();
    out.sort_by(|a, b| a.uid.cmp(&b.uid));
    out
}

/// Whether the pod is enrolled in the mesh (its own label wins over its namespace's).
pub fn enrolled(
    pod_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> bool {
    match pod_labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
        Some("ambient") => true,
        Some("none") => false,
        _ => {
            namespace_labels
                .get(DATAPLANE_MODE_LABEL)
                .map(String::as_str)
                == Some("ambient")
        }
    }
}

/// The pod's IP addresses, as `status.podIPs` (else `status.podIP`) lists them, unparsed.
/// Whether an EndpointSlice of Service `svc` (label `kubernetes.io/service-name`, same
/// namespace) lists pod `pod_name`, by its `targetRef` or one of its addresses.
fn listed_in_slices(state: &ClusterState, svc: &ObjectKey, pod_name: &str, ips: &[&str]) -> bool {
    state
        .endpoint_slices
        .range(ObjectKey::new(svc.namespace.as_str(), "")..)
        .take_while(|(k, _)| k.namespace == svc.namespace)
        .filter(|(_, slice)| {
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                == Some(&svc.name)
        })
        .flat_map(|(_, slice)| slice.endpoints.iter().flatten())
        .any(|endpoint| {
            let by_ref = endpoint.target_ref.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Pod") && r.name.as_deref() == Some(pod_name)
            });
            by_ref || endpoint.addresses.iter().any(|a| ips.contains(&a.as_str()))
        })
}

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(crate) fn pod_ips(pod: &Pod) -> Vec<&str> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .filter(|ip| !ip.is_empty())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    status
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .into_iter()
        .collect()
}

/// Whether the pod has finished (phase Succeeded or Failed).
pub(crate) fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn workload(
    state: &ClusterState,
    options: &TranslateOptions,
    policies: &[TranslatedPolicy],
    peer_auth: &PeerAuthentications,
    key: &ObjectKey,
    pod: &Pod,
    warnings: &mut Warnings,
) -> Option<Workload> {
    if finished(pod) {
        return None;
    }
    let object = format!("Pod {key}");
    let ips = pod_ips(pod);
    if ips.is_empty() {
        return None; // not started yet
    }
    let mut addresses = Vec::new();
    for ip in ips {
        match ip.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => warnings.add(
                &object,
                format!("pod IP {ip:?} is not an IP address; skipped"),
            ),
        }
    }
    if addresses.is_empty() {
        warnings.add(&object, "no usable pod IP; the pod is left out");
        return None;
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let service_account = spec
        .service_account_name
        .clone()
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| mesh::model::DEFAULT_SERVICE_ACCOUNT.to_string());
    let identity = match Identity::new(
        options.trust_domain.as_str(),
        key.namespace.as_str(),
        service_account,
    ) {
        Ok(identity) => identity,
        Err(e) => {
            warnings.add(
                &object,
                format!("no valid identity ({e}); the pod is left out"),
            );
            return None;
        }
    };
    let pod_labels = labels(&pod.metadata);
    let host_network = spec.host_network == Some(true);
    let native_tunnel = pod_labels.get(TUNNEL_LABEL).is_some_and(|v| v == "http");
    let tunnel_protocol = if !host_network
        && (native_tunnel || enrolled(pod_labels, state.namespace_labels(&key.namespace)))
    {
        TunnelProtocol::Hbone
    } else {
        TunnelProtocol::None
    };
    let (workload_name, workload_type) = workload_name_and_type(pod, &key.name);
    let (canonical_name, canonical_revision) = canonical(pod_labels, &workload_name);

    let mut services = BTreeMap::new();
    for (svc_key, svc) in state
        .services
        .range(ObjectKey::new(key.namespace.as_str(), "")..)
    {
        if svc_key.namespace != key.namespace {
            break;
        }
        let selector = svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .filter(|sel| !sel.is_empty());
        let selects = match selector {
            Some(sel) => sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            // No selector: its endpoints are whatever its EndpointSlices list.
            None => listed_in_slices(state, svc_key, &key.name, &pod_ips(pod)),
        };
        if selects && is_translated(svc) {
            let hostname = service_hostname(&svc_key.name, &svc_key.namespace, options);
            services.insert(
                mesh::model::service_key(&svc_key.namespace, &hostname),
                workload_ports(svc, pod),
            );
        }
    }

    let authorization_policies = policies
        .iter()
        .filter(|p| {
            let ns = &p.policy.namespace;
            (*ns == key.namespace || *ns == options.root_namespace)
                && p.selector.as_ref().is_some_and(|s| s.matches(pod_labels))
        })
        .map(|p| p.policy.key())
        .chain(peer_auth.attached(&key.namespace, pod_labels))
        .collect();

    Some(Workload {
        uid: format!(
            "{}//v1/Pod/{}/{}",
            options.cluster_id, key.namespace, key.name
        ),
        name: key.name.clone(),
        addresses,
        hostname: String::new(),
        network: options.network.clone(),
        tunnel_protocol,
        identity,
        waypoint: waypoint_for(
            state,
            options,
            Attachment::Workload,
            &object,
            &key.namespace,
            pod_labels,
            warnings,
        ),
        network_gateway: None,
        node: spec.node_name.clone().unwrap_or_default(),
        canonical_name,
        canonical_revision,
        workload_type,
        workload_name,
        native_tunnel: native_tunnel && !host_network,
        application_tunnel: None,
        services,
        authorization_policies,
        status: health(pod),
        cluster_id: options.cluster_id.clone(),
        locality: None,
        network_mode: if host_network {
            NetworkMode::HostNetwork
        } else {
            NetworkMode::Standard
        },
        capacity: 1,
    })
}

/// HEALTHY when Running, not being deleted, and Ready=True if the pod has conditions.
fn health(pod: &Pod) -> HealthStatus {
    let Some(status) = pod.status.as_ref() else {
        return HealthStatus::Unhealthy;
    };
    let running = status.phase.as_deref() == Some("Running");
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let ready = match status.conditions.as_deref() {
        None | Some([]) => true,
        Some(conditions) => conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
    };
    if running && !deleting && ready {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unhealthy
    }
}

/// The controller the pod belongs to, and its kind.
fn workload_name_and_type(pod: &Pod, pod_name: &str) -> (String, WorkloadType) {
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    let Some(owner) = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
    else {
        return (pod_name.to_string(), WorkloadType::Pod);
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = labels(&pod.metadata).get(POD_TEMPLATE_HASH_LABEL);
            let deployment = match hash {
                Some(hash) => owner.name.strip_suffix(&format!("-{hash}")),
                None => owner
                    .name
                    .rsplit_once('-')
                    .filter(|(_, suffix)| looks_like_template_hash(suffix))
                    .map(|(name, _)| name),
            };
            match deployment {
                Some(name) if !name.is_empty() => (name.to_string(), WorkloadType::Deployment),
                _ => (owner.name.clone(), WorkloadType::Pod),
            }
        }
        "Job" => match owner.name.rsplit_once('-') {
            Some((cronjob, stamp))
                if !cronjob.is_empty()
                    && (8..=10).contains(&stamp.len())
                    && stamp.bytes().all(|b| b.is_ascii_digit()) =>
            {
                (cronjob.to_string(), WorkloadType::Cronjob)
            }
            _ => (owner.name.clone(), WorkloadType::Job),
        },
        _ => (owner.name.clone(), WorkloadType::Pod),
    }
}

/// Whether `s` could be a pod-template-hash: Kubernetes' safe alphabet, at most 10 long.
fn looks_like_template_hash(s: &str) -> bool {
    (1..=10).contains(&s.len())
        && s.bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// Canonical service name and revision from the usual labels.
fn canonical(pod_labels: &BTreeMap<String, String>, workload_name: &str) -> (String, String) {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| pod_labels.get(*k).filter(|v| !v.is_empty()).cloned())
    };
    let name = first(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_else(|| workload_name.to_string());
    let revision = first(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".to_string());
    (name, revision)
}

#[cfg(test)]
#[path = "workload_tests.rs"]
mod tests;
