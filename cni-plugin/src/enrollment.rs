//! Which pods are in the mesh, and what the node agent knows of each Pod object.
//!
//! A pod is enrolled when its own label `istio.io/dataplane-mode` is `ambient`, or when its
//! namespace has that label and the pod does not opt out with `istio.io/dataplane-mode=none`.
//!
//! The source is behind the [`Enrollment`] trait. On Kubernetes it is
//! [`KubeEnrollment`](crate::kube_enrollment::KubeEnrollment) (watches); on the local cluster
//! [`DirEnrollment`], which reads the Namespaces and Pods of the same directory of Kubernetes YAML that istiod-lite
//! reads, afresh on every question (a CNI ADD or a reconcile pass: the directory is small, so
//! no cache can go stale). Besides labels it keeps what reconciliation needs: `spec.nodeName`,
//! `spec.hostNetwork`, `status.phase` and `status.podIPs` (else `status.podIP`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use resources::{Kind, Object};

/// The label that enrols a namespace or pod.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// A pod's identity in the cluster: (namespace, name).
pub type PodKey = (String, String);

/// What the agent knows about a pod it is asked to set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Capture the pod and hand it to ztunnel.
    pub enrolled: bool,
    /// The pod's service account (`default` when unknown).
    pub service_account: String,
}

/// Why the source could not answer.
#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    /// The directory or a file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The watches have not listed the cluster yet (just started, or the API server is away).
    #[error("the Pods and Namespaces have not been listed from the API server yet")]
    NotSynced,
    /// A document is not YAML, or a Namespace or Pod document has an unexpected shape.
    #[error("{path} is not valid YAML: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

/// A source of enrolment decisions.
pub trait Enrollment: Send + Sync {
    /// Reads every Namespace and Pod, as of now (decisions: [`Snapshot::decide`]).
    fn snapshot(&self) -> Result<Snapshot, EnrollmentError>;

    /// The agent captured pod `key` (its traffic now goes to ztunnel): say so where the
    /// cluster can see it. Must not block.
    fn captured(&self, _key: &PodKey) {}

    /// The agent released pod `key`. Must not block.
    fn released(&self, _key: &PodKey) {}
}

