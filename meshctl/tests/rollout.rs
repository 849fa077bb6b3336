//! `meshctl rollout restart ztunnel --node N` on a local cluster: the node's ztunnel is
//! replaced by a new process (new pid in `cluster status`, the old one gone) while requests
//! run through it, straight to a pod and through the namespace's waypoint, and none fails. Clear errors for an unknown node and a missing cluster.
//!
//! Needs root and the mesh's binaries next to meshctl (`cargo build -p istiod-lite -p ztunnel
//! -p cni-plugin -p waypoint`); runs in the nextest `local-cluster` group.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use common::{eventually, meshctl, meshctl_ok, MESHCTL};

/// `cluster down` on drop.
struct Cluster {
    _tmp: tempfile::TempDir,
    state: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.state.join("cluster.json").exists() {
            let _ = meshctl(&self.state, &["cluster", "down"]);
        }
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The pid of `node`'s ztunnel, from `cluster status` (NODE NETNS UNDERLAY-IP POD-CIDR
/// ZTUNNEL ...).
fn ztunnel_pid(state: &std::path::Path, node: &str) -> String {
    let status = meshctl_ok(state, &["cluster", "status"]);
    status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|z| z.strip_prefix("running:"))
        .unwrap_or_else(|| panic!("{node}'s ztunnel is not running: {status}"))
        .to_string()
}

#[test]
fn rollout_restart_replaces_a_nodes_ztunnel_while_requests_keep_succeeding() {
    common::require_prerequisites(&["istiod-lite", "ztunnel", "cni-plugin", "waypoint"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster {
        state: tmp.path().join("state"),
        _tmp: tmp,
    };
    let state = cluster.state.as_path();

    // No cluster yet: a clear error.
    let out = meshctl(state, &["rollout", "restart", "ztunnel", "--node", "n1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("meshctl cluster up"),
        "{}",
        stderr(&out)
    );

    let name = format!("r{}", std::process::id());
    meshctl_ok(state, &["cluster", "up", "--nodes", "2", "--name", &name]);
    // `demo` gets a waypoint; `direct` does not (traffic to its pods goes straight to them).
    for ns in ["demo", "direct"] {
        meshctl_ok(
            state,
            &["label", "ns", ns, "istio.io/dataplane-mode=ambient"],
        );
    }
    let http_server = |ns: &str| -> String {
        // `pod run` prints the pod's IP.
        meshctl_ok(
            state,
            &[
                "pod",
                "run",
                "server",
                "-n",
                ns,
                "--node",
                "n2",
                "--labels",
                "app=server",
                "--",
                MESHCTL,
                "http-echo",
                "--port",
                "8080",
                "--name",
                "server",
            ],
        )
        .trim()
        .to_string()
    };
    http_server("demo");
    let server_ip = http_server("direct");
    meshctl_ok(
        state,
        &[
            "pod", "run", "client", "-n", "demo", "--node", "n1", "--", "sleep", "infinity",
        ],
    );
    // A Service whose traffic goes through the namespace's waypoint.
    let service = state.with_file_name("service.yaml");
    std::fs::write(
        &service,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
         spec: {clusterIP: 10.96.0.80, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}\n",
    )
    .expect("service yaml");
    meshctl_ok(state, &["apply", "-f", service.to_str().unwrap()]);
    meshctl_ok(
        state,
        &[
            "waypoint",
            "apply",
            "-n",
            "demo",
            "--enroll-namespace",
            "--wait",
        ],
    );
    let direct = format!("http://{server_ip}:8080/");
    let via_waypoint = "http://10.96.0.80/".to_string();
    // Loops of requests, one after another each, until `stop` exists (with `once`: a single
    // request per URL). Each answer is printed as `<status> <url>`.
    let stop = state.with_file_name("stop-requests");
    let curl = |urls: &[&str], once: bool| -> Command {
        let mut c = Command::new(MESHCTL);
        c.arg("--state-dir")
            .arg(state)
            .args(["pod", "exec", "client", "-n", "demo", "--", "sh", "-c"]);
        let until = if once {
            "-e /".to_string()
        } else {
            format!("-e {}", stop.display())
        };
        let script: String = urls
            .iter()
            .map(|url| {
                format!(
                    "(while :; do curl -s -o /dev/null --max-time 5 -w '%{{http_code}} {url}\\n' {url} || echo 'FAIL {url}'; [ {until} ] && break; done) & "
                )
            })
            .collect();
        c.arg(format!("{script}wait"));
        c
    };
    eventually(
        "the server answers through the mesh and through the waypoint",
        Duration::from_secs(30),
        || {
            let out = curl(&[&direct, &via_waypoint], true)
                .output()
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (
                text.lines().filter(|l| l.starts_with("200 ")).count() == 2,
                text,
            )
        },
    );

    let out = meshctl(state, &["rollout", "restart", "ztunnel", "--node", "n9"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no node n9"), "{}", stderr(&out));

    // Requests from n1 to n2 run through the rollout of n2's ztunnel (and then n1's).
    let old = ztunnel_pid(state, "n2");
    // Two loops straight to the server, two through the waypoint.
    let load = curl(&[&direct, &direct, &via_waypoint, &via_waypoint], false)
        .stdout(Stdio::piped())
        .spawn()
        .expect("request loop");
    let rolled = meshctl_ok(state, &["rollout", "restart", "ztunnel", "--node", "n2"]);
    let new = ztunnel_pid(state, "n2");
    assert_ne!(old, new, "{rolled}");
    assert!(
        rolled.contains(&format!("ztunnel-n2 restarted: pid {old} -> {new}")),
        "{rolled}"
    );
    // Gone, or a zombie its reaper has not collected yet.
    let stat = std::fs::read_to_string(format!("/proc/{old}/stat")).unwrap_or_default();
    let state_field = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    assert!(
        matches!(state_field, None | Some("Z" | "X")),
        "the old ztunnel still runs: {stat}"
    );
    meshctl_ok(state, &["rollout", "restart", "ztunnel", "--node", "n1"]);
    std::fs::write(&stop, b"").expect("stop file");
    let out = load.wait_with_output().expect("request loop ends");
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    let total = codes.lines().count();
    let failed: Vec<&str> = codes.lines().filter(|l| !l.starts_with("200 ")).collect();
    let through_waypoint = codes.lines().filter(|l| l.contains("10.96.0.80")).count();
    eprintln!(
        "rollout: {total} requests during two rollouts ({through_waypoint} through the waypoint), {} failed",
        failed.len()
    );
    if !failed.is_empty() {
        let log =
            |args: &[&str]| String::from_utf8_lossy(&meshctl(state, args).stdout).into_owned();
        let tail = |text: String| {
            text.lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "failed requests: {failed:?}\n--- waypoint\n{}\n--- ztunnel n2\n{}\n--- ztunnel n1\n{}",
            tail(log(&["logs", "waypoint", "-n", "demo"])),
            tail(log(&["logs", "ztunnel", "--node", "n2"])),
            tail(log(&["logs", "ztunnel", "--node", "n1"])),
        );
    }
    assert!(total >= 10 && through_waypoint >= 3, "{codes}");
}
