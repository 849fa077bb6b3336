//! [`KubeEnrollment`]: the node agent's view of the cluster on Kubernetes.
//!
//! Two kube-rs watchers keep it: the Pods of this node only (field selector
//! `spec.nodeName=<node>`, as istio-cni watches) and every Namespace (for their labels). The
//! same enrolment decision as on the local cluster ([`Snapshot::decide`]) runs on what they
//! hold. Until both have listed, [`Enrollment::snapshot`] fails, so a CNI ADD is retried by the
//! runtime rather than decided on half a cluster.
//!
//! A captured pod gets the annotation `ambient.istio.io/redirection: enabled`, removed when it
//! is released (a JSON merge patch, as istio-cni does): the cluster can see which pods are in
//! the mesh. A failed patch is logged and does not undo the capture.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};

use crate::enrollment::{
    pod_object, Enrollment, EnrollmentError, Labels, PodKey, PodObject, Snapshot,
};

/// The annotation istio-cni puts on a pod whose traffic it redirects.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";

#[derive(Default)]
struct State {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodKey, PodObject>,
    /// A re-list in progress, per watcher.
    relisting_namespaces: Option<BTreeMap<String, Labels>>,
    relisting_pods: Option<BTreeMap<PodKey, PodObject>>,
    namespaces_synced: bool,
    pods_synced: bool,
}

/// Enrolment from the Kubernetes API server.
pub struct KubeEnrollment {
    client: Client,
    state: Arc<Mutex<State>>,
    runtime: tokio::runtime::Handle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KubeEnrollment {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn pod_key(pod: &Pod) -> PodKey {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

impl KubeEnrollment {
    /// Starts watching the Pods of `node` and every Namespace; waits at most `timeout` for
    /// both lists.
    pub async fn start(client: Client, node: &str, timeout: Duration) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let pods: Api<Pod> = Api::all(client.clone());
        let pods_config = watcher::Config::default()
            .fields(&format!("spec.nodeName={node}"))
            .any_semantic();
        let pod_state = state.clone();
        let pod_task = tokio::spawn(async move {
            let mut stream = watcher::watcher(pods, pods_config)
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                let mut s = lock(&pod_state);
                match event {
                    Ok(Event::Init) => s.relisting_pods = Some(BTreeMap::new()),
                    Ok(Event::InitApply(pod)) => {
                        let key = pod_key(&pod);
                        s.relisting_pods
                            .get_or_insert_with(BTreeMap::new)
                            .insert(key, pod_object(pod));
                    }
                    Ok(Event::InitDone) => {
                        s.pods = s.relisting_pods.take().unwrap_or_default();
                        s.pods_synced = true;
                    }
                    Ok(Event::Apply(pod)) => {
                        let key = pod_key(&pod);
                        s.pods.insert(key, pod_object(pod));
                    }
                    Ok(Event::Delete(pod)) => {
                        s.pods.remove(&pod_key(&pod));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "watching this node's pods failed; retrying")
                    }
                }
            }
        });
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns_state = state.clone();
        let ns_task = tokio::spawn(async move {
            let config = watcher::Config::default().any_semantic();
            let mut stream = watcher::watcher(namespaces, config)
                .default_backoff()
                .boxed();
            let entry = |ns: Namespace| {
                (
                    ns.metadata.name.unwrap_or_default(),
                    ns.metadata.labels.unwrap_or_default(),
                )
            };
            while let Some(event) = stream.next().await {
                let mut s = lock(&ns_state);
                match event {
                    Ok(Event::Init) => s.relisting_namespaces = Some(BTreeMap::new()),
                    Ok(Event::InitApply(ns)) => {
                        let (name, labels) = entry(ns);
                        s.relisting_namespaces
                            .get_or_insert_with(BTreeMap::new)
                            .insert(name, labels);
                    }
                    Ok(Event::InitDone) => {
                        s.namespaces = s.relisting_namespaces.take().unwrap_or_default();
                        s.namespaces_synced = true;
                    }
                    Ok(Event::Apply(ns)) => {
                        let (name, labels) = entry(ns);
                        s.namespaces.insert(name, labels);
                    }
                    Ok(Event::Delete(ns)) => {
                        s.namespaces.remove(&entry(ns).0);
                    }
                    Err(error) => tracing::warn!(%error, "watching namespaces failed; retrying"),
                }
            }
        });
        let enrollment = KubeEnrollment {
            client,
            state,
            runtime: tokio::runtime::Handle::current(),
            tasks: vec![pod_task, ns_task],
        };
        let deadline = tokio::time::Instant::now() + timeout;
        while !enrollment.synced() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the Pods of node {node} and the Namespaces were not listed within {timeout:?} \
                 (is the API server reachable, and may the agent list and watch them?)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(node, "pods and namespaces listed; following them");
        Ok(enrollment)
    }

