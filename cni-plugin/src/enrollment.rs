//! Which pods are in the mesh.
//!
//! A pod is enrolled when its own label `istio.io/dataplane-mode` is `ambient`, or when its
//! namespace has that label and the pod does not opt out with `istio.io/dataplane-mode=none`.
//!
//! The source is behind the [`Enrollment`] trait. Today's implementation, [`DirEnrollment`],
//! reads the Namespaces and Pods of the same directory of Kubernetes YAML that istiod-lite
//! reads, afresh on every question (a CNI ADD is rare and the directory small, so no cache can
//! go stale). A later issue may replace it by a watch on istiod-lite (or the API server), which
//! would also catch label changes of running pods; that reconciliation is not built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The label that enrols a namespace or pod.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

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
    /// A document is not YAML.
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
    /// Decides for pod `namespace/name`.
    fn decide(&self, namespace: &str, name: &str) -> Result<Decision, EnrollmentError>;
}

/// Enrolment from a directory of Kubernetes YAML (istiod-lite's `--config-dir`).
#[derive(Debug, Clone)]
pub struct DirEnrollment {
    dir: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
struct Doc {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Option<PodSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct PodSpec {
    #[serde(default, rename = "serviceAccountName")]
    service_account_name: Option<String>,
}

type Labels = BTreeMap<String, String>;

/// A pod as read: its labels and service account.
#[derive(Debug, Default)]
struct PodEntry {
    labels: Labels,
    service_account: Option<String>,
}

/// Namespace and pod labels, as read.
#[derive(Debug, Default)]
struct Cluster {
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<(String, String), PodEntry>,
}

impl Cluster {
    fn add_yaml(&mut self, path: &Path, text: &str) -> Result<(), EnrollmentError> {
        for de in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(de).map_err(|e| EnrollmentError::Parse {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            // Other kinds (and documents of unexpected shape) are istiod-lite's business.
            let Ok(doc) = serde_yaml::from_value::<Doc>(value) else {
                continue;
            };
            match doc.kind.as_str() {
                "Namespace" => {
                    self.namespaces
                        .insert(doc.metadata.name, doc.metadata.labels);
                }
                "Pod" => {
                    let ns = doc.metadata.namespace.unwrap_or_else(|| "default".into());
                    let sa = doc.spec.and_then(|s| s.service_account_name);
                    let entry = PodEntry {
                        labels: doc.metadata.labels,
                        service_account: sa,
                    };
                    self.pods.insert((ns, doc.metadata.name), entry);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn decide(&self, namespace: &str, name: &str) -> Decision {
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

    fn load(&self) -> Result<Cluster, EnrollmentError> {
        let mut files = Vec::new();
        walk(&self.dir, 0, &mut files)?;
        files.sort();
        let mut cluster = Cluster::default();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| EnrollmentError::Read {
                path: path.clone(),
                source,
            })?;
            cluster.add_yaml(&path, &text)?;
        }
        Ok(cluster)
    }
}

impl Enrollment for DirEnrollment {
    fn decide(&self, namespace: &str, name: &str) -> Result<Decision, EnrollmentError> {
        Ok(self.load()?.decide(namespace, name))
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

    fn cluster() -> Cluster {
        let mut c = Cluster::default();
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
        assert!(e.decide("mesh", "x").expect("reads").enrolled);
        std::fs::write(dir.path().join("b.yml"), "a: [").expect("write");
        assert!(matches!(
            e.decide("mesh", "x"),
            Err(EnrollmentError::Parse { .. })
        ));
        let missing = DirEnrollment::new(dir.path().join("nope"));
        assert!(matches!(
            missing.decide("mesh", "x"),
            Err(EnrollmentError::Read { .. })
        ));
    }
}
