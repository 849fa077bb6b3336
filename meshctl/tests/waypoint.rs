//! `meshctl waypoint` on a real local cluster: `apply` stores the Gateway and deploys the
//! waypoint as Istio's deployer would (a pod of its own through the CNI chain, its Service
//! with a cluster IP, its service account), `list` shows it, a second `apply` changes
//! nothing, a Gateway given to `meshctl apply -f` is deployed the same way and goes with
//! `meshctl delete -f`, and `waypoint delete` removes everything.
//!
//! Needs root (it fails without it) and the mesh's binaries next to meshctl:
//! `cargo build -p istiod-lite -p ztunnel -p cni-plugin -p waypoint` first. A local-cluster
//! test: nextest runs it alone (`.config/nextest.toml`).
//!
//! Readiness: while the waypoint binary is the placeholder that exits at once ("not
//! functional yet"), the test only checks that the pod was started and that `list` reports why it is
//! not ready; with a waypoint that runs, it must become ready.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod common;

fn require_prerequisites() {
    common::require_prerequisites(&["istiod-lite", "ztunnel", "cni-plugin", "waypoint"]);
}

/// A cluster under test; `cluster down` on drop, so a failing test leaves nothing behind.
struct Cluster {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    name: String,
}

impl Cluster {
    fn run(&self, args: &[&str]) -> Output {
        common::meshctl(&self.state, args)
    }

