//! `meshctl top` on a local cluster with traffic, as a person sees it: inside tmux (a 160x40
//! pane), the node rows and the workload rows appear (the server's with requests and
//! latencies from its waypoint), `s` re-sorts, `q` quits with status 0; and `-o json` prints
//! one snapshot whose rates are real (two scrapes).
//!
//! Needs root, tmux and curl, and the mesh's binaries next to meshctl
//! (`cargo build -p istiod-lite -p ztunnel -p cni-plugin` first).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod common;

use common::MESHCTL;

struct Cluster {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    traffic: Option<Child>,
    tmux: Option<String>,
}

impl Cluster {
    fn run(&self, args: &[&str]) -> Output {
        common::meshctl(&self.state, args)
    }

    /// Runs meshctl and asserts success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        common::meshctl_ok(&self.state, args)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(session) = &self.tmux {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", session])
                .output();
        }
        if let Some(mut child) = self.traffic.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.state.join("cluster.json").exists() {
            let out = self.run(&["cluster", "down"]);
            if !out.status.success() {
                eprintln!("cleanup: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

/// [`common::eventually`] with this file's 20 s.
fn eventually<T: std::fmt::Debug>(what: &str, check: impl FnMut() -> (bool, T)) -> T {
    common::eventually(what, Duration::from_secs(20), check)
}

/// A two-node cluster with an enrolled client (n1) calling an echo server (n2) in a loop,
/// through its Service, whose waypoint is in the path.
fn cluster_with_traffic(name: &str) -> Cluster {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster {
        state: tmp.path().join("state"),
        _tmp: tmp,
        traffic: None,
        tmux: None,
    };
    cluster.ok(&["cluster", "up", "--nodes", "2", "--name", name]);
    cluster.ok(&["label", "ns", "demo", "istio.io/dataplane-mode=ambient"]);
    cluster.ok(&[
        "pod",
        "run",
        "server",
        "-n",
        "demo",
        "--sa",
        "server",
        "--labels",
        "app=server",
        "--node",
        "n2",
        "--",
        MESHCTL,
        "http-echo",
    ]);
    cluster.ok(&[
        "pod", "run", "client", "-n", "demo", "--sa", "client", "--node", "n1", "--", "sleep",
        "infinity",
    ]);
    let service = cluster.state.parent().unwrap().join("service.yaml");
    std::fs::write(
        &service,
        "apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: demo}\n\
         spec:\n  selector: {app: server}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .unwrap();
    cluster.ok(&["apply", "-f", service.to_str().unwrap()]);
    cluster.ok(&[
        "waypoint",
        "apply",
        "-n",
        "demo",
        "--enroll-namespace",
        "--wait",
    ]);
    // The Service's VIP, once n1's ztunnel sends it through the waypoint.
    let vip = eventually("the server's Service with its waypoint on n1", || {
        let table = cluster.ok(&["ztunnel-config", "services", "--node", "n1"]);
        let vip = table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r.len() == 6 && r[1] == "server" && r[5].starts_with("waypoint."))
            .map(|r| r[2].to_string());
        (vip.is_some(), (vip, table))
    })
    .0
    .unwrap();
    let script = format!("while true; do curl -s -m 2 -o /dev/null http://{vip}/; sleep 0.1; done");
    cluster.traffic = Some(
        Command::new(MESHCTL)
            .arg("--state-dir")
            .arg(&cluster.state)
            .args([
                "pod", "exec", "client", "-n", "demo", "--", "sh", "-c", &script,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("traffic starts"),
    );
    cluster
}

#[test]
fn top_shows_nodes_and_workloads_under_tmux_and_quits_on_q_and_prints_json() {
    let name = format!("tp{}", std::process::id() % 100_000);
    let mut cluster = cluster_with_traffic(&name);

    // -o json: one snapshot from two scrapes a second apart.
    let snapshot = eventually(
        "a JSON snapshot with the server's connections and requests",
        || {
            let json = cluster.ok(&["top", "-o", "json", "--interval", "1"]);
            let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
            let server = v["workloads"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|w| w["namespace"] == "demo" && w["workload"] == "server")
                .cloned()
                .unwrap_or_default();
            let rate = |k: &str| server[k].as_f64().unwrap_or(0.0);
            (
                rate("connections_per_s") > 0.0 && rate("requests_per_s") > 0.0,
                v,
            )
        },
    );
    let server = snapshot["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workload"] == "server")
        .unwrap();
    // Every request is answered 200 by the echo server; the waypoint's histogram gives
    // latencies.
    assert_eq!(server["success_rate"].as_f64(), Some(1.0), "{snapshot}");
    let (p50, p99) = (
        server["p50_ms"].as_f64().unwrap(),
        server["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{snapshot}");
    let nodes: Vec<&str> = snapshot["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["n1", "n2"], "{snapshot}");
    assert!(
        snapshot["interval_s"].as_f64().unwrap() >= 1.0,
        "{snapshot}"
    );
    let n1 = &snapshot["nodes"][0];
    assert!(
        n1["connections_per_s"].as_f64().unwrap() > 0.0,
        "{snapshot}"
    );

    // The live view, in a terminal.
    let session = format!("top{name}");
    let done = cluster.state.parent().unwrap().join("top-exit");
    let command = format!(
        "{MESHCTL} --state-dir {} top -w --interval 1; echo $? > {}",
        cluster.state.display(),
        done.display()
    );
    let started = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "40",
            &command,
        ])
        .status()
        .expect("tmux runs");
    assert!(started.success(), "tmux new-session");
    cluster.tmux = Some(session.clone());
    let capture = || {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let screen = eventually("node and workload rows on screen", || {
        let screen = capture();
        let rows_shown = [
            "NODE",
            "n1",
            "n2",
            "WORKLOAD",
            "server",
            "client",
            "rates over",
        ]
        .iter()
        .all(|s| screen.contains(s));
        (rows_shown, screen)
    });
    let server_row = screen
        .lines()
        .find(|l| l.contains("demo") && l.contains(" server "))
        .expect("a server row");
    assert!(
        server_row.contains("/s") && server_row.contains("ms"),
        "{screen}"
    );
    // `s` changes the sort, and the screen says so.
    Command::new("tmux")
        .args(["send-keys", "-t", &session, "s"])
        .status()
        .expect("send-keys");
    eventually("sorted by conn/s", || {
        let screen = capture();
        (screen.contains("sorted by conn/s"), screen)
    });
    Command::new("tmux")
        .args(["send-keys", "-t", &session, "q"])
        .status()
        .expect("send-keys");
    let code = eventually("top exited", || {
        let code = std::fs::read_to_string(&done).unwrap_or_default();
        (!code.is_empty(), code)
    });
    assert_eq!(code.trim(), "0", "top's exit status");
    cluster.tmux = None;
}
