//! The node agent on real kernel networking: pods are network namespaces made by the e2e
//! harness, the agent is the built binary, the plugin is called like a container runtime
//! would, and a fake ztunnel (`mesh::zds::ZdsClient`) connects to the agent's ZDS socket.
//!
//! Needs root (network namespaces, iptables): fails loudly without it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use e2e::{PodOpts, Topology};
use mesh::zds::{Request, ZdsClient};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Add { uid: String, sa: String, ino: u64 },
    Del(String),
    SnapshotSent,
    Closed(String),
}

/// A fake ztunnel on a thread of its own: connects, acks everything (or refuses adds, when
/// `refuse_adds`), reports what it got.
fn fake_ztunnel(socket: PathBuf, refuse_adds: bool) -> mpsc::Receiver<Seen> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let client = match ZdsClient::connect(&socket).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Seen::Closed(format!("connect: {e}")));
                    return;
                }
            };
            loop {
                let seen = match client.next().await {
                    Ok(Request::Add { uid, info, netns }) => {
                        let ino = std::fs::metadata(format!("/proc/self/fd/{}", netns.as_raw_fd()))
                            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                            .expect("stat received netns");
                        Seen::Add {
                            uid,
                            sa: info.map(|i| i.service_account).unwrap_or_default(),
                            ino,
                        }
                    }
                    Ok(Request::Del { uid }) => Seen::Del(uid),
                    Ok(Request::SnapshotSent) => Seen::SnapshotSent,
                    Ok(other) => Seen::Closed(format!("unexpected {other:?}")),
                    Err(e) => {
                        let _ = tx.send(Seen::Closed(e.to_string()));
                        return;
                    }
                };
                let answer = match &seen {
                    Seen::Add { .. } if refuse_adds => Err("refused by the test".to_string()),
                    _ => Ok(()),
                };
                let _ = client.ack(answer).await;
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
    });
    rx
}

fn next(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(TIMEOUT)
        .expect("fake ztunnel got nothing in time")
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("stat netns"))
}

/// Runs the plugin like a container runtime; returns (exit code, stdout, stderr).
fn plugin(
    command: &str,
    netns: &Path,
    ns: &str,
    name: &str,
    conf: &Value,
) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cni-plugin"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("ctr-{ns}-{name}"))
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("stdin");
    let out = child.wait_with_output().expect("plugin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn chains_installed(pod: &e2e::Pod) -> usize {
    pod.iptables_save()
        .expect("iptables-save in pod")
        .lines()
        .filter(|l| {
            l.trim() == "-A PREROUTING -j ISTIO_PRERT" || l.trim() == "-A OUTPUT -j ISTIO_OUTPUT"
        })
        .count()
}

fn has_route_rule(topo: &Topology, pod: &e2e::Pod) -> bool {
    topo.exec_in(pod, "ip", &["rule", "show"])
        .expect("ip rule")
        .contains("32764")
}

