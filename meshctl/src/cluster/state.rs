//! Everything a local cluster keeps on disk, all under one state directory:
//!
//! ```text
//! <state>/cluster.json            this module's ClusterState: name, nodes, addresses, daemon pids
//! <state>/.lock                   flock held while cluster.json is read, changed and written
//! <state>/config/                 the config source (Kubernetes YAML) istiod-lite and the agents read
//! <state>/istiod/                 istiod-lite's data dir (root-cert.pem) and tokens.yaml
//! <state>/logs/<component>.log    istiod, ztunnel-<node>, agent-<node>, pod-<ns>-<name>
//! <state>/nodes/<node>/           token, ztunnel.sock, cni.sock, cni/net.d/, cni/bin/, ipam/
//! <state>/pods/<ns>/<name>.json   a pod's runtime record (see crate::pod)
//! <state>/prometheus/             `up --prometheus`: config, rules, targets, TSDB (see super::prometheus)
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::plan::NodePlan;
use crate::process::ProcRecord;

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `cluster.json`.
    pub fn cluster_file(&self) -> PathBuf {
        self.root.join("cluster.json")
    }

    /// The config source directory.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }

    /// istiod-lite's data directory.
    pub fn istiod_dir(&self) -> PathBuf {
        self.root.join("istiod")
    }

    /// The root certificate istiod-lite publishes.
    pub fn root_cert(&self) -> PathBuf {
        self.istiod_dir().join("root-cert.pem")
    }

    /// istiod-lite's tokens file.
    pub fn tokens_file(&self) -> PathBuf {
        self.istiod_dir().join("tokens.yaml")
    }

    /// The log directory.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The log of a component (`istiod`, `ztunnel-n1`, `pod-demo-web`...).
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs_dir().join(format!("{component}.log"))
    }

    /// A node's directory.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }

    /// The node's bearer token for istiod-lite.
    pub fn node_token(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("token")
    }

    /// The node agent's ZDS socket, to which ztunnel connects.
    pub fn ztunnel_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("ztunnel.sock")
    }

    /// The node agent's socket for its CNI plugin.
    pub fn cni_socket(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni.sock")
    }

    /// The node's CNI config directory (`*.conflist`).
    pub fn cni_conf_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni").join("net.d")
    }

    /// The node's own CNI plugin directory (the agent installs its plugin here).
    pub fn cni_bin_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cni").join("bin")
    }

    /// host-local IPAM's data directory for the node.
    pub fn ipam_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("ipam")
    }

    /// Directory of the pods' runtime records.
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// A pod's runtime record.
    pub fn pod_file(&self, namespace: &str, name: &str) -> PathBuf {
        self.pods_dir().join(namespace).join(format!("{name}.json"))
    }

    /// Entries meshctl creates directly under the root (what `down` removes).
    pub fn owned_entries(&self) -> Vec<PathBuf> {
        [
            "cluster.json",
            ".lock",
            "config",
            "istiod",
            "logs",
            "nodes",
            "pods",
            "prometheus",
        ]
        .iter()
        .map(|e| self.root.join(e))
        .collect()
    }

    /// Takes the state lock (blocking) for a read-modify-write of `cluster.json`.
    pub fn lock(&self) -> anyhow::Result<StateLock> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        Ok(StateLock {
            _lock: crate::sys::lock_file(&self.root.join(".lock"))?,
        })
    }

    /// The cluster, if `cluster.json` exists.
    pub fn load_opt(&self) -> anyhow::Result<Option<ClusterState>> {
        let path = self.cluster_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a meshctl cluster file", path.display()))?;
        Ok(Some(state))
    }

    /// The cluster; an error saying how to create one when there is none.
    pub fn load(&self) -> anyhow::Result<ClusterState> {
        self.load_opt()?.with_context(|| {
            format!(
                "no cluster in {} (no cluster.json): create one with `meshctl cluster up`, or \
                 point --state-dir / MESHCTL_STATE_DIR at it",
                self.root.display()
            )
        })
    }

    /// Writes `cluster.json` atomically.
    pub fn save(&self, state: &ClusterState) -> anyhow::Result<()> {
        let json = serde_json::to_string_pretty(state).context("encoding cluster.json")?;
        write_atomic(&self.cluster_file(), json.as_bytes())
    }
}

