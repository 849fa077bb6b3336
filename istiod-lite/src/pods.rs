//! Who runs where: the pods the control plane knows, and so which node may hold which identity.
//!
//! The pods come from the same [`ClusterState`] snapshots as everything else the control plane
//! serves (see [`crate::config_source`]), so the CA and the config API never disagree about a
//! pod. [`ClusterPods`] answers [`PodDirectory::may_hold`] from the latest snapshot of any
//! [`ConfigSource`]; the placements are recomputed once per snapshot, not per question.
//!
//! A pod places its identity (`spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccountName
//! or "default">`) on its `spec.nodeName` from the moment it is scheduled until it has
//! finished (phase Succeeded or Failed); it needs no IP for that, since a node tunnel asks
//! for the certificate while the pod starts.
//!
//! The CA service only asks [`PodDirectory::may_hold`], so a live Kubernetes source plugs in
//! behind the same trait.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use mesh::Identity;
use tokio::sync::watch;

use crate::config_source::{ClusterState, ObjectKey};

/// Answers whether a node may hold an identity.
pub trait PodDirectory: Send + Sync + 'static {
    /// True iff a pod with `identity` is scheduled on `node`.
    fn may_hold(&self, node: &str, identity: &Identity) -> bool;
}

/// What the CA needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// `spec.nodeName`; `None` while the pod is not scheduled.
    pub node: Option<String>,
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccountName or "default">`.
    pub identity: Identity,
}

/// The pods of a snapshot that have not finished, with their identities, in key order. Pods
/// whose namespace or service account makes no valid identity are left out (logged at debug;
/// the translation reports them).
pub fn pod_infos(state: &ClusterState, trust_domain: &str) -> Vec<PodInfo> {
    state
        .pods
        .iter()
        .filter_map(|(key, pod)| pod_info(key, pod, trust_domain))
        .collect()
}

fn pod_info(key: &ObjectKey, pod: &Pod, trust_domain: &str) -> Option<PodInfo> {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.clone())
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| mesh::model::DEFAULT_SERVICE_ACCOUNT.to_string());
    let identity = match Identity::new(trust_domain, key.namespace.as_str(), service_account) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::debug!(pod = %key, error = %e, "pod has no valid identity; it places none");
            return None;
        }
    };
    Some(PodInfo {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        node: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        identity,
    })
}

/// (node, identity) pairs of one snapshot.
type Placements = HashSet<(String, Identity)>;

/// A [`PodDirectory`] over the snapshots of a config source.
pub struct ClusterPods {
    snapshots: watch::Receiver<Arc<ClusterState>>,
    trust_domain: String,
    // The placements of the snapshot they were computed from. Held only to compare and swap;
    // may_hold runs on the blocking pool, never across an await.
    cache: Mutex<Option<(Arc<ClusterState>, Arc<Placements>)>>,
}

impl std::fmt::Debug for ClusterPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPods")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl ClusterPods {
    /// Follows `snapshots` (e.g. [`ConfigSource::subscribe`]); identities are in
    /// `trust_domain`.
    pub fn new(snapshots: watch::Receiver<Arc<ClusterState>>, trust_domain: &str) -> Self {
        ClusterPods {
            snapshots,
            trust_domain: trust_domain.to_string(),
            cache: Mutex::new(None),
        }
    }

    /// The pods of the current snapshot.
    pub fn pods(&self) -> Vec<PodInfo> {
        pod_infos(&self.snapshots.borrow(), &self.trust_domain)
    }

    /// The node pod `namespace/name` is scheduled on, if it is known and scheduled.
    pub fn node_of(&self, namespace: &str, name: &str) -> Option<String> {
        let key = ObjectKey::new(namespace, name);
        let state = self.snapshots.borrow();
        let pod = state.pods.get(&key)?;
        pod_info(&key, pod, &self.trust_domain)?.node
    }

    fn placements(&self) -> Arc<Placements> {
        let state = self.snapshots.borrow().clone();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, placements)) = cache.as_ref() {
            if Arc::ptr_eq(cached, &state) {
                return placements.clone();
            }
        }
        let placements: Arc<Placements> = Arc::new(
            pod_infos(&state, &self.trust_domain)
                .into_iter()
                .filter_map(|p| p.node.map(|node| (node, p.identity)))
                .collect(),
        );
        *cache = Some((state, placements.clone()));
        placements
    }
}

impl PodDirectory for ClusterPods {
    fn may_hold(&self, node: &str, identity: &Identity) -> bool {
        self.placements()
            .contains(&(node.to_string(), identity.clone()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config_source::{ConfigSource, DirSource, DEFAULT_POLL_INTERVAL};

    use super::*;

    const TD: &str = "cluster.local";

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sleep-1, namespace: apps}
spec:
  nodeName: node-1
  serviceAccountName: sleep
  containers: [{name: c, image: sleep}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: apps}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: no-sa}
spec:
  nodeName: node-2
  containers: [{name: c, image: x}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: apps}
spec:
  containers: [{name: c, image: x}]
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: apps}
spec: {nodeName: node-1, serviceAccountName: batch, containers: [{name: c, image: x}]}
status: {phase: Succeeded}
---
apiVersion: v1
kind: Pod
metadata: {name: odd, namespace: apps}
spec: {nodeName: node-1, serviceAccountName: "not valid", containers: []}
"#;

    #[test]
    fn running_and_pending_pods_place_their_identity_finished_ones_do_not() {
        let state = ClusterState::from_yaml(PODS).unwrap();
        let pods = pod_infos(&state, TD);
        let names: Vec<_> = pods.iter().map(|p| p.name.as_str()).collect();
        // Key order: (namespace, name).
        assert_eq!(names, ["pending", "sleep-1", "no-sa"]);
        assert_eq!(
            pods[1].identity,
            id("spiffe://cluster.local/ns/apps/sa/sleep")
        );
        assert_eq!(pods[1].node.as_deref(), Some("node-1"));
        assert_eq!(
            pods[2].identity,
            id("spiffe://cluster.local/ns/default/sa/default")
        );
        assert_eq!(pods[0].node, None);
    }

    #[test]
    fn may_hold_follows_the_snapshots_of_the_source() {
        let (tx, rx) = watch::channel(Arc::new(ClusterState::from_yaml(PODS).unwrap()));
        let pods = ClusterPods::new(rx, TD);
        let sleep = id("spiffe://cluster.local/ns/apps/sa/sleep");
        assert!(pods.may_hold("node-1", &sleep));
        assert!(!pods.may_hold("node-2", &sleep));
        assert!(!pods.may_hold("node-1", &id("spiffe://cluster.local/ns/apps/sa/batch")));
        assert!(!pods.may_hold("node-1", &id("spiffe://other.td/ns/apps/sa/sleep")));
        assert!(pods.may_hold(
            "node-2",
            &id("spiffe://cluster.local/ns/default/sa/default")
        ));

        // The pod moves: the next snapshot answers.
        let moved = PODS.replacen("nodeName: node-1", "nodeName: node-3", 1);
        tx.send_replace(Arc::new(ClusterState::from_yaml(&moved).unwrap()));
        assert!(!pods.may_hold("node-1", &sleep));
        assert!(pods.may_hold("node-3", &sleep));
        assert_eq!(pods.pods().len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_directory_of_pods_is_followed_as_files_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), PODS).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "kind: Pod").unwrap();
        let source = DirSource::open(dir.path(), DEFAULT_POLL_INTERVAL).unwrap();
        let pods = ClusterPods::new(source.subscribe(), TD);
        let sleep = id("spiffe://cluster.local/ns/apps/sa/sleep");
        assert!(pods.may_hold("node-1", &sleep));

        let moved = PODS.replacen("nodeName: node-1", "nodeName: node-3", 1);
        std::fs::write(dir.path().join("pods.yaml"), moved).unwrap();
        let nine = id("spiffe://cluster.local/ns/n/sa/default");
        std::fs::write(
            dir.path().join("more.yml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: n}\nspec: {nodeName: node-9, containers: []}\n",
        )
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !(pods.may_hold("node-3", &sleep) && pods.may_hold("node-9", &nine)) {
            assert!(tokio::time::Instant::now() < deadline, "change not seen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!pods.may_hold("node-1", &sleep));
        assert_eq!(pods.pods().len(), 4);
    }

    #[tokio::test]
    async fn an_unlistable_or_invalid_directory_fails_at_start() {
        let err =
            DirSource::open(Path::new("/nonexistent/config"), DEFAULT_POLL_INTERVAL).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/config"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pods.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {nodeName: [x]}\n",
        )
        .unwrap();
        let err = DirSource::open(dir.path(), DEFAULT_POLL_INTERVAL).unwrap_err();
        assert!(
            err.to_string()
                .contains("pods.yaml document 0: not a valid Pod"),
            "{err}"
        );
    }
}
