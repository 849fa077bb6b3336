//! [`DirSource`]: a directory of Kubernetes YAML files, polled for changes.
//!
//! Files: every `*.yaml` and `*.yml` file under the directory, recursively (at most
//! [`MAX_DEPTH`] levels), skipping entries whose name starts with `.` (so the `..data` and
//! timestamped directories of a mounted ConfigMap are not read twice) and following symlinks
//! (ConfigMap mounts are symlinks). Files are read in path order; the later of two definitions
//! of the same object wins, with a warning.
//!
//! Changes: every poll interval (default 300 ms) the file list is stat-ed; when the set of
//! files or any file's modification time, size or inode changed, all files are re-read and a
//! new snapshot is built. A file rewritten with the same size, mtime and inode is not noticed
//! until its next change (editors and `kubectl cp` replace or resize files).
//!
//! Errors: at start, any unusable document (or an unlistable directory) refuses the start
//! with one error listing every problem, so the operator fixes them before the control plane
//! serves anything (an unreadable config is never served as an empty one; an empty directory
//! is an empty config). On a change, an
//! unusable document rejects the whole new snapshot: each problem is logged (`tracing::warn!`
//! with file, document index and reason), [`DirSource::problems`] lists them, the rejected
//! reload counter goes up, and the last good snapshot stays in force until the files are
//! fixed. Unknown kinds and duplicates are warnings only.
//!
//! Threads: the poll runs as a tokio task; stat-ing and reading happen on tokio's blocking
//! pool. Dropping the [`DirSource`] stops the task and closes the channel.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::{ClusterState, ConfigProblem, ConfigSource, ConfigSourceError};

/// How often the directory is checked for changes by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(300);

/// How deep directories are followed (guards against symlink loops).
pub const MAX_DEPTH: usize = 8;

/// (path, modification time, size, inode) of one file, to notice changes.
type Stamp = (PathBuf, Option<SystemTime>, u64, u64);

/// The outcome of listing the directory: what the last reload attempt was based on.
type Listing = Result<Vec<Stamp>, String>;

/// A config source over a directory of YAML files. See the module docs for the rules.
pub struct DirSource {
    shared: Arc<Shared>,
    poller: tokio::task::JoinHandle<()>,
}

struct Shared {
    dir: PathBuf,
    snapshots: watch::Sender<Arc<ClusterState>>,
    // Held only while a poll compares and records its outcome; never across an await.
    status: Mutex<Status>,
}

#[derive(Default)]
struct Status {
    /// The listing the last reload attempt (good or not) was based on.
    listing: Option<Listing>,
    problems: Vec<ConfigProblem>,
    warnings: Vec<ConfigProblem>,
    rejected_reloads: u64,
    reloads: u64,
}

impl std::fmt::Debug for DirSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirSource")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl DirSource {
    /// Reads `dir` now and starts watching it every `poll_interval`. Fails, listing every
    /// problem, if the directory cannot be listed or any document in it is unusable. Must be
    /// called inside a tokio runtime.
    pub fn open(dir: &Path, poll_interval: Duration) -> Result<DirSource, ConfigSourceError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ConfigSourceError::NoRuntime)?;
        let listing = list(dir);
        let stamps = listing.clone().map_err(|error| ConfigSourceError::List {
            dir: dir.to_path_buf(),
            error,
        })?;
        let built = read_all(&stamps, None).map_err(|problems| ConfigSourceError::Invalid {
            dir: dir.to_path_buf(),
            problems,
        })?;
        log_warnings(&built.warnings);
        tracing::info!(
            dir = %dir.display(),
            files = stamps.len(),
            objects = built.state.len(),
            "config read"
        );
        let (snapshots, _) = watch::channel(Arc::new(built.state));
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            snapshots,
            status: Mutex::new(Status {
                listing: Some(listing),
                warnings: built.warnings,
                ..Status::default()
            }),
        });
        let poller = runtime.spawn(poll(shared.clone(), poll_interval));
        Ok(DirSource { shared, poller })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Warnings of the latest reload attempt (ignored kinds, overridden duplicates).
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        self.shared.status().warnings.clone()
    }

    /// How many new snapshots were applied since start.
    pub fn reloads(&self) -> u64 {
        self.shared.status().reloads
    }
}

