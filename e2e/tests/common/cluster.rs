//! The local cluster of `meshctl` under test, shared by the tests that bring one up
//! (`cluster.rs`, `prometheus.rs`): each test gets its own state directory and netns prefix,
//! and the cluster is taken down on drop, also when the test fails.
//!
//! Included with `#[path = "common/cluster.rs"] mod local_cluster;`: not every test binary
//! uses every helper.

#![allow(
    dead_code,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stderr
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use e2e::Topology;

/// Generous bound for anything eventually true.
pub const WAIT: Duration = Duration::from_secs(20);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One local cluster under test, taken down (and checked) on drop.
pub struct Cluster {
    pub meshctl: PathBuf,
    pub state: tempfile::TempDir,
    /// Test files (captures): not in the state directory, which `down` must leave empty.
    pub scratch: tempfile::TempDir,
    /// Cluster name: the prefix of its network namespaces (`<name>-n1`, `<name>-ul`).
    pub name: String,
    down: bool,
}

impl Cluster {
    pub fn new() -> Cluster {
        e2e::require_root();
        let name = format!(
            "c{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Cluster {
            meshctl: Topology::binary("meshctl").expect("meshctl binary"),
            state: tempfile::tempdir().expect("state dir"),
            scratch: tempfile::tempdir().expect("scratch dir"),
            name,
            down: false,
        }
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.meshctl)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .output()
            .expect("running meshctl")
    }

    /// Runs meshctl and returns stdout; panics with its output (and the daemons' log tails) on
    /// failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "meshctl {args:?} failed ({}):\n{}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn up(&self, extra: &[&str]) {
        let mut args = vec!["cluster", "up", "--nodes", "2", "--name", &self.name];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// Tail of every daemon log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        let Ok(entries) = std::fs::read_dir(self.state_dir().join("logs")) else {
            return all;
        };
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            all.push_str(&format!("--- {}\n", entry.path().display()));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    pub fn log(&self, file_part: &str, node: &str) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.state_dir().join("logs")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.contains(file_part) && name.contains(node) {
                    text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        text
    }

    /// Namespace `shop`: an HTTP echo server on n2 (sa `server`, port 8080) and a client on n1
    /// (sa `client`); returns the server's IP.
    pub fn shop(&self) -> String {
        let meshctl = self.meshctl.display().to_string();
        let echo = [meshctl.as_str(), "http-echo", "--port", "8080"];
        let server_ip = self.pod_run("server", "shop", "n2", &["--sa", "server"], &echo);
        let sleep = ["sleep", "infinity"];
        self.pod_run("client", "shop", "n1", &["--sa", "client"], &sleep);
        server_ip
    }

    pub fn pod_run(
        &self,
        name: &str,
        ns: &str,
        node: &str,
        extra: &[&str],
        cmd: &[&str],
    ) -> String {
        let mut args = vec!["pod", "run", name, "-n", ns, "--node", node];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(cmd);
        self.ok(&args);
        self.pod(name, ns).ip
    }

    /// A pod's row of `meshctl get pods`.
    pub fn pod(&self, name: &str, ns: &str) -> Row {
        let out = self.ok(&["get", "pods", "-n", ns]);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        for line in lines {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let get = |col: &str| {
                header
                    .iter()
                    .position(|h| *h == col)
                    .and_then(|i| cells.get(i))
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            };
            if get("NAME") == name {
                return Row {
                    ip: get("IP"),
                    captured: get("CAPTURED") == "yes",
                };
            }
        }
        panic!("pod {ns}/{name} not in `get pods`:\n{out}");
    }

    pub fn wait_captured(&self, name: &str, ns: &str, captured: bool) {
        e2e::wait_until(&format!("{ns}/{name} captured={captured}"), WAIT, || {
            self.pod(name, ns).captured == captured
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
    }

    /// `curl` from a pod; the body.
    pub fn curl(&self, from: &str, ns: &str, url: &str, header: &str) -> String {
        let out = self.run(&[
            "pod",
            "exec",
            from,
            "-n",
            ns,
            "--",
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-H",
            header,
            url,
        ]);
        assert!(
            out.status.success(),
            "curl from {from} to {url}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pid of the first process running `needle` in a pod's netns (to prove it was not
    /// restarted).
    pub fn pause_pid(&self, pod_netns: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "pids", pod_netns])
            .output()
            .expect("ip netns pids");
        let mut pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.first().map(|p| p.to_string()).unwrap_or_default()
    }

    /// Waits until ztunnel on `node` knows pod `ns/pod` as an HBONE workload (so requests to it
    /// are tunnelled from then on).
    pub fn wait_hbone(&self, node: &str, ns: &str, pod: &str) {
        let uid = format!("Kubernetes//v1/Pod/{ns}/{pod}");
        e2e::wait_until(&format!("{node} knows {uid} speaks HBONE"), WAIT, || {
            let out = Command::new("ip")
                .args(["netns", "exec", &format!("{}-{node}", self.name)])
                .args(["curl", "-s", "http://127.0.0.1:15000/config_dump"])
                .output()
                .expect("curl");
            let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            dump["config"]["workloads"].as_array().is_some_and(|ws| {
                ws.iter()
                    .any(|w| w["uid"] == uid.as_str() && w["tunnelProtocol"] == "HBONE")
            })
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
    }

    pub fn pod_netns(&self, ns: &str, pod: &str) -> String {
        format!("{}-{ns}-{pod}", self.name)
    }

    /// Takes the cluster down and asserts that nothing is left behind.
    pub fn down_and_check(&mut self) {
        self.ok(&["cluster", "down"]);
        self.down = true;
        let netns = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("{}-", self.name)))
            .map(String::from)
            .collect();
        assert!(left.is_empty(), "network namespaces left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        assert!(
            !mounts.contains(&format!("/{}-", self.name)),
            "netns mounts left behind"
        );
        let state = self.state_dir().to_string_lossy().into_owned();
        let procs = processes_mentioning(&state);
        assert!(procs.is_empty(), "processes left: {procs:?}");
        assert!(
            !self.state_dir().join("cluster.json").exists()
                && std::fs::read_dir(self.state_dir()).map_or(true, |mut d| d.next().is_none()),
            "files left in the state directory"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // `down` removes the logs: keep a copy for whoever reads the failure.
            let kept = std::env::temp_dir().join(format!("e2e-cluster-logs-{}", self.name));
            let _ = std::fs::create_dir_all(&kept);
            if let Ok(entries) = std::fs::read_dir(self.state_dir().join("logs")) {
                for entry in entries.flatten() {
                    let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
                }
            }
            eprintln!(
                "e2e: logs of cluster {} kept in {}",
                self.name,
                kept.display()
            );
        }
        if !self.down {
            let out = self.run(&["cluster", "down"]);
            if !out.status.success() {
                eprintln!(
                    "cluster down after a failed test: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// One row of `meshctl get pods`.
pub struct Row {
    pub ip: String,
    pub captured: bool,
}

/// Command lines of running processes that contain `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if text.contains(needle) && !zombie {
            found.push(text);
        }
    }
    found
}
