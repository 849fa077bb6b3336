//! `meshctl cluster` on real kernel networking: the built meshctl brings up a two-node
//! cluster (istiod-lite, a ztunnel and a CNI node agent per node, each detached in its node's
//! network namespace), runs pods through the CNI chain, shows them, execs in one, and `down`
//! leaves no namespace, process or state behind.
//!
//! Needs root (it fails without it) and the mesh's binaries next to meshctl in the target
//! directory: `cargo build -p istiod-lite -p ztunnel -p cni-plugin` first (cargo builds only
//! this package's binaries for its tests).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

use common::{eventually, MESHCTL};

fn require_prerequisites() {
    common::require_prerequisites(&["istiod-lite", "ztunnel", "cni-plugin"]);
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

    fn prefix(&self) -> String {
        format!("{}-", self.name)
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

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect()
}

/// Pids running inside `netns`.
fn netns_pids(netns: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `pid` runs (a zombie does not: nothing here reaps orphans).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        state.is_some_and(|s| s != "Z" && s != "X")
    })
}

/// A whitespace table with a header row into one map per row.
fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .expect("a header row")
        .split_whitespace()
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split_whitespace())
                .map(|(c, v)| ((*c).to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn a_two_node_cluster_runs_pods_and_down_leaves_nothing() {
    require_prerequisites();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster {
        state: tmp.path().join("state"),
        _tmp: tmp,
        // Unique per run; letters and digits only.
        name: format!("t{}", std::process::id()),
    };
    let prefix = cluster.prefix();
    cluster.ok(&["cluster", "up", "--nodes", "2", "--name", &cluster.name]);
    let status = cluster.ok(&["cluster", "status"]);
    assert_eq!(status.matches("running:").count(), 5, "{status}");
    let synced_before = proxies_synced(&cluster, None);

    // Pods fill the nodes evenly; each prints its IP.
    let ip_a = cluster.ok(&["pod", "run", "a", "-n", "plain", "--", "sleep", "infinity"]);
    let ip_b = cluster.ok(&[
        "pod", "run", "b", "-n", "plain", "--sa", "bee", "--", "sleep", "infinity",
    ]);
    let (ip_a, ip_b) = (ip_a.trim(), ip_b.trim());
    assert!(ip_a.starts_with("10.244.1."), "{ip_a}");
    assert!(ip_b.starts_with("10.244.2."), "{ip_b}");
    let again = cluster.run(&["pod", "run", "a", "-n", "plain"]);
    assert!(!again.status.success(), "a second pod a was accepted");

    let pods = parse_table(&cluster.ok(&["get", "pods"]));
    let row = |name: &str| {
        pods.iter()
            .find(|p| p["NAME"] == name)
            .unwrap_or_else(|| panic!("no pod {name} in {pods:?}"))
            .clone()
    };
    let (a, b) = (row("a"), row("b"));
    assert_eq!(
        (
            a["NAMESPACE"].as_str(),
            a["NODE"].as_str(),
            a["IP"].as_str()
        ),
        ("plain", "n1", ip_a)
    );
    assert_eq!((b["NODE"].as_str(), b["IP"].as_str()), ("n2", ip_b));
    assert_eq!(b["SERVICE-ACCOUNT"], "bee");
    // An unlabelled namespace is not in the mesh.
    assert_eq!(
        (a["CAPTURED"].as_str(), b["CAPTURED"].as_str()),
        ("no", "no")
    );

    // exec runs inside the pod's namespace and passes the exit status through.
    let addr = cluster.ok(&[
        "pod", "exec", "a", "-n", "plain", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(addr.contains(&format!("inet {ip_a}/24")), "{addr}");
    let code = cluster.run(&[
        "pod", "exec", "a", "-n", "plain", "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(code.status.code(), Some(7));

    // The debug verbs: what n1's ztunnel holds, and the components' logs.
    // The pod reaches n1's ztunnel by an xDS push, which may still be in flight.
    eventually(
        "pod a in n1's ztunnel",
        std::time::Duration::from_secs(10),
        || {
            let workloads =
                parse_table(&cluster.ok(&["ztunnel-config", "workloads", "--node", "n1"]));
            let found = workloads
                .iter()
                .any(|w| w["NAME"] == "a" && w["IP"] == ip_a);
            (found, workloads)
        },
    );
    // The pods changed the addresses: both ztunnels are brought to the new version.
    proxies_synced(&cluster, Some(&synced_before));
    let json = cluster.ok(&["ztunnel-config", "workloads", "--node", "n2", "-o", "json"]);
    assert!(json.trim_start().starts_with('['), "{json}");
    let certs = cluster.ok(&["ztunnel-config", "certificates", "--node", "n1"]);
    assert!(certs.starts_with("IDENTITY"), "{certs}");
    let missing = cluster.run(&["ztunnel-config", "services", "--node", "n9"]);
    assert!(
        !missing.status.success()
            && String::from_utf8_lossy(&missing.stderr).contains("no node \"n9\""),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let log = cluster.ok(&["logs", "ztunnel", "--node", "n1"]);
    assert!(!log.trim().is_empty(), "an empty ztunnel log");
    assert!(!cluster.ok(&["logs", "istiod-lite"]).trim().is_empty());
    let bad = cluster.run(&["logs", "envoy"]);
    assert!(!bad.status.success());

    held_open_connections_are_listed_until_closed(&cluster, ip_a);

    // Everything that runs, before `down`.
    let namespaces = netns_with_prefix(&prefix);
    assert_eq!(namespaces.len(), 6, "{namespaces:?}"); // underlay, 2 nodes, 3 pods
    let pids: Vec<i32> = namespaces.iter().flat_map(|n| netns_pids(n)).collect();
    assert!(pids.len() >= 10, "daemons and pod processes: {pids:?}");

    let down = cluster.ok(&["cluster", "down"]);
    assert!(down.contains("is down"), "{down}");
    assert_eq!(netns_with_prefix(&prefix), Vec::<String>::new());
    let left: Vec<i32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left after down: {left:?}");
    assert!(
        !cluster.state.exists(),
        "the state directory is still there"
    );
    // A second `down` is harmless.
    cluster.ok(&["cluster", "down"]);
}

/// `proxy-status`: waits until both nodes' ztunnels are listed with addresses and
/// authorizations SYNCED (and, given the address version seen `before`, at another version);
/// returns the address version they hold.
fn proxies_synced(cluster: &Cluster, before: Option<&str>) -> String {
    let syncz = eventually_15s("two ztunnels synced", || {
        let table = parse_table(&cluster.ok(&["proxy-status"]));
        let nodes: Vec<&str> = table.iter().map(|p| p["NODE"].as_str()).collect();
        let synced = table.iter().all(|p| {
            p["TYPE"] == "ztunnel" && p["ADDRESS"] == "SYNCED" && p["AUTHORIZATION"] == "SYNCED"
        });
        let json: serde_json::Value =
            serde_json::from_str(&cluster.ok(&["proxy-status", "-o", "json"])).expect("JSON");
        let versions: Vec<(String, String)> = json
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| {
                let address = &p["xds"][0];
                assert_eq!(address["type"], "address");
                (
                    address["acked_version"].as_str().unwrap_or("-").to_string(),
                    address["istiod_version"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                )
            })
            .collect();
        let current = versions
            .iter()
            .all(|(acked, istiod)| acked == istiod && Some(acked.as_str()) != before);
        (
            synced && current && nodes.len() == 2 && nodes.contains(&"n1") && nodes.contains(&"n2"),
            (table, versions),
        )
    });
    syncz.1[0].0.clone()
}

/// `ztunnel-config connections`: a connection from pod a (n1) to an echo server on n2 shows
/// on both nodes' ztunnels while it is held open (outbound on n1, inbound on n2, both ends
/// and identities, the bytes sent so far), and is gone once the client closes it.
fn held_open_connections_are_listed_until_closed(cluster: &Cluster, ip_a: &str) {
    cluster.ok(&["label", "ns", "plain", "istio.io/dataplane-mode=ambient"]);
    let ip_echo = cluster.ok(&[
        "pod",
        "run",
        "echo",
        "-n",
        "plain",
        "--node",
        "n2",
        "--",
        MESHCTL,
        "http-echo",
    ]);
    let ip_echo = ip_echo.trim().to_string();
    eventually_15s("pods a and echo captured and known to n1's ztunnel", || {
        let pods = parse_table(&cluster.ok(&["get", "pods"]));
        let captured = ["a", "echo"].iter().all(|n| {
            pods.iter()
                .any(|p| p["NAME"] == *n && p["CAPTURED"] == "yes")
        });
        let known = cluster
            .ok(&["ztunnel-config", "workloads", "--node", "n1"])
            .contains(&ip_echo);
        (captured && known, pods)
    });
    // An unfinished request head: the server waits for the rest (up to 10 s).
    let script = format!(
        "exec 3<>/dev/tcp/{ip_echo}/8080 && printf 'GET / HTTP/1.1\\r\\n' >&3 && echo open && {{ read _ || true; }}"
    );
    let mut client = Command::new(MESHCTL)
        .arg("--state-dir")
        .arg(&cluster.state)
        .args([
            "pod", "exec", "a", "-n", "plain", "--", "bash", "-c", &script,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("client starts");
    let listed = |node: &str, direction: &str| {
        let table = parse_table(&cluster.ok(&["ztunnel-config", "connections", "--node", node]));
        let found = table.iter().any(|c| {
            c["DIRECTION"] == direction
                && c["POD"] == if direction == "outbound" { "a" } else { "echo" }
                && c["SOURCE"].starts_with(ip_a)
                && c["DESTINATION"] == format!("{ip_echo}:8080")
                && c["SOURCE-IDENTITY"] == "spiffe://cluster.local/ns/plain/sa/default"
                && c["SENT"] == "16B"
                && c["STATE"] == "open"
        });
        (found, table)
    };
    eventually_15s("the held-open connection is outbound on n1", || {
        listed("n1", "outbound")
    });
    eventually_15s("the held-open connection is inbound on n2", || {
        listed("n2", "inbound")
    });
    let json = cluster.ok(&[
        "ztunnel-config",
        "connections",
        "--node",
        "n1",
        "-o",
        "json",
    ]);
    assert!(json.contains("\"bytes_sent\": 16"), "{json}");

    drop(client.stdin.take()); // `read` ends: the client closes the connection
    let status = client.wait().expect("client ends");
    assert!(status.success(), "client: {status}");
    for node in ["n1", "n2"] {
        eventually_15s("the closed connection is gone", || {
            let table = cluster.ok(&["ztunnel-config", "connections", "--node", node]);
            (table.trim().lines().count() == 1, table)
        });
    }
}

#[test]
fn down_by_name_without_a_cluster_json_leaves_the_directory_s_files_alone() {
    require_prerequisites();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Someone's directory that happens to hold names meshctl uses.
    std::fs::create_dir_all(tmp.path().join("config")).expect("dir");
    std::fs::write(tmp.path().join("config/keep.yaml"), "mine").expect("file");
    let out = Command::new(MESHCTL)
        .arg("--state-dir")
        .arg(tmp.path())
        .args(["cluster", "down", "--name", "nobodyshere"])
        .output()
        .expect("meshctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("config/keep.yaml")).expect("still there"),
        "mine"
    );
    assert!(
        !tmp.path().join(".lock").exists(),
        "its own lock file is gone"
    );
}

/// [`eventually`] with this file's 15 s.
fn eventually_15s<T: std::fmt::Debug>(what: &str, check: impl FnMut() -> (bool, T)) -> T {
    eventually(what, std::time::Duration::from_secs(15), check)
}
