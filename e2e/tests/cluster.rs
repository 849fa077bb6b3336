//! The local cluster of `meshctl`, end to end: pods made through the real CNI chain (Debian's
//! `bridge` + `host-local`, then our plugin that the node agent installed into the conflist),
//! enrolled by the node agent, carried by ztunnel. Needs root; fails loudly without it.
//!
//! Each test brings up its own cluster (own state directory and netns prefix) and takes it down
//! at the end, checking that nothing is left. The tests of this binary run one at a time (see
//! `.config/nextest.toml`): every local cluster uses the pod CIDRs 10.244.<node>.0/24.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

#[path = "common/cluster.rs"]
mod local_cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use local_cluster::{Cluster, WAIT};

fn ztunnel_saw_mtls(c: &Cluster, node: &str, marker_peer: &str) -> bool {
    c.log("ztunnel", node).lines().any(|l| {
        l.contains("connection complete") && l.contains("mtls=true") && l.contains(marker_peer)
    })
}

#[test]
fn labelling_a_namespace_enrols_running_pods_honours_opt_out_and_releases_when_the_label_goes() {
    let mut c = Cluster::new();
    c.up(&[]);
    let server_ip = c.shop();
    c.pod_run(
        "legacy",
        "shop",
        "n1",
        &["--labels", "istio.io/dataplane-mode=none"],
        &["sleep", "infinity"],
    );
    let url = format!("http://{server_ip}:8080/");
    let server_pid = c.pause_pid(&c.pod_netns("shop", "server"));
    let client_pid = c.pause_pid(&c.pod_netns("shop", "client"));
    assert!(
        !c.pod("server", "shop").captured,
        "not enrolled before the label"
    );
    assert!(c
        .curl("client", "shop", &url, "x-step: plain")
        .contains("hello from"));

    // Label: running pods are enrolled, without restart, and talk HBONE across nodes.
    c.ok(&["label", "ns", "shop", "istio.io/dataplane-mode=ambient"]);
    c.wait_captured("server", "shop", true);
    c.wait_captured("client", "shop", true);
    assert_eq!(
        c.pause_pid(&c.pod_netns("shop", "server")),
        server_pid,
        "no restart"
    );
    assert_eq!(
        c.pause_pid(&c.pod_netns("shop", "client")),
        client_pid,
        "no restart"
    );
    assert!(
        !c.pod("legacy", "shop").captured,
        "the opt-out label keeps a pod out"
    );

    // Cross-node traffic is TLS on the wire only: the marker never shows on the underlay.
    c.wait_hbone("n1", "shop", "server");
    let underlay = format!("{}-ul", c.name);
    let capture = Tcpdump::start(&underlay, &c.scratch.path().join("wire.pcap"));
    e2e::retry_until("a request carried over HBONE", WAIT, || {
        c.curl("client", "shop", &url, "x-step: secret-marker-hbone");
        anyhow::ensure!(
            ztunnel_saw_mtls(&c, "n2", "sa/client"),
            "no mTLS access line on n2 yet"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let wire = capture.stop();
    assert!(
        !e2e::contains(&wire, b"secret-marker-hbone"),
        "the request crossed the underlay in plaintext"
    );
    let ports = tcp_ports(&c.scratch.path().join("wire.pcap"));
    assert!(ports.contains(&15008), "HBONE on 15008 crossed: {ports:?}");
    assert!(
        ports.iter().all(|p| [15008, 15012].contains(p)),
        "only HBONE (and the control plane) cross between nodes: {ports:?}"
    );
    // The opt-out pod still reaches the server, without the mesh.
    assert!(c
        .curl("legacy", "shop", &url, "x-step: legacy")
        .contains("hello from"));

    // Remove the label: released, still running, plaintext again.
    c.ok(&["label", "ns", "shop", "istio.io/dataplane-mode-"]);
    c.wait_captured("server", "shop", false);
    c.wait_captured("client", "shop", false);
    assert_eq!(
        c.pause_pid(&c.pod_netns("shop", "server")),
        server_pid,
        "no restart"
    );
    let save = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.pod_netns("shop", "client"),
            "iptables-save",
        ])
        .output()
        .expect("iptables-save");
    assert!(
        !String::from_utf8_lossy(&save.stdout).contains("ISTIO_"),
        "capture rules removed on release"
    );
    assert!(c
        .curl("client", "shop", &url, "x-step: released")
        .contains("hello from"));

    c.ok(&["pod", "delete", "legacy", "-n", "shop"]);
    c.down_and_check();
}

#[test]
fn pods_that_existed_before_the_mesh_are_captured_and_restarts_of_agent_or_ztunnel_lose_none() {
    let mut c = Cluster::new();
    // A plain cluster first: the conflist has no mesh plugin yet.
    c.up(&["--no-mesh"]);
    let server_ip = c.shop();
    c.ok(&["label", "ns", "shop", "istio.io/dataplane-mode=ambient"]);
    let url = format!("http://{server_ip}:8080/");

    // Installing the mesh captures the pods that were already there.
    c.ok(&["cluster", "start", "mesh"]);
    c.wait_captured("server", "shop", true);
    c.wait_captured("client", "shop", true);
    let conflist =
        std::fs::read_to_string(c.state_dir().join("nodes/n1/cni/net.d/10-meshnet.conflist"))
            .expect("conflist");
    assert!(
        conflist.contains("ambient-mesh-cni"),
        "the agent chained itself into the conflist: {conflist}"
    );
    let carried = |step: &str| {
        e2e::retry_until(&format!("{step}: carried over HBONE"), WAIT, || {
            let before = c.log("ztunnel", "n2").matches("mtls=true").count();
            c.curl("client", "shop", &url, &format!("x-step: {step}"));
            anyhow::ensure!(
                c.log("ztunnel", "n2").matches("mtls=true").count() > before,
                "not seen as mTLS on n2"
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    };
    carried("pre-existing");

    // A new pod while the mesh runs goes through the whole chain, our plugin included.
    c.pod_run("late", "shop", "n1", &[], &["sleep", "infinity"]);
    assert!(c.pod("late", "shop").captured, "captured at CNI ADD");

    // Restarting the agent loses no enrolled pod.
    c.ok(&["cluster", "restart", "agent"]);
    for pod in ["server", "client", "late"] {
        assert!(
            c.pod(pod, "shop").captured,
            "{pod} still captured after the agent restart"
        );
    }
    carried("after-agent-restart");

    // Restarting ztunnel loses none either: the agent hands every pod back.
    c.ok(&["cluster", "restart", "ztunnel"]);
    for pod in ["server", "client", "late"] {
        c.wait_captured(pod, "shop", true);
    }
    carried("after-ztunnel-restart");

    c.down_and_check();
    // A second `down` on nothing is fine.
    c.ok(&["cluster", "down"]);
}

/// tcpdump on every interface of a namespace.
struct Tcpdump {
    child: std::process::Child,
    path: PathBuf,
}

impl Tcpdump {
    fn start(netns: &str, path: &Path) -> Tcpdump {
        let log_path = path.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("tcpdump log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "tcpdump",
                "--immediate-mode",
                "-Z",
                "root",
            ])
            .args(["-U", "-n", "-s", "0", "-i", "any", "-w"])
            .arg(path)
            .arg("tcp")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tcpdump");
        // The file header is written before the capture runs; "listening on" comes after.
        e2e::wait_until("tcpdump listening", Duration::from_secs(5), || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("listening on")
        })
        .expect("tcpdump started");
        Tcpdump {
            child,
            path: path.to_path_buf(),
        }
    }

    /// SIGINT: tcpdump writes out what it holds and exits.
    fn stop(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(200));
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        std::fs::read(&self.path).expect("pcap")
    }
}

/// The low port of each TCP packet in a capture (the service side).
fn tcp_ports(pcap: &Path) -> std::collections::BTreeSet<u16> {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .arg("tcp")
        .output()
        .expect("tcpdump -r");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "... IP 10.250.0.1.43210 > 10.250.0.2.15008: Flags ..."
            let (_, rest) = l.split_once(" IP ")?;
            let (a, b) = rest.split_once(" > ")?;
            let port = |s: &str| {
                s.trim_end_matches(':')
                    .rsplit('.')
                    .next()?
                    .parse::<u16>()
                    .ok()
            };
            Some(port(a)?.min(port(b.split(':').next()?)?))
        })
        .collect()
}