    /// Runs meshctl and asserts success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        common::meshctl_ok(&self.state, args)
    }

    fn config(&self, rel: &str) -> PathBuf {
        self.state.join("config").join(rel)
    }

    /// `waypoint list -n NS -o json`.
    fn list(&self, ns: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["waypoint", "list", "-n", ns, "-o", "json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The pod record of `ns/pod`.
    fn pod(&self, ns: &str, pod: &str) -> serde_json::Value {
        let path = self.state.join("pods").join(ns).join(format!("{pod}.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect("pod record"))
            .expect("pod record is JSON")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.state.join("cluster.json").exists() {
            let out = self.run(&["cluster", "down"]);
            if !out.status.success() {
                eprintln!(
                    "cleanup: meshctl cluster down failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

/// Whether `pid` runs (a zombie does not: nothing here reaps orphans).
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        state.is_some_and(|s| s != "Z" && s != "X")
    })
}

/// The one row of `name`.
fn row<'a>(rows: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no waypoint {name} in {rows:?}"))
}

/// Checks the waypoint pod `ns/pod` runs: its network namespace, the pause process, the
/// waypoint process started with its identity and addresses.
fn assert_pod_started(cluster: &Cluster, ns: &str, pod: &str, gateway: &str) {
    let record = cluster.pod(ns, pod);
    let netns = record["netns"].as_str().expect("netns");
    assert!(netns_exists(netns), "no network namespace {netns}");
    assert!(
        alive(record["pause"]["pid"].as_i64().expect("pause pid")),
        "the pause process of {ns}/{pod} is gone"
    );
    assert!(
        record["main"]["pid"].as_i64().is_some(),
        "no waypoint process was started"
    );
    assert_eq!(record["service_account"], gateway);
    assert_eq!(
        record["labels"]["gateway.networking.k8s.io/gateway-name"],
        gateway
    );
    assert_eq!(record["labels"]["istio.io/dataplane-mode"], "none");
    assert_eq!(record["env"]["SERVICE_ACCOUNT"], gateway);
    assert_eq!(record["env"]["POD_NAMESPACE"], ns);
    assert_eq!(record["env"]["INSTANCE_IP"], record["ip"]);
    // Published to the config source, as istiod-lite needs to sign its certificate.
    let published = std::fs::read_to_string(cluster.config(&format!("pods/{ns}/{pod}.yaml")))
        .expect("the pod is in the config source");
    assert!(
        published.contains(&format!("serviceAccountName: {gateway}")),
        "{published}"
    );
}

/// Waits until `list` says the waypoint is ready.
fn assert_ready(cluster: &Cluster, ns: &str, name: &str, pod: &str) {
    let log = cluster
        .state
        .join("logs")
        .join(format!("pod-{ns}-{pod}.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = cluster.list(ns);
        let r = row(&rows, name);
        if r["ready"] == true {
            assert!(r["reason"].is_null(), "{r}");
            return;
        }
        let reason = r["reason"].as_str().unwrap_or_default().to_string();
        assert!(!reason.is_empty(), "not ready without a reason: {r}");
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "waypoint {ns}/{name} not ready in 30 s: {reason}\nits log:\n{log_text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_waypoint_is_deployed_listed_kept_and_removed_like_istio_s_deployer_does() {
    require_prerequisites();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster {
        state: tmp.path().join("state"),
        _tmp: tmp,
        name: format!("w{}", std::process::id()),
    };
    cluster.ok(&["cluster", "up", "--nodes", "2", "--name", &cluster.name]);

    // apply: the Gateway, the namespace label, then the deployment.
    let out = cluster.ok(&["waypoint", "apply", "-n", "shop", "--enroll-namespace"]);
    for line in [
        "gateway.gateway.networking.k8s.io/shop/waypoint created",
        "namespace/shop labeled istio.io/use-waypoint=waypoint",
        "serviceaccount/shop/waypoint created",
        "service/shop/waypoint created",
        "pod/shop/waypoint-",
        "waypoint shop/waypoint applied",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let gateway = std::fs::read_to_string(
        cluster.config("objects/gateway.gateway.networking.k8s.io/shop/waypoint.yaml"),
    )
    .expect("the Gateway is stored");
    assert!(
        gateway.contains("gatewayClassName: istio-waypoint"),
        "{gateway}"
    );
    assert!(
        gateway.contains("istio.io/waypoint-for: service"),
        "{gateway}"
    );
    let ns = std::fs::read_to_string(cluster.config("namespaces/shop.yaml")).expect("namespace");
    assert!(ns.contains("istio.io/use-waypoint: waypoint"), "{ns}");
    assert!(cluster
        .config("objects/serviceaccount/shop/waypoint.yaml")
        .is_file());
    let service = std::fs::read_to_string(cluster.config("objects/service/shop/waypoint.yaml"))
        .expect("the Service is stored");
    let service: serde_json::Value = resources::yaml_parse(&service).expect("yaml");
    let vip = service["spec"]["clusterIP"]
        .as_str()
        .expect("a cluster IP")
        .to_string();
    assert!(vip.starts_with("10.96."), "{vip}");
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(15008));

    let rows = cluster.list("shop");
    let wp = row(&rows, "waypoint");
    assert_eq!(wp["address"], vip.as_str());
    assert_eq!(wp["traffic_type"], "service");
    let pod = wp["pod"].as_str().expect("a waypoint pod").to_string();
    assert!(pod.starts_with("waypoint-"), "{pod}");
    assert_pod_started(&cluster, "shop", &pod, "waypoint");
    assert_ready(&cluster, "shop", "waypoint", &pod);
    let table = cluster.ok(&["waypoint", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells[..4] == ["waypoint", "shop", vip.as_str(), "service"]
        }),
        "{table}"
    );

    // Applied again: nothing new, same pod, same address.
    let again = cluster.ok(&["waypoint", "apply", "-n", "shop"]);
    assert!(
        again.contains("gateway.gateway.networking.k8s.io/shop/waypoint unchanged"),
        "{again}"
    );
    assert!(!again.contains("pod/"), "a second pod: {again}");
    let rows = cluster.list("shop");
    assert_eq!(row(&rows, "waypoint")["pod"], pod.as_str());
    assert_eq!(row(&rows, "waypoint")["address"], vip.as_str());

    // A Gateway applied by hand is deployed the same way, and goes with `delete -f`.
    let file = cluster.state.join("wp2.yaml");
    std::fs::write(
        &file,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: wp2\n  \
         namespace: shop\n  labels: {istio.io/waypoint-for: workload}\nspec:\n  \
         gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: \
         HBONE}]\n",
    )
    .expect("write");
    let file = file.to_str().expect("utf-8 path");
    let out = cluster.ok(&["apply", "-f", file]);
    assert!(out.contains("pod/shop/wp2-"), "{out}");
    let rows = cluster.list("shop");
    let wp2 = row(&rows, "wp2");
    assert_eq!(wp2["traffic_type"], "workload");
    let vip2 = wp2["address"].as_str().expect("an address");
    assert!(vip2.starts_with("10.96.") && vip2 != vip, "{vip2}");
    let pod2 = wp2["pod"].as_str().expect("a pod").to_string();
    assert_pod_started(&cluster, "shop", &pod2, "wp2");
    let netns2 = cluster.pod("shop", &pod2)["netns"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cluster.ok(&["delete", "-f", file]);
    assert!(out.contains(&format!("pod/shop/{pod2} deleted")), "{out}");
    assert!(!netns_exists(&netns2), "{netns2} is still there");
    assert!(!cluster.config("objects/service/shop/wp2.yaml").exists());
    assert!(!cluster
        .config("objects/serviceaccount/shop/wp2.yaml")
        .exists());
    assert_eq!(cluster.list("shop").len(), 1);

    // delete: everything goes, the namespace label too.
    let record = cluster.pod("shop", &pod);
    let netns = record["netns"].as_str().unwrap().to_string();
    let pause = record["pause"]["pid"].as_i64().unwrap();
    let out = cluster.ok(&["waypoint", "delete", "-n", "shop"]);
    for line in [
        "gateway.gateway.networking.k8s.io/shop/waypoint deleted",
        "namespace/shop unlabeled istio.io/use-waypoint",
        &format!("pod/shop/{pod} deleted"),
        "service/shop/waypoint deleted",
        "serviceaccount/shop/waypoint deleted",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    assert!(!netns_exists(&netns), "{netns} is still there");
    assert!(!alive(pause), "the pause process is still there");
    assert!(!cluster
        .state
        .join("pods/shop")
        .join(format!("{pod}.json"))
        .exists());
    assert!(!cluster.config(&format!("pods/shop/{pod}.yaml")).exists());
    assert!(!cluster
        .config("objects/service/shop/waypoint.yaml")
        .exists());
    assert!(!cluster
        .config("objects/serviceaccount/shop/waypoint.yaml")
        .exists());
    let ns = std::fs::read_to_string(cluster.config("namespaces/shop.yaml")).expect("namespace");
    assert!(!ns.contains("use-waypoint"), "{ns}");
    assert!(cluster.list("shop").is_empty());
    let gone = cluster.run(&["waypoint", "delete", "-n", "shop"]);
    assert!(
        !gone.status.success(),
        "deleting a missing waypoint succeeded"
    );

    cluster.ok(&["cluster", "down"]);
}