    fn synced(&self) -> bool {
        let s = lock(&self.state);
        s.pods_synced && s.namespaces_synced
    }

    /// Sets (`Some`) or removes (`None`) the redirection annotation of pod `key`, in the
    /// background.
    fn annotate(&self, key: &PodKey, value: Option<&str>) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let (name, shown) = (key.1.clone(), format!("{}/{}", key.0, key.1));
        let patch = serde_json::json!({
            "metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}
        });
        self.runtime.spawn(async move {
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::debug!(pod = %shown, annotation = REDIRECTION_ANNOTATION, ?patch, "pod annotated"),
                Err(error) => tracing::warn!(pod = %shown, %error, "could not patch the redirection annotation"),
            }
        });
    }
}

impl Enrollment for KubeEnrollment {
    fn snapshot(&self) -> Result<Snapshot, EnrollmentError> {
        let s = lock(&self.state);
        if !(s.pods_synced && s.namespaces_synced) {
            return Err(EnrollmentError::NotSynced);
        }
        Ok(Snapshot::from_parts(s.namespaces.clone(), s.pods.clone()))
    }

    fn captured(&self, key: &PodKey) {
        self.annotate(key, Some("enabled"));
    }

    fn released(&self, key: &PodKey) {
        self.annotate(key, None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use resources::testing::FakeApiServer;
    use serde_json::json;

    use super::*;

    fn pod(ns: &str, name: &str, node: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
               "spec": {"nodeName": node, "serviceAccountName": "sleep",
                        "containers": [{"name": "c", "image": "i"}]},
               "status": {"phase": "Running", "podIP": "10.244.1.9"}})
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn follows_its_nodes_pods_and_the_namespaces_and_annotates_captured_pods() {
        let api = FakeApiServer::start().await.unwrap();
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"istio.io/dataplane-mode": "ambient"}}}));
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}}));
        api.apply(pod("shop", "web", "n1"));
        api.apply(pod("shop", "elsewhere", "n2"));
        api.apply(pod("plain", "app", "n1"));
        let client = Client::try_from(kube::Config::new(api.url().parse().unwrap())).unwrap();
        let e = KubeEnrollment::start(client, "n1", Duration::from_secs(5))
            .await
            .expect("listed");

        let snap = e.snapshot().unwrap();
        assert!(snap.decide("shop", "web").enrolled);
        assert!(!snap.decide("plain", "app").enrolled);
        assert!(snap.pod(&("shop".into(), "web".into())).is_some());
        // Only this node's pods are watched (the field selector).
        assert!(snap.pod(&("shop".into(), "elsewhere".into())).is_none());
        assert!(
            api.requests()
                .iter()
                .any(|r| r.contains("/api/v1/pods?")
                    && r.contains("fieldSelector=spec.nodeName%3Dn1"))
        );

        // A namespace label change is seen.
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "plain", "labels": {"istio.io/dataplane-mode": "ambient"}}}));
        until("plain enrolled", || {
            e.snapshot().unwrap().decide("plain", "app").enrolled
        })
        .await;

        // Captured: annotated through the API; released: the annotation is gone.
        let annotation = |api: &FakeApiServer| {
            api.get("v1", "Pod", "shop", "web").unwrap()["metadata"]["annotations"]
                [REDIRECTION_ANNOTATION]
                .clone()
        };
        e.captured(&("shop".into(), "web".into()));
        until("annotated", || annotation(&api) == "enabled").await;
        e.released(&("shop".into(), "web".into()));
        until("annotation removed", || annotation(&api).is_null()).await;
    }

    #[tokio::test]
    async fn until_listed_it_gives_no_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let err = KubeEnrollment::start(client, "n1", Duration::from_millis(300))
            .await
            .err()
            .expect("nothing to list");
        assert!(err.to_string().contains("were not listed"), "{err}");
    }
}