/// Enrolment from a directory of Kubernetes YAML (istiod-lite's `--config-dir`).
#[derive(Debug, Clone)]
pub struct DirEnrollment {
    dir: PathBuf,
}

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// One Pod object, as the agent needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodObject {
    /// `metadata.labels`.
    pub labels: Labels,
    /// `spec.serviceAccountName`.
    pub service_account: Option<String>,
    /// `spec.nodeName`; `None` while the pod is not scheduled.
    pub node_name: Option<String>,
    /// `spec.hostNetwork`: the pod shares the node's network namespace (never captured).
    pub host_network: bool,
    /// `metadata.deletionTimestamp` is set: the pod is shutting down (its CNI DEL will come).
    pub deleting: bool,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`), when there is a status.
    pub phase: Option<String>,
    /// `status.podIPs`, else `status.podIP`; entries that are not addresses are left out.
    /// Empty while the sandbox is being created.
    pub ips: Vec<IpAddr>,
}

impl PodObject {
    /// The pod's containers have all ended for good (phase `Succeeded` or `Failed`).
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }
}

/// Every Namespace's labels and every Pod, as read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<PodKey, PodObject>,
}

impl Snapshot {
    /// A snapshot of these Namespaces' labels and Pods (a watching source builds them).
    pub fn from_parts(
        namespaces: BTreeMap<String, Labels>,
        pods: BTreeMap<PodKey, PodObject>,
    ) -> Snapshot {
        Snapshot { namespaces, pods }
    }
}

fn pod_ips(status: &PodStatus) -> Vec<IpAddr> {
    let listed: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    // Like istiod-lite: `podIPs` when given, else `podIP`.
    let raw: Vec<&str> = if listed.is_empty() {
        status.pod_ip.as_deref().into_iter().collect()
    } else {
        listed
    };
    raw.iter().filter_map(|ip| ip.trim().parse().ok()).collect()
}

/// What the agent needs of a Pod object.
pub fn pod_object(pod: Pod) -> PodObject {
    let meta = pod.metadata;
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();
    PodObject {
        labels: meta.labels.unwrap_or_default(),
        service_account: spec.service_account_name,
        node_name: spec.node_name.filter(|n| !n.is_empty()),
        host_network: spec.host_network.unwrap_or(false),
        deleting: meta.deletion_timestamp.is_some(),
        ips: pod_ips(&status),
        phase: status.phase,
    }
}

impl Snapshot {
    /// Adds the Namespaces and Pods of one YAML file, also those inside a `kind: List` (other
    /// kinds are istiod-lite's business).
    pub fn add_yaml(&mut self, path: &Path, text: &str) -> Result<(), EnrollmentError> {
        let parse_error = |reason: String| EnrollmentError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        for document in resources::yaml_documents(text) {
            let value = document.map_err(|e| parse_error(e.to_string()))?;
            let items = match value.get("kind").and_then(serde_json::Value::as_str) {
                Some("List") => value
                    .get("items")
                    .and_then(serde_json::Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                _ => vec![value],
            };
            for item in items {
                self.add_object(item).map_err(parse_error)?;
            }
        }
        Ok(())
    }

    fn add_object(&mut self, value: serde_json::Value) -> Result<(), String> {
        let kind = match value.get("kind").and_then(serde_json::Value::as_str) {
            Some("Namespace") => Kind::Namespace,
            Some("Pod") => Kind::Pod,
            _ => return Ok(()),
        };
        // A Namespace or Pod we cannot read is an error, not a skip: skipping it would make
        // its pods look un-enrolled (or gone) and release them.
        match resources::decode(kind, value)? {
            Object::Namespace(ns) => {
                let name = ns.metadata.name.unwrap_or_default();
                self.namespaces
                    .insert(name, ns.metadata.labels.unwrap_or_default());
            }
            Object::Pod(pod) => {
                let ns = pod
                    .metadata
                    .namespace
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "default".into());
                let name = pod.metadata.name.clone().unwrap_or_default();
                self.pods.insert((ns, name), pod_object(pod));
            }
            _ => {}
        }
        Ok(())
    }

    /// The Pod object `namespace/name`, if there is one.
    pub fn pod(&self, key: &PodKey) -> Option<&PodObject> {
        self.pods.get(key)
    }

    /// Every Pod object, by (namespace, name).
    pub fn pods(&self) -> impl Iterator<Item = (&PodKey, &PodObject)> {
        self.pods.iter()
    }

    /// Decides for pod `namespace/name`: its own label wins, else its namespace's. A pod
    /// without an object is decided by its namespace with service account `default`; the agent
    /// never enrols on that guess (a CNI ADD for such a pod in an ambient namespace fails
    /// closed until the object arrives: `pods.rs`).
    pub fn decide(&self, namespace: &str, name: &str) -> Decision {
        let pod = self.pods.get(&(namespace.to_string(), name.to_string()));
        let pod_mode = pod.and_then(|p| p.labels.get(DATAPLANE_MODE_LABEL));
        let ns_mode = self
            .namespaces
            .get(namespace)
            .and_then(|labels| labels.get(DATAPLANE_MODE_LABEL));
        let enrolled = match pod_mode.map(String::as_str) {
            Some("ambient") => true,
            Some("none") => false,
            _ => ns_mode.is_some_and(|m| m == "ambient"),
        };
        Decision {
            enrolled,
            service_account: pod
                .and_then(|p| p.service_account.clone())
                .unwrap_or_else(|| "default".into()),
        }
    }
}

impl DirEnrollment {
    /// Reads from `dir` (every `*.yaml`/`*.yml`, recursively, skipping names starting with `.`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirEnrollment { dir: dir.into() }
    }
}

impl Enrollment for DirEnrollment {
    fn snapshot(&self) -> Result<Snapshot, EnrollmentError> {
        let mut files = Vec::new();
        walk(&self.dir, 0, &mut files)?;
        files.sort();
        let mut snapshot = Snapshot::default();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| EnrollmentError::Read {
                path: path.clone(),
                source,
            })?;
            snapshot.add_yaml(&path, &text)?;
        }
        Ok(snapshot)
    }
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), EnrollmentError> {
    let read_err = |source| EnrollmentError::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() && depth < 8 {
            walk(&path, depth + 1, out)?;
        } else if meta.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: out, namespace: mesh, labels: {istio.io/dataplane-mode: none}}
---
apiVersion: v1
kind: Pod
metadata: {name: in, namespace: plain, labels: {istio.io/dataplane-mode: ambient}}
spec: {serviceAccountName: sleep}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: mesh}
";

    fn cluster() -> Snapshot {
        let mut c = Snapshot::default();
        c.add_yaml(Path::new("t.yaml"), YAML).expect("parses");
        c
    }

    #[test]
    fn namespace_label_enrols_and_pod_labels_override() {
        let c = cluster();
        assert!(c.decide("mesh", "unlisted").enrolled);
        assert!(!c.decide("mesh", "out").enrolled);
        let d = c.decide("plain", "in");
        assert!(d.enrolled);
        assert_eq!(d.service_account, "sleep");
        assert!(!c.decide("plain", "other").enrolled);
        assert!(!c.decide("unknown", "x").enrolled);
        assert_eq!(c.decide("mesh", "unlisted").service_account, "default");
    }

    #[test]
    fn directory_is_read_recursively_and_bad_yaml_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/a.yaml"), YAML).expect("write");
        std::fs::write(dir.path().join(".hidden.yaml"), "{{{").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "{{{").expect("write");
        let e = DirEnrollment::new(dir.path());
        assert!(e.snapshot().expect("reads").decide("mesh", "x").enrolled);
        std::fs::write(dir.path().join("b.yml"), "a: [").expect("write");
        assert!(matches!(e.snapshot(), Err(EnrollmentError::Parse { .. })));
        let missing = DirEnrollment::new(dir.path().join("nope"));
        assert!(matches!(
            missing.snapshot(),
            Err(EnrollmentError::Read { .. })
        ));
    }

    #[test]
    fn pods_keep_node_name_addresses_and_phase() {
        let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, uid: 0b6c-1, labels: {app: web}}
spec: {nodeName: n1, serviceAccountName: web, containers: [{name: main, image: local}]}
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}, {ip: 'fd00::2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: demo}
spec: {nodeName: n1, containers: [{name: main, image: local}]}
---
apiVersion: v1
kind: Pod
metadata: {name: old-style, namespace: demo, deletionTimestamp: '2025-01-01T00:00:00Z'}
spec: {nodeName: n2, hostNetwork: true}
status: {phase: Succeeded, podIP: 10.244.2.7}
---
apiVersion: v1
kind: Pod
metadata: {name: unscheduled}
status: {phase: Pending, podIP: not-an-ip}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}}
- {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}
";
        let mut s = Snapshot::default();
        s.add_yaml(Path::new("t.yaml"), yaml).expect("parses");
        let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        let web = s.pod(&key("demo", "web")).expect("web");
        assert_eq!(web.node_name.as_deref(), Some("n1"));
        assert_eq!(
            web.ips,
            vec![
                "10.244.1.2".parse::<IpAddr>().expect("ip"),
                "fd00::2".parse().expect("ip")
            ]
        );
        assert_eq!(web.phase.as_deref(), Some("Running"));
        assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
        assert!(!web.host_network && !web.finished());
        let starting = s.pod(&key("demo", "starting")).expect("starting");
        assert!(starting.ips.is_empty() && starting.phase.is_none());
        let old = s.pod(&key("demo", "old-style")).expect("old-style");
        assert_eq!(old.ips, vec!["10.244.2.7".parse::<IpAddr>().expect("ip")]);
        assert!(old.host_network && old.finished() && old.deleting);
        assert!(!web.deleting);
        let unscheduled = s.pod(&key("default", "unscheduled")).expect("default ns");
        assert_eq!(
            (unscheduled.node_name.as_deref(), unscheduled.ips.len()),
            (None, 0)
        );
        // The Namespace inside the List counts.
        assert!(s.decide("demo", "web").enrolled);
        assert_eq!(s.decide("demo", "web").service_account, "web");
        assert_eq!(s.pods().count(), 4);
    }

    #[test]
    fn an_unreadable_pod_or_namespace_is_an_error_not_a_skip() {
        for doc in [
            "kind: Pod\nmetadata: {name: a, labels: [x]}\n",
            "kind: Namespace\nmetadata: {name: [a]}\n",
            "kind: Pod\nmetadata: {name: a}\nspec: {nodeName: [x]}\n",
        ] {
            let mut s = Snapshot::default();
            let err = s.add_yaml(Path::new("bad.yaml"), doc).expect_err(doc);
            assert!(err.to_string().contains("bad.yaml"), "{err}");
        }
        // Other kinds of unexpected shape are istiod-lite's business.
        let mut s = Snapshot::default();
        s.add_yaml(
            Path::new("ok.yaml"),
            "kind: Service\nmetadata: [1]\n---\n[1, 2]\n",
        )
        .expect("skipped");
    }
}