#[test]
fn agent_captures_an_enrolled_pod_and_hands_it_to_ztunnel() {
    e2e::require_root();
    let mut topo = Topology::for_this_test().expect("topology");
    let node = topo.add_node("n1").expect("node");
    let sleep = topo
        .add_pod(&node, "mesh", "sleep", PodOpts::default())
        .expect("pod");
    let plain = topo
        .add_pod(&node, "plain", "web", PodOpts::default())
        .expect("pod");

    let dir = topo.dir().to_path_buf();
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(
        config_dir.join("cluster.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: sleep, namespace: mesh}\nspec: {serviceAccountName: sleep-sa}\n",
    )
    .expect("write config");
    let zds_socket = dir.join("zds.sock");
    let cni_socket = dir.join("cni.sock");
    let agent = topo
        .spawn_in(
            &node,
            env!("CARGO_BIN_EXE_cni-plugin"),
            &[
                "agent",
                "--zds-socket",
                zds_socket.to_str().expect("utf-8"),
                "--cni-socket",
                cni_socket.to_str().expect("utf-8"),
                "--config-dir",
                config_dir.to_str().expect("utf-8"),
            ],
            &[("RUST_LOG", "debug")],
        )
        .expect("start agent");
    agent
        .wait_for_log("node agent ready", TIMEOUT)
        .expect("agent ready");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&cni_socket)
            .expect("cni socket")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the CNI socket is root-only");

    let conf = |prev_ip: std::net::Ipv4Addr| {
        json!({
            "cniVersion": "1.0.0",
            "name": "k8s",
            "type": "cni-plugin",
            "agent_socket": cni_socket,
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": format!("{prev_ip}/24")}]},
        })
    };
    let sleep_ns = netns_path(&sleep.netns_name);
    let want_add = Seen::Add {
        uid: "Kubernetes//v1/Pod/mesh/sleep".into(),
        sa: "sleep-sa".into(),
        ino: inode(&sleep_ns),
    };

    // No ztunnel yet: ADD fails closed (the runtime will DEL and retry).
    let (code, out, _) = plugin("ADD", &sleep_ns, "mesh", "sleep", &conf(sleep.ip));
    assert_ne!(code, 0);
    let err: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(err["code"], json!(999), "{err}");
    assert!(
        err["details"]
            .as_str()
            .unwrap_or_default()
            .contains("no ztunnel"),
        "{err}"
    );
    let (code, _, err) = plugin("DEL", &sleep_ns, "mesh", "sleep", &conf(sleep.ip));
    assert_eq!(code, 0, "plugin: {err}");
    assert_eq!(chains_installed(&sleep), 0);

    // ztunnel connects: an empty snapshot.
    let ztunnel = fake_ztunnel(zds_socket.clone(), false);
    assert_eq!(next(&ztunnel), Seen::SnapshotSent);

    // ADD of an enrolled pod: rules in its netns, an add (with its netns) to ztunnel.
    let (code, out, err) = plugin("ADD", &sleep_ns, "mesh", "sleep", &conf(sleep.ip));
    assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        conf(sleep.ip)["prevResult"]
    );
    assert_eq!(
        chains_installed(&sleep),
        4,
        "{}",
        sleep.iptables_save().unwrap_or_default()
    );
    assert!(has_route_rule(&topo, &sleep));
    assert_eq!(next(&ztunnel), want_add);

    // ADD again: idempotent (rules replaced, not duplicated), announced again.
    let (code, _, err) = plugin("ADD", &sleep_ns, "mesh", "sleep", &conf(sleep.ip));
    assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
    assert_eq!(chains_installed(&sleep), 4);
    assert_eq!(next(&ztunnel), want_add);

    // A pod outside the mesh: passes, untouched, nothing sent.
    let plain_ns = netns_path(&plain.netns_name);
    let (code, _, err) = plugin("ADD", &plain_ns, "plain", "web", &conf(plain.ip));
    assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
    assert_eq!(chains_installed(&plain), 0);
    assert!(!has_route_rule(&topo, &plain));

    // A restarted ztunnel gets the enrolled pod in its snapshot; the old link is closed.
    let ztunnel2 = fake_ztunnel(zds_socket.clone(), false);
    assert_eq!(next(&ztunnel2), want_add);
    assert_eq!(next(&ztunnel2), Seen::SnapshotSent);
    assert!(matches!(next(&ztunnel), Seen::Closed(_)));

    // DEL: rules gone, del sent; DEL again (and of the plain pod) still succeeds.
    let (code, out, err) = plugin("DEL", &sleep_ns, "mesh", "sleep", &conf(sleep.ip));
    assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
    assert_eq!(out, "");
    assert_eq!(chains_installed(&sleep), 0);
    assert!(!has_route_rule(&topo, &sleep));
    assert_eq!(
        next(&ztunnel2),
        Seen::Del("Kubernetes//v1/Pod/mesh/sleep".into())
    );
    for (ns_path, ns, name) in [(&sleep_ns, "mesh", "sleep"), (&plain_ns, "plain", "web")] {
        let (code, _, err) = plugin("DEL", ns_path, ns, name, &conf(sleep.ip));
        assert_eq!(code, 0, "plugin: {err}");
    }
    assert!(
        ztunnel2.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing more is sent to ztunnel"
    );

    // A ztunnel that refuses the pod: ADD fails with its reason.
    let refusing = fake_ztunnel(zds_socket.clone(), true);
    assert_eq!(next(&refusing), Seen::SnapshotSent);
    let (code, out, _) = plugin("ADD", &sleep_ns, "mesh", "sleep", &conf(sleep.ip));
    assert_ne!(code, 0);
    let err: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(err["code"], json!(999), "{err}");
    assert!(
        err["details"]
            .as_str()
            .unwrap_or_default()
            .contains("refused by the test"),
        "{err}"
    );
    assert_eq!(next(&refusing), want_add);
    let (code, _, err) = plugin("DEL", &sleep_ns, "mesh", "sleep", &conf(sleep.ip));
    assert_eq!(code, 0, "plugin: {err}");
    assert_eq!(chains_installed(&sleep), 0);
    assert!(agent.is_running(), "agent log: {}", agent.log_tail());
}

/// The agent run in the root namespace by the test below, killed when the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn add_fails_when_the_agent_cannot_capture() {
    e2e::require_root();
    let topo = Topology::for_this_test().expect("topology");
    let dir = topo.dir().to_path_buf();
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(
        config_dir.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n",
    )
    .expect("write config");
    let cni_socket = dir.join("cni.sock");
    let _agent = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_cni-plugin"))
            .args(["agent", "--zds-socket"])
            .arg(dir.join("zds.sock"))
            .arg("--cni-socket")
            .arg(&cni_socket)
            .arg("--config-dir")
            .arg(&config_dir)
            .stderr(Stdio::null())
            .spawn()
            .expect("start agent"),
    );
    e2e::wait_until("agent socket", TIMEOUT, || cni_socket.exists()).expect("agent up");
    // A file that exists but is not a network namespace.
    let bogus = dir.join("not-a-netns");
    std::fs::write(&bogus, "").expect("write");
    let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "cni-plugin",
        "agent_socket": cni_socket, "prevResult": {"cniVersion": "1.0.0"}});
    let (code, out, _) = plugin("ADD", &bogus, "mesh", "sleep", &conf);
    assert_ne!(code, 0);
    let err: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(err["code"], json!(999), "{err}");
    assert!(
        err["details"]
            .as_str()
            .unwrap_or_default()
            .contains("network namespace"),
        "{err}"
    );
}