impl ConfigSource for DirSource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.shared.snapshots.subscribe()
    }

    fn current(&self) -> Arc<ClusterState> {
        self.shared.snapshots.borrow().clone()
    }

    fn problems(&self) -> Vec<ConfigProblem> {
        self.shared.status().problems.clone()
    }

    fn rejected_reloads(&self) -> u64 {
        self.shared.status().rejected_reloads
    }
}

impl Drop for DirSource {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, Status> {
        // A panic while holding the lock leaves at worst stale counters: recover them.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One poll: re-reads the files if the listing changed since the last attempt.
    fn check(&self) {
        let listing = list(&self.dir);
        if self.status().listing.as_ref() == Some(&listing) {
            return;
        }
        let outcome = match &listing {
            Err(error) => Err(vec![ConfigProblem {
                file: self.dir.clone(),
                document: None,
                item: None,
                reason: format!("cannot list the directory: {error}"),
            }]),
            Ok(stamps) => {
                let previous = self.snapshots.borrow().clone();
                read_all(stamps, Some(&previous))
            }
        };
        let mut status = self.status();
        status.listing = Some(listing);
        match outcome {
            Ok(built) => {
                log_warnings(&built.warnings);
                status.problems.clear();
                status.warnings = built.warnings;
                let changed = **self.snapshots.borrow() != built.state;
                if changed {
                    status.reloads += 1;
                    tracing::info!(
                        dir = %self.dir.display(),
                        objects = built.state.len(),
                        reloads = status.reloads,
                        "config changed; new snapshot in force"
                    );
                    self.snapshots.send_replace(Arc::new(built.state));
                } else {
                    tracing::debug!(dir = %self.dir.display(), "config files changed, objects did not");
                }
            }
            Err(problems) => {
                for p in &problems {
                    tracing::warn!(
                        file = %p.file.display(),
                        document = p.document,
                        item = p.item,
                        reason = %p.reason,
                        "unusable config document"
                    );
                }
                status.rejected_reloads += 1;
                tracing::warn!(
                    dir = %self.dir.display(),
                    problems = problems.len(),
                    rejected_reloads = status.rejected_reloads,
                    "config change rejected; the last good config stays in force"
                );
                status.problems = problems;
            }
        }
    }
}

async fn poll(shared: Arc<Shared>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; the directory was just read
    loop {
        ticks.tick().await;
        let shared = shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || shared.check()).await {
            tracing::error!(error = %e, "checking the config directory failed");
        }
    }
}

fn log_warnings(warnings: &[ConfigProblem]) {
    for w in warnings {
        tracing::warn!(
            file = %w.file.display(),
            document = w.document,
            item = w.item,
            reason = %w.reason,
            "config document ignored or overridden"
        );
    }
}

/// Reads and parses every listed file into one snapshot; invalid routing objects keep their
/// version from `previous`.
fn read_all(
    stamps: &[Stamp],
    previous: Option<&ClusterState>,
) -> Result<super::Built, Vec<ConfigProblem>> {
    let mut files = Vec::with_capacity(stamps.len());
    let mut problems = Vec::new();
    for (path, ..) in stamps {
        match std::fs::read_to_string(path) {
            Ok(text) => files.push((path.clone(), text)),
            Err(e) => problems.push(ConfigProblem {
                file: path.clone(),
                document: None,
                item: None,
                reason: format!("cannot read: {e}"),
            }),
        }
    }
    let built = ClusterState::build_keeping(files, previous);
    match (built, problems.is_empty()) {
        (Ok(built), true) => Ok(built),
        (Ok(_), false) => Err(problems),
        (Err(more), _) => {
            problems.extend(more);
            Err(problems)
        }
    }
}

