//! Who runs where: the pods the control plane knows, and so which node may hold which identity.
//!
//! The source today is a directory of Kubernetes YAML files (multi-document, e.g. a mounted
//! ConfigMap or `kubectl get pods -A -o yaml` output split per namespace). Documents of
//! `kind: Pod` are read as `k8s_openapi` pods; other kinds are skipped; a document that does
//! not parse is reported (file, document index, reason) and skipped. The directory is re-read
//! when the set of files or any file's modification time or size changed since the last read:
//! one `stat` per file per question, which is cheap at this scale.
//!
//! The CA service only asks [`PodDirectory::may_hold`], so a live config source (a later
//! Kubernetes watch) plugs in behind the same trait.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use mesh::Identity;
use serde::Deserialize;

/// Answers whether a node may hold an identity.
pub trait PodDirectory: Send + Sync + 'static {
    /// True iff a pod with `identity` is scheduled on `node`.
    fn may_hold(&self, node: &str, identity: &Identity) -> bool;
}

/// What the CA needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's namespace (`default` when the document names none).
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// `spec.nodeName`; `None` while the pod is not scheduled.
    pub node: Option<String>,
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccountName or "default">`.
    pub identity: Identity,
}

/// A document that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseProblem {
    /// The file it came from.
    pub file: PathBuf,
    /// Zero-based index of the document in the file.
    pub document: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} document {}: {}",
            self.file.display(),
            self.document,
            self.reason
        )
    }
}

/// Why the pod directory is unusable at start.
#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    /// The directory could not be listed.
    #[error("config directory {path}: cannot list: {error}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
}

/// Reads the pods out of one file's text. Never fails: unusable documents become problems.
pub fn parse_pods(
    text: &str,
    file: &Path,
    trust_domain: &str,
) -> (Vec<PodInfo>, Vec<ParseProblem>) {
    let mut pods = Vec::new();
    let mut problems = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let problem = |reason: String| ParseProblem {
            file: file.to_path_buf(),
            document: index,
            reason,
        };
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                // The YAML stream itself is broken: later documents cannot be trusted either.
                problems.push(problem(format!("not YAML: {e}")));
                break;
            }
        };
        if value.is_null() {
            continue; // empty document, e.g. a trailing `---`
        }
        if value.get("kind").and_then(|k| k.as_str()) != Some("Pod") {
            continue;
        }
        let pod: Pod = match serde_yaml::from_value(value) {
            Ok(pod) => pod,
            Err(e) => {
                problems.push(problem(format!("not a valid v1 Pod: {e}")));
                continue;
            }
        };
        match pod_info(&pod, trust_domain) {
            Ok(Some(info)) => pods.push(info),
            Ok(None) => {}
            Err(reason) => problems.push(problem(reason)),
        }
    }
    (pods, problems)
}

/// The pod's identity and placement; `None` for pods that have finished and need no
/// certificate.
fn pod_info(pod: &Pod, trust_domain: &str) -> Result<Option<PodInfo>, String> {
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or_else(|| "pod has no metadata.name".to_string())?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.clone())
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let node = spec
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let identity = Identity::new(trust_domain, namespace.as_str(), service_account)
        .map_err(|e| format!("pod {namespace}/{name}: {e}"))?;
    Ok(Some(PodInfo {
        namespace,
        name,
        node,
        identity,
    }))
}

/// (path, modification time, size) of one file, to notice changes.
type Stamp = (PathBuf, Option<SystemTime>, u64);

#[derive(Default)]
struct Snapshot {
    stamps: Vec<Stamp>,
    pods: Vec<PodInfo>,
    placements: HashSet<(String, Identity)>,
}

/// The pods of a directory of Kubernetes YAML files, re-read when the files change.
pub struct YamlPodDirectory {
    dir: PathBuf,
    trust_domain: String,
    // Held only while stat-ing and, on change, re-reading the files; never across an await.
    snapshot: Mutex<Snapshot>,
}

impl std::fmt::Debug for YamlPodDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YamlPodDirectory")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl YamlPodDirectory {
    /// Reads `dir` now; fails only if it cannot be listed.
    pub fn open(dir: &Path, trust_domain: &str) -> Result<Self, PodsError> {
        let directory = YamlPodDirectory {
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.to_string(),
            snapshot: Mutex::new(Snapshot::default()),
        };
        let stamps = directory.stamps().map_err(|error| PodsError::List {
            path: dir.to_path_buf(),
            error,
        })?;
        let mut snapshot = lock(&directory.snapshot);
        directory.reload(&mut snapshot, stamps);
        drop(snapshot);
        Ok(directory)
    }

    /// The pods as of now (re-reading the directory if it changed).
    pub fn pods(&self) -> Vec<PodInfo> {
        self.current(|s| s.pods.clone())
    }

    fn current<T>(&self, read: impl FnOnce(&Snapshot) -> T) -> T {
        let mut snapshot = lock(&self.snapshot);
        match self.stamps() {
            Ok(stamps) if stamps != snapshot.stamps => self.reload(&mut snapshot, stamps),
            Ok(_) => {}
            Err(e) => {
                // Keep answering from the last good read rather than forgetting every pod.
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list config directory; using the last pods read");
            }
        }
        read(&snapshot)
    }

    /// The YAML files of the directory (hidden entries skipped), sorted, with their stamps.
    fn stamps(&self) -> std::io::Result<Vec<Stamp>> {
        let mut stamps = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            if name.starts_with('.') || !is_yaml {
                continue;
            }
            // Follows symlinks, as ConfigMap mounts use them.
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    stamps.push((path, meta.modified().ok(), meta.len()));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot stat config file; skipping it");
                }
            }
        }
        stamps.sort();
        Ok(stamps)
    }

    fn reload(&self, snapshot: &mut Snapshot, stamps: Vec<Stamp>) {
        let mut pods = Vec::new();
        for (path, _, _) in &stamps {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read config file; skipping it");
                    continue;
                }
            };
            let (found, problems) = parse_pods(&text, path, &self.trust_domain);
            for p in problems {
                tracing::warn!(file = %p.file.display(), document = p.document, reason = %p.reason, "skipping unusable document");
            }
            pods.extend(found);
        }
        snapshot.placements = pods
            .iter()
            .filter_map(|p| p.node.clone().map(|node| (node, p.identity.clone())))
            .collect();
        tracing::info!(dir = %self.dir.display(), files = stamps.len(), pods = pods.len(), "read pods");
        snapshot.pods = pods;
        snapshot.stamps = stamps;
    }
}

impl PodDirectory for YamlPodDirectory {
    fn may_hold(&self, node: &str, identity: &Identity) -> bool {
        self.current(|s| s.placements.contains(&(node.to_string(), identity.clone())))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic during a reload leaves at worst a stale snapshot: recover it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TD: &str = "cluster.local";

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    const MIXED: &str = r#"
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
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: apps}
spec:
  nodeName: [not, a, string]
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
"#;

    #[test]
    fn pods_are_read_other_kinds_skipped_and_bad_documents_reported() {
        let (pods, problems) = parse_pods(MIXED, Path::new("/cfg/pods.yaml"), TD);
        let names: Vec<_> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["sleep-1", "no-sa", "pending"]);
        assert_eq!(
            pods[0].identity,
            id("spiffe://cluster.local/ns/apps/sa/sleep")
        );
        assert_eq!(pods[0].node.as_deref(), Some("node-1"));
        assert_eq!(
            pods[1].identity,
            id("spiffe://cluster.local/ns/default/sa/default")
        );
        assert_eq!(pods[2].node, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].document, 3);
        assert_eq!(problems[0].file, PathBuf::from("/cfg/pods.yaml"));
        assert!(
            problems[0]
                .to_string()
                .contains("/cfg/pods.yaml document 3"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn broken_yaml_is_reported_not_panicked_on() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a\n";
        let (pods, problems) = parse_pods(text, Path::new("bad.yaml"), TD);
        assert!(pods.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].reason.starts_with("not YAML"), "{problems:?}");
        // A Pod with the wrong apiVersion and a Pod whose names make no identity.
        let text = "apiVersion: v2\nkind: Pod\nmetadata: {name: a}\n---\nkind: Pod\napiVersion: v1\nmetadata: {name: b, namespace: 'a b'}\n";
        let (pods, problems) = parse_pods(text, Path::new("odd.yaml"), TD);
        assert!(pods.is_empty());
        assert_eq!(
            problems.iter().map(|p| p.document).collect::<Vec<_>>(),
            [0, 1],
            "{problems:?}"
        );
    }

    #[test]
    fn may_hold_follows_the_directory_as_files_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), MIXED).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "kind: Pod").unwrap();
        let pods = YamlPodDirectory::open(dir.path(), TD).unwrap();
        let sleep = id("spiffe://cluster.local/ns/apps/sa/sleep");
        assert!(pods.may_hold("node-1", &sleep));
        assert!(!pods.may_hold("node-2", &sleep));
        assert!(!pods.may_hold("node-1", &id("spiffe://cluster.local/ns/apps/sa/batch")));
        assert!(!pods.may_hold("node-1", &id("spiffe://other.td/ns/apps/sa/sleep")));

        // Move the pod: a new file of a different size is noticed without any signal.
        let moved = MIXED.replacen("nodeName: node-1", "nodeName: node-3", 1);
        std::fs::write(dir.path().join("pods.yaml"), moved).unwrap();
        std::fs::write(
            dir.path().join("more.yml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: n}\nspec: {nodeName: node-9, containers: []}\n",
        )
        .unwrap();
        assert!(!pods.may_hold("node-1", &sleep));
        assert!(pods.may_hold("node-3", &sleep));
        assert!(pods.may_hold("node-9", &id("spiffe://cluster.local/ns/n/sa/default")));
        assert_eq!(pods.pods().len(), 4);
    }

    #[test]
    fn an_unlistable_directory_fails_at_start() {
        let err = YamlPodDirectory::open(Path::new("/nonexistent/config"), TD).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/config"), "{err}");
    }
}