/// Namespace isolation as a platform team writes it, applied with `meshctl apply`.
const ALLOW_SAME_NAMESPACE: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-same
  namespace: shop
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        namespaces: [shop]
";

#[test]
fn authz_check_names_the_policy_and_rule_that_decide_and_agrees_with_the_wire() {
    let mut c = Cluster::new();
    c.up(&[]);
    for ns in ["shop", "other"] {
        c.ok(&["label", "ns", ns, "istio.io/dataplane-mode=ambient"]);
    }
    let server_ip = c.shop();
    c.pod_run("intruder", "other", "n1", &[], &["sleep", "infinity"]);
    c.wait_hbone("n1", "shop", "server");
    let check = |from: &str| {
        let out = c.run(&["authz", "check", "--from", from, "--to", "shop/server:8080"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    // No policy yet: allowed, and it says that none applied.
    let (code, text) = check("other/intruder");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no policy applies"), "{text}");

    // AUDIT is refused by apply, and nothing of the file is written.
    let audit = c.scratch.path().join("audit.yaml");
    std::fs::write(
        &audit,
        format!(
            "{ALLOW_SAME_NAMESPACE}---\n{}",
            ALLOW_SAME_NAMESPACE
                .replace("name: allow-same", "name: audit-all")
                .replace("ALLOW", "AUDIT")
        ),
    )
    .expect("write");
    let out = c.run(&["apply", "-f", audit.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "AUDIT must be refused");
    assert!(err.contains("AUDIT"), "the refusal names the action: {err}");
    assert!(
        check("other/intruder").1.contains("no policy applies"),
        "nothing was applied"
    );

    // Namespace isolation: the check names the policy and rule, exit status 0 / 1.
    let policy = c.scratch.path().join("isolation.yaml");
    std::fs::write(&policy, ALLOW_SAME_NAMESPACE).expect("write");
    c.ok(&["apply", "-f", policy.to_str().unwrap()]);
    e2e::wait_until("the policy reaches n2's ztunnel", WAIT, || {
        check("other/intruder").0 == Some(1)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let (code, text) = check("shop/client");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("decided by: ALLOW policy shop/allow-same, rule 0"),
        "{text}"
    );
    let (_, text) = check("other/intruder");
    assert!(
        text.starts_with("DENIED")
            && text.contains("decided by: no ALLOW policy matches (checked shop/allow-same)"),
        "{text}"
    );
    // kubectl-style: pods without a namespace are in -n's.
    let out = c.run(&[
        "authz",
        "check",
        "-n",
        "shop",
        "--from",
        "client",
        "--to",
        "server:8080",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("shop/allow-same, rule 0"));
    // An unknown pod is an error (2), not a denial.
    assert_eq!(check("shop/ghost").0, Some(2));

    // The data plane agrees.
    let url = format!("http://{server_ip}:8080/");
    assert!(c
        .curl("client", "shop", &url, "x-step: allowed")
        .contains("hello from"));
    let out = c.run(&[
        "pod",
        "exec",
        "intruder",
        "-n",
        "other",
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        &url,
    ]);
    assert!(!out.status.success(), "the intruder is refused on the wire");
    e2e::wait_until("the denial is logged by n2's ztunnel", WAIT, || {
        c.log("ztunnel", "n2")
            .lines()
            .any(|l| l.contains("flags=DENY") && l.contains("shop/allow-same"))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));

    // `meshctl delete -f` takes it away again.
    c.ok(&["delete", "-f", policy.to_str().unwrap()]);
    e2e::wait_until("the policy is gone from n2's ztunnel", WAIT, || {
        check("other/intruder").0 == Some(0)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    c.down_and_check();
}