/// The YAML files under `dir`, sorted, with their stamps.
fn list(dir: &Path) -> Listing {
    let mut stamps = Vec::new();
    walk(dir, 0, &mut stamps).map_err(|e| e.to_string())?;
    stamps.sort();
    Ok(stamps)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<Stamp>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // Follows symlinks, as ConfigMap mounts use them.
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                // A dangling symlink or a file deleted meanwhile: the next poll sees the result.
                tracing::debug!(file = %path.display(), error = %e, "cannot stat; skipping");
                continue;
            }
        };
        if meta.is_dir() {
            if depth + 1 < MAX_DEPTH {
                walk(&path, depth + 1, out)?;
            } else {
                tracing::warn!(dir = %path.display(), max_depth = MAX_DEPTH, "config directory nested too deep; not read");
            }
        } else if meta.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            out.push((path, meta.modified().ok(), meta.len(), inode(&meta)));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lists_yaml_recursively_skipping_hidden_entries_and_following_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        std::fs::create_dir_all(dir.join("policies/deep")).unwrap();
        std::fs::create_dir_all(dir.join("..2024_01_01")).unwrap();
        for f in [
            "a.yaml",
            "b.yml",
            "notes.txt",
            ".hidden.yaml",
            "policies/p.yaml",
            "policies/deep/q.yaml",
            "..2024_01_01/cm.yaml",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.join("..2024_01_01/cm.yaml"), dir.join("cm.yaml")).unwrap();
        let names: Vec<String> = list(dir)
            .unwrap()
            .into_iter()
            .map(|(p, ..)| p.strip_prefix(dir).unwrap().display().to_string())
            .collect();
        let mut expected = vec!["a.yaml", "b.yml", "policies/deep/q.yaml", "policies/p.yaml"];
        if cfg!(unix) {
            expected.insert(2, "cm.yaml");
        }
        assert_eq!(names, expected);
        assert!(list(&dir.join("missing")).is_err());
    }

    #[tokio::test]
    async fn open_refuses_an_unlistable_directory_or_bad_documents_naming_each() {
        let err =
            DirSource::open(Path::new("/nonexistent/config"), DEFAULT_POLL_INTERVAL).unwrap_err();
        assert!(matches!(err, ConfigSourceError::List { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/config"), "{err}");

        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.yaml"), "kind: Pod\n").unwrap();
        std::fs::write(
            root.path().join("b.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Pod\n",
        )
        .unwrap();
        let err = DirSource::open(root.path(), DEFAULT_POLL_INTERVAL).unwrap_err();
        let ConfigSourceError::Invalid { problems, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(problems.len(), 2, "{err}");
        assert!(
            err.to_string()
                .contains("a.yaml document 0: apiVersion is missing"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("b.yaml document 1: metadata.name is missing"),
            "{err}"
        );
    }

    #[test]
    fn open_outside_a_runtime_is_an_error_not_a_panic() {
        let root = tempfile::tempdir().unwrap();
        let err = DirSource::open(root.path(), DEFAULT_POLL_INTERVAL).unwrap_err();
        assert!(matches!(err, ConfigSourceError::NoRuntime), "{err}");
    }

    #[tokio::test]
    async fn an_unchanged_listing_is_not_re_read_and_equal_objects_are_not_republished() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("a.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
        )
        .unwrap();
        // A long interval: the test drives the checks itself.
        let source = DirSource::open(root.path(), Duration::from_secs(3600)).unwrap();
        let mut rx = source.subscribe();
        rx.borrow_and_update();
        source.shared.check();
        assert!(!rx.has_changed().unwrap());
        // Same objects written differently: files changed, snapshot did not.
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n",
        )
        .unwrap();
        source.shared.check();
        assert!(!rx.has_changed().unwrap());
        assert_eq!(source.reloads(), 0);
        // A real change is published.
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n",
        )
        .unwrap();
        source.shared.check();
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().namespaces.contains_key("b"));
        assert_eq!(source.reloads(), 1);
        // A bad change is rejected once, not once per poll.
        std::fs::write(&file, "kind: [").unwrap();
        source.shared.check();
        source.shared.check();
        assert_eq!(source.rejected_reloads(), 1);
        assert_eq!(source.problems().len(), 1);
        assert!(source.current().namespaces.contains_key("b"));
        // Fixing it clears the problems.
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n",
        )
        .unwrap();
        source.shared.check();
        assert!(source.problems().is_empty());
        assert!(source.current().namespaces.contains_key("c"));
    }
}
