//! The directory config source over a real (temporary) directory: initial load, changes,
//! rejected changes, ignored kinds and deleted files; and its snapshots through translation.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use istiod_lite::config_source::{ConfigSource, ConfigSourceError, DirSource, ObjectKey};
use istiod_lite::translate::{resources, translate, TranslateOptions};

use support::cluster::{
    documents, web_pod, NAMESPACE_APPS, NAMESPACE_ISTIO_SYSTEM, POLICY_ALLOW_SLEEP, SERVICE_WEB,
};
use support::{eventually, logs, WAIT};

/// Short, so the tests are quick; the waits below are bounded by `WAIT`.
const POLL: Duration = Duration::from_millis(30);

// ---- log capture -------------------------------------------------------------------------

/// Whether some log line contains every one of `parts`.
fn logged(parts: &[&str]) -> bool {
    logs()
        .lines()
        .iter()
        .any(|line| parts.iter().all(|p| line.contains(p)))
}

// ---- helpers -----------------------------------------------------------------------------

/// Writes `dir/name` atomically (a hidden temporary file renamed into place), so the poller
/// never reads half a file.
fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    let parent = path.parent().expect("parent");
    std::fs::create_dir_all(parent).expect("mkdir");
    let file_name = path.file_name().expect("name").to_string_lossy();
    let temp = parent.join(format!(".{file_name}.tmp"));
    std::fs::write(&temp, text).expect("write");
    std::fs::rename(&temp, &path).expect("rename");
}

/// `apps/web.yaml`: the pod `web-1` and its service.
fn web() -> String {
    documents(&[&web_pod(1), SERVICE_WEB])
}

/// A directory holding namespaces, a pod and service, and (in a subdirectory) a policy.
fn cluster_dir() -> tempfile::TempDir {
    logs();
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "00-namespaces.yaml",
        &documents(&[NAMESPACE_APPS, NAMESPACE_ISTIO_SYSTEM]),
    );
    write(dir.path(), "apps/web.yaml", &web());
    write(dir.path(), "apps/policies/allow.yml", POLICY_ALLOW_SLEEP);
    dir
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

