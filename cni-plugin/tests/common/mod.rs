//! Shared by the node agent's tests on real kernel networking: a fake ztunnel, the plugin
//! called like a container runtime, pods the agent's scan finds, config files, and checks of
//! the rules in a pod.

// Each test file uses a different part.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use e2e::{PodOpts, Topology};
use mesh::zds::{Request, ZdsClient};
use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Add { uid: String, sa: String, ino: u64 },
    Del(String),
    SnapshotSent,
    Closed(String),
}

/// A fake ztunnel on a thread of its own: connects, acks everything (or refuses adds, when
/// `refuse_adds`), reports what it got.
pub fn fake_ztunnel(socket: PathBuf, refuse_adds: bool) -> mpsc::Receiver<Seen> {
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

pub fn next(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(TIMEOUT)
        .expect("fake ztunnel got nothing in time")
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

pub fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("stat netns"))
}

/// Runs the plugin like a container runtime; returns (exit code, stdout, stderr).
pub fn plugin(
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

pub fn chains_installed(pod: &e2e::Pod) -> usize {
    pod.iptables_save()
        .expect("iptables-save in pod")
        .lines()
        .filter(|l| {
            l.trim() == "-A PREROUTING -j ISTIO_PRERT" || l.trim() == "-A OUTPUT -j ISTIO_OUTPUT"
        })
        .count()
}

/// Our rules with their packet counters (`iptables-save -c`, lines naming our chains).
pub fn counted_rules(topo: &Topology, pod: &e2e::Pod) -> Vec<String> {
    topo.exec_in(pod, "iptables-save", &["-c"])
        .expect("iptables-save -c in pod")
        .lines()
        .filter(|l| l.contains("ISTIO_") && !l.starts_with(':'))
        .map(str::to_string)
        .collect()
}

/// Asserts the same rules in the same order, none of whose packet counters went back: a
/// rewrite resets them to zero, while packets arriving meanwhile (the agent's own ARP probe
/// of the pod, say) only raise them.
pub fn assert_not_rewritten(before: &[String], after: &[String], what: &str) {
    let split = |l: &String| -> (u64, String) {
        let (counters, rule) = l.split_once("] ").unwrap_or(("", l));
        let packets = counters
            .trim_start_matches('[')
            .split(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        (packets, rule.to_string())
    };
    let (before, after): (Vec<_>, Vec<_>) = (
        before.iter().map(split).collect(),
        after.iter().map(split).collect(),
    );
    let rules = |v: &[(u64, String)]| v.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>();
    assert_eq!(rules(&before), rules(&after), "{what}: rules changed");
    for ((was, rule), (now, _)) in before.iter().zip(&after) {
        assert!(
            now >= was,
            "{what}: counter of `{rule}` reset ({was} -> {now}): rewritten"
        );
    }
}

/// Sends a few packets from inside `pod` (a refused local connection), so the capture rules'
/// counters move.
pub fn traffic(topo: &Topology, pod: &e2e::Pod) {
    let _refused = topo.exec_in(pod, "curl", &["-s", "-m", "1", "http://127.0.0.1:1/"]);
}

pub fn has_route_rule(topo: &Topology, pod: &e2e::Pod) -> bool {
    topo.exec_in(pod, "ip", &["rule", "show"])
        .expect("ip rule")
        .contains("32764")
}

pub fn unique_ip(host: u8) -> std::net::Ipv4Addr {
    let third = u8::try_from(std::process::id() % 250).expect("fits") + 1;
    std::net::Ipv4Addr::new(10, 244, third, host)
}

/// Gives `pod` the extra address `ip` on its eth0 (as its Pod status will say), reachable
/// from its node over the node's bridge (the agent checks a pod it finds answers there).
pub fn add_address(topo: &Topology, pod: &e2e::Pod, ip: std::net::Ipv4Addr) {
    let host = format!("{ip}/32");
    topo.exec_in(pod, "ip", &["addr", "add", &host, "dev", "eth0"])
        .expect("ip addr add");
    let node = topo
        .nodes()
        .iter()
        .find(|n| n.name == pod.node)
        .expect("the pod's node");
    topo.exec_in(node, "ip", &["route", "add", &host, "dev", "br0"])
        .expect("ip route add");
}

/// A pod on `node` that holds the extra address `ip` (see [`add_address`]) and runs a pause
/// process, as a Kubernetes sandbox does: what the agent's scan finds.
pub fn running_pod(
    topo: &mut Topology,
    node: &e2e::Node,
    ns: &str,
    name: &str,
    ip: std::net::Ipv4Addr,
) -> (e2e::Pod, e2e::Proc) {
    let pod = topo
        .add_pod(node, ns, name, PodOpts::default())
        .expect("pod");
    add_address(topo, &pod, ip);
    let pause = topo
        .spawn_in(&pod, "sleep", &["infinity"], &[])
        .expect("pause process");
    (pod, pause)
}

/// The config directory the agent reads, created.
pub fn config_dir(topo: &Topology) -> std::path::PathBuf {
    let dir = topo.dir().join("config");
    std::fs::create_dir_all(&dir).expect("config dir");
    dir
}

/// Replaces `path` atomically (temp dot-file + rename), as a config sync would.
pub fn write_atomically(path: &Path, text: &str) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

pub fn namespace_yaml(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        ", labels: {istio.io/dataplane-mode: ambient}"
    } else {
        ""
    };
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}{labels}}}\n")
}