/// Writes `path` through a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_atomic_mode(path, contents, 0o644)
}

/// [`write_atomic`] for a secret (a node token): readable by root only, from the start.
pub fn write_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_atomic_mode(path, contents, 0o600)
}

fn write_atomic_mode(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().context("a file path without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_name = path
        .file_name()
        .context("a file path without a file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp); // a leftover of a killed run would keep its mode
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// The state lock; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _lock: nix::fcntl::Flock<File>,
}

/// `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster's name: the prefix of its network namespaces.
    pub name: String,
    /// The underlay's network namespace.
    pub underlay_netns: String,
    /// istiod-lite's gRPC address (CA and xDS), inside node n1.
    pub istiod_addr: SocketAddrV4,
    /// istiod-lite's monitoring address.
    pub istiod_monitoring_addr: SocketAddrV4,
    /// The nodes, n1 first.
    pub nodes: Vec<NodePlan>,
    /// Running daemons by component name (`istiod`, `ztunnel-<node>`, `agent-<node>`).
    pub daemons: BTreeMap<String, ProcRecord>,
}

impl ClusterState {
    /// Two nodes of cluster `mesh` as `cluster up` plans them, with no daemon: for tests.
    #[cfg(test)]
    pub fn example() -> ClusterState {
        use super::plan;
        ClusterState {
            name: "mesh".into(),
            underlay_netns: plan::underlay_netns("mesh"),
            istiod_addr: plan::istiod_addr(),
            istiod_monitoring_addr: plan::istiod_monitoring_addr(),
            nodes: plan::nodes("mesh", 2),
            daemons: Default::default(),
        }
    }

    /// A node by name; the error lists the nodes.
    pub fn node(&self, name: &str) -> anyhow::Result<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            format!(
                "no node {name} in cluster {} (nodes: {})",
                self.name,
                names.join(", ")
            )
        })
    }

    /// The node istiod-lite runs in.
    pub fn control_node(&self) -> anyhow::Result<&NodePlan> {
        self.nodes.first().context("the cluster has no nodes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::plan;

    #[test]
    fn cluster_file_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = StateDir::new(dir.path().join("state"));
        assert!(state_dir.load_opt().expect("no file is fine").is_none());
        assert!(state_dir.load().is_err());
        let state = ClusterState {
            name: "mesh".into(),
            underlay_netns: plan::underlay_netns("mesh"),
            istiod_addr: plan::istiod_addr(),
            istiod_monitoring_addr: plan::istiod_monitoring_addr(),
            nodes: plan::nodes("mesh", 2),
            daemons: BTreeMap::from([(
                "istiod".to_string(),
                ProcRecord {
                    pid: 42,
                    start_time: 7,
                },
            )]),
        };
        state_dir.save(&state).expect("save");
        assert_eq!(state_dir.load().expect("load"), state);
        assert_eq!(state.node("n2").expect("n2").index, 2);
        assert!(state.node("n3").is_err());
        let json = std::fs::read_to_string(state_dir.cluster_file()).expect("file");
        assert!(
            json.contains("\"istiod_addr\": \"10.250.0.1:15012\""),
            "{json}"
        );
    }

    #[test]
    fn layout_is_the_documented_one() {
        let s = StateDir::new("/var/lib/meshctl");
        assert_eq!(
            s.cni_conf_dir("n1"),
            Path::new("/var/lib/meshctl/nodes/n1/cni/net.d")
        );
        assert_eq!(
            s.ztunnel_socket("n2"),
            Path::new("/var/lib/meshctl/nodes/n2/ztunnel.sock")
        );
        assert_eq!(
            s.pod_file("demo", "web"),
            Path::new("/var/lib/meshctl/pods/demo/web.json")
        );
        assert_eq!(
            s.log("ztunnel-n1"),
            Path::new("/var/lib/meshctl/logs/ztunnel-n1.log")
        );
    }
}
