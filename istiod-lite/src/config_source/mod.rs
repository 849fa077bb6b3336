//! Where the control plane's view of the cluster comes from.
//!
//! A [`ConfigSource`] publishes immutable [`ClusterState`] snapshots (namespaces, pods,
//! services, service accounts, authorization and peer-authentication policies, Gateways,
//! HTTPRoutes, GRPCRoutes, VirtualServices and DestinationRules) on a `tokio::sync::watch` channel; consumers (the xDS server, the CA's
//! [`ClusterPods`](crate::pods::ClusterPods)) read the latest one and wait for the next. A
//! snapshot is only ever replaced as a whole, so a consumer never sees half of a change.
//!
//! Two sources: [`DirSource`], a directory of Kubernetes YAML (the local cluster), and
//! [`KubeSource`], the Kubernetes API server followed with watchers; one state, two sources. The parsing ([`parse_file`]) and snapshot building
//! ([`ClusterState::build`]) are pure functions, tested without a file system.

mod dir;
mod kube;
mod parse;
mod state;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

pub use self::kube::{KubeSource, KubeSourceError};
pub use dir::{DirSource, DEFAULT_POLL_INTERVAL};
pub use parse::{parse_file, Kind, Located, Object, ParsedFile, Refused};
pub use state::{Built, ClusterState, ObjectKey};

/// A source of cluster snapshots.
pub trait ConfigSource: Send + Sync {
    /// A receiver that holds the current snapshot and is notified of each new one.
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>>;

    /// The snapshot in force now.
    fn current(&self) -> Arc<ClusterState> {
        self.subscribe().borrow().clone()
    }

    /// Why the latest attempt to change the config was refused (empty when it was applied);
    /// for status pages and debugging.
    fn problems(&self) -> Vec<ConfigProblem>;

    /// How many new configs were refused since start.
    fn rejected_reloads(&self) -> u64;
}

/// Something wrong (or, as a warning, worth knowing) about one file, document or list item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file.
    pub file: PathBuf,
    /// Zero-based index of the YAML document in the file; `None` for the whole file.
    pub document: Option<usize>,
    /// Zero-based index in the `items` of a `kind: List` document.
    pub item: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl ConfigProblem {
    /// Where: `<file>`, `<file> document <n>` or `<file> document <n> item <i>`.
    pub fn location(&self) -> String {
        let mut at = self.file.display().to_string();
        if let Some(document) = self.document {
            at.push_str(&format!(" document {document}"));
        }
        if let Some(item) = self.item {
            at.push_str(&format!(" item {item}"));
        }
        at
    }
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location(), self.reason)
    }
}

/// Why a config source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigSourceError {
    /// The directory cannot be listed.
    #[error("config directory {dir}: cannot list: {error}")]
    List {
        /// The directory.
        dir: PathBuf,
        /// What went wrong.
        error: String,
    },
    /// Some documents are unusable; the operator fixes them and restarts.
    #[error("config directory {dir}: {} unusable document(s), not starting:\n  {}", problems.len(), list(problems))]
    Invalid {
        /// The directory.
        dir: PathBuf,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
    /// Watching needs a tokio runtime, and none is running on this thread.
    #[error("the config directory watcher must be started inside a tokio runtime")]
    NoRuntime,
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_file_document_and_item() {
        let p = |document, item| ConfigProblem {
            file: "/cfg/a.yaml".into(),
            document,
            item,
            reason: "bad".into(),
        };
        assert_eq!(p(None, None).to_string(), "/cfg/a.yaml: bad");
        assert_eq!(p(Some(2), None).to_string(), "/cfg/a.yaml document 2: bad");
        assert_eq!(
            p(Some(0), Some(4)).to_string(),
            "/cfg/a.yaml document 0 item 4: bad"
        );
        let err = ConfigSourceError::Invalid {
            dir: "/cfg".into(),
            problems: vec![p(Some(1), None), p(None, None)],
        };
        assert_eq!(
            err.to_string(),
            "config directory /cfg: 2 unusable document(s), not starting:\n  /cfg/a.yaml document 1: bad\n  /cfg/a.yaml: bad"
        );
    }
}