/// A running Pod object on `node` with address `ip`; `meta` is added to its metadata.
pub fn pod_yaml(ns: &str, name: &str, node: &str, ip: std::net::Ipv4Addr, meta: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, uid: uid-{name}{meta}}}\n\
         spec: {{nodeName: {node}, serviceAccountName: {name}-sa, containers: [{{name: main, image: local}}]}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
    )
}

/// Starts the agent in `node` for node name `n1` and waits until it is ready.
pub fn start_agent(topo: &Topology, node: &e2e::Node, extra: &[&str]) -> e2e::Proc {
    let agent = spawn_agent(topo, node, extra);
    agent
        .wait_for_log("node agent ready", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\nagent: {}", agent.log_tail()));
    agent
}

/// Starts the agent in `node` for node name `n1`.
pub fn spawn_agent(topo: &Topology, node: &e2e::Node, extra: &[&str]) -> e2e::Proc {
    let dir = topo.dir();
    let zds = dir.join("zds.sock");
    let cni = dir.join("cni.sock");
    let config = dir.join("config");
    let mut args = vec![
        "agent",
        "--zds-socket",
        zds.to_str().expect("utf-8"),
        "--cni-socket",
        cni.to_str().expect("utf-8"),
        "--config-dir",
        config.to_str().expect("utf-8"),
        "--node-name",
        "n1",
    ];
    args.extend_from_slice(extra);
    topo.spawn_in(
        node,
        env!("CARGO_BIN_EXE_cni-plugin"),
        &args,
        &[("RUST_LOG", "debug")],
    )
    .expect("start agent")
}

pub fn add_of(pod: &e2e::Pod, sa: &str) -> Seen {
    Seen::Add {
        uid: pod.uid.clone(),
        sa: sa.into(),
        ino: inode(&netns_path(&pod.netns_name)),
    }
}

/// The next `n` events, in any order.
pub fn next_n(rx: &mpsc::Receiver<Seen>, n: usize) -> Vec<Seen> {
    (0..n).map(|_| next(rx)).collect()
}

pub fn wait_chains(pod: &e2e::Pod, want: usize, agent: &e2e::Proc) {
    e2e::wait_until(
        &format!("{} capture jumps in {}", want, pod.name),
        Duration::from_secs(5),
        || chains_installed(pod) == want,
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent: {}", agent.log_tail()));
}