// ---- tests -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_load_reads_every_file_recursively() {
    let dir = cluster_dir();
    let source = DirSource::open(dir.path(), POLL).expect("opens");
    let state = source.current();
    assert_eq!(state.namespaces.len(), 2);
    assert!(state.pods.contains_key(&key("apps", "web-1")));
    assert!(state.services.contains_key(&key("apps", "web")));
    assert!(state
        .authorization_policies
        .contains_key(&key("apps", "allow-sleep")));
    assert!(source.problems().is_empty());
    assert_eq!(source.rejected_reloads(), 0);

    // The snapshot translates into the resources the config API serves.
    let translated = translate(&state, &TranslateOptions::default());
    assert!(translated.warnings.is_empty(), "{:?}", translated.warnings);
    let (addresses, authorizations) = resources(&translated);
    assert_eq!(
        addresses.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "Kubernetes//v1/Pod/apps/web-1",
            "apps/web.apps.svc.cluster.local"
        ]
    );
    assert_eq!(
        authorizations
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["apps/allow-sleep"]
    );
    let web = &translated.workloads[0];
    assert_eq!(web.authorization_policies, ["apps/allow-sleep"]);
    assert_eq!(web.tunnel_protocol, mesh::model::TunnelProtocol::Hbone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_file_publishes_a_new_snapshot() {
    let dir = cluster_dir();
    let source = DirSource::open(dir.path(), POLL).expect("opens");
    let mut snapshots = source.subscribe();
    let before = snapshots.borrow_and_update().clone();

    write(
        dir.path(),
        "apps/web.yaml",
        &web().replace("nodeName: node-1", "nodeName: node-2"),
    );
    tokio::time::timeout(WAIT, snapshots.changed())
        .await
        .expect("a new snapshot within the wait")
        .expect("source open");
    let after = snapshots.borrow_and_update().clone();
    let node = |s: &istiod_lite::config_source::ClusterState| {
        s.pods[&key("apps", "web-1")]
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
    };
    assert_eq!(node(&before).as_deref(), Some("node-1"));
    assert_eq!(node(&after).as_deref(), Some("node-2"));
    // The old snapshot is untouched: snapshots are immutable.
    assert_eq!(before.pods.len(), after.pods.len());
    assert_eq!(source.reloads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_file_is_reported_and_the_last_good_config_stays() {
    let dir = cluster_dir();
    let source = DirSource::open(dir.path(), POLL).expect("opens");
    let good = source.current();

    // A bad file is refused...
    write(
        dir.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: apps}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: apps}\nspec: {ports: 80}\n",
    );
    eventually("the change to be rejected", || {
        source.rejected_reloads() == 1
    })
    .await;
    // ...and so is every config that still holds it, even with a good edit beside it.
    write(
        dir.path(),
        "apps/web.yaml",
        &web().replace("podIP: 10.0.0.1", "podIP: 10.0.0.99"),
    );
    eventually("the second change to be rejected", || {
        source.rejected_reloads() == 2
    })
    .await;
    let problems = source.problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let problem = &problems[0];
    assert_eq!(problem.file, dir.path().join("broken.yaml"));
    assert_eq!(problem.document, Some(1));
    assert!(
        problem
            .reason
            .contains("spec.ports: invalid type: integer `80`, expected a sequence"),
        "{problem}"
    );
    assert!(
        Arc::ptr_eq(&source.current(), &good),
        "the last good snapshot stays"
    );
    let file = dir.path().join("broken.yaml").display().to_string();
    assert!(logged(&[
        "WARN",
        "unusable config document",
        &file,
        "document=1",
        "spec.ports"
    ]));
    assert!(logged(&[
        "WARN",
        "config change rejected; the last good config stays in force"
    ]));

    // Fixing the file applies everything, including the edit that waited.
    write(
        dir.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: apps}\n",
    );
    eventually("the fixed config to apply", || {
        source.current().pods.contains_key(&key("apps", "ok"))
    })
    .await;
    assert!(source.problems().is_empty());
    assert_eq!(source.rejected_reloads(), 2);
    let ip = source.current().pods[&key("apps", "web-1")]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone());
    assert_eq!(ip.as_deref(), Some("10.0.0.99"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kinds_are_ignored_with_a_warning() {
    let dir = cluster_dir();
    write(
        dir.path(),
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: apps}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    );
    let source = DirSource::open(dir.path(), POLL).expect("unknown kinds do not stop a start");
    assert_eq!(source.current().len(), 5);
    let warnings: Vec<String> = source.warnings().iter().map(ToString::to_string).collect();
    let file = dir.path().join("deploy.yaml").display().to_string();
    assert_eq!(
        warnings,
        [
            format!("{file} document 0: kind Deployment of apps/v1 is not used; ignored"),
            format!("{file} document 1: kind ConfigMap of v1 is not used; ignored"),
        ]
    );
    assert!(logged(&[
        "WARN",
        &file,
        "kind Deployment of apps/v1 is not used"
    ]));
    assert!(source.problems().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_file_removes_its_objects() {
    let dir = cluster_dir();
    let source = DirSource::open(dir.path(), POLL).expect("opens");
    assert_eq!(source.current().authorization_policies.len(), 1);
    std::fs::remove_file(dir.path().join("apps/policies/allow.yml")).expect("rm");
    eventually("the policy to go", || {
        source.current().authorization_policies.is_empty()
    })
    .await;
    let state = source.current();
    assert!(
        state.pods.contains_key(&key("apps", "web-1")),
        "other files stay"
    );
    // And a whole directory.
    std::fs::remove_dir_all(dir.path().join("apps")).expect("rm -r");
    eventually("the pod to go", || source.current().pods.is_empty()).await;
    assert_eq!(source.current().namespaces.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_document_at_start_refuses_the_start_naming_every_problem() {
    let dir = cluster_dir();
    write(dir.path(), "bad-1.yaml", "apiVersion: v1\nkind: Pod\n");
    write(dir.path(), "bad-2.yaml", "{{{");
    let err = DirSource::open(dir.path(), POLL).expect_err("refused");
    let ConfigSourceError::Invalid { problems, .. } = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(problems.len(), 2, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("bad-1.yaml document 0: metadata.name is missing"),
        "{text}"
    );
    assert!(text.contains("bad-2.yaml document 0: not YAML"), "{text}");
}
