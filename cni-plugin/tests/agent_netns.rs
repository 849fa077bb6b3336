//! The node agent on real kernel networking: pods are network namespaces made by the e2e
//! harness, the agent is the built binary, the plugin is called like a container runtime
//! would, and a fake ztunnel (`mesh::zds::ZdsClient`) connects to the agent's ZDS socket.
//!
//! Needs root (network namespaces, iptables): fails loudly without it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{PodOpts, Topology};
use serde_json::{json, Value};

mod common;

use common::*;

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
                "--node-name",
                "n1",
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
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&zds_socket)
            .expect("zds socket")
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "the ZDS socket is root-only: whoever connects gets every pod's netns"
    );

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
    // A ztunnel upgrade closes listeners while queued connections must move to the new ones.
    assert_eq!(
        topo.exec_in(&sleep, "sysctl", &["-n", "net.ipv4.tcp_migrate_req"])
            .expect("sysctl in pod")
            .trim(),
        "1",
        "the agent turns on tcp_migrate_req in the pod's namespace"
    );
    assert_eq!(next(&ztunnel), want_add);

    // ADD again: idempotent (rules already exact: nothing rewritten, so the jumps never
    // go away and their packet counters keep counting), announced again.
    traffic(&topo, &sleep);
    let counted = counted_rules(&topo, &sleep);
    assert!(
        counted
            .iter()
            .any(|l| l.contains("-A OUTPUT -j ISTIO_OUTPUT") && !l.starts_with("[0:0]")),
        "{counted:?}"
    );
    let (code, _, err) = plugin("ADD", &sleep_ns, "mesh", "sleep", &conf(sleep.ip));
    assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
    assert_eq!(chains_installed(&sleep), 4);
    assert_not_rewritten(&counted, &counted_rules(&topo, &sleep), "re-install");
    assert_eq!(next(&ztunnel), want_add);

    // A pod outside the mesh: passes, untouched, nothing sent.
    let plain_ns = netns_path(&plain.netns_name);
    let (code, _, err) = plugin("ADD", &plain_ns, "plain", "web", &conf(plain.ip));
    assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
    assert_eq!(chains_installed(&plain), 0);
    assert!(!has_route_rule(&topo, &plain));

    // A newer ztunnel (a restart, an upgrade) gets the enrolled pod in its snapshot; the old
    // link is parked: left open, sent nothing more (closing it would make that ztunnel
    // reconnect and take the pods back).
    let ztunnel2 = fake_ztunnel(zds_socket.clone(), false);
    assert_eq!(next(&ztunnel2), want_add);
    assert_eq!(next(&ztunnel2), Seen::SnapshotSent);

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
    assert!(
        ztunnel.try_recv().is_err(),
        "the parked link got nothing and was not closed"
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
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: sleep, namespace: mesh}\n",
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
            .args(["--node-name", "n1"])
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

    // A pod of an ambient namespace whose Pod object the source does not have yet: its
    // identity is unknown, so ADD fails closed and the runtime retries.
    let (code, out, _) = plugin(
        "ADD",
        Path::new("/proc/self/ns/net"),
        "mesh",
        "absent",
        &conf,
    );
    assert_ne!(code, 0);
    let err: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(err["code"], json!(999), "{err}");
    assert!(
        err["details"]
            .as_str()
            .unwrap_or_default()
            .contains("Pod mesh/absent not yet in the config source; the runtime will retry"),
        "{err}"
    );
}

// ---- Reconciliation, rediscovery and install ----

/// A pod address of the local cluster's 10.244.0.0/16, unique to this test process and `host`:
/// harness pods of concurrent tests share their 10.1x.0.x addresses, and the agent finds
/// pods by address across every namespace of the machine.
#[test]
fn agent_finds_pods_that_exist_before_it_starts_and_after_a_restart() {
    e2e::require_root();
    let mut topo = Topology::for_this_test().expect("topology");
    let node = topo.add_node("n1").expect("node");
    let web = topo
        .add_pod(&node, "mesh", "web", PodOpts::default())
        .expect("pod");
    // Capture rules left from before, in a pod whose namespace is not (any more) ambient.
    let stale = PodOpts {
        captured: true,
        ..PodOpts::default()
    };
    let old = topo.add_pod(&node, "plain", "old", stale).expect("pod");
    // Ambient, but the Pod object places it on another node: not this agent's.
    let far = topo
        .add_pod(&node, "mesh", "far", PodOpts::default())
        .expect("pod");
    let (web_ip, old_ip, far_ip) = (unique_ip(2), unique_ip(3), unique_ip(4));
    let mut sleepers = Vec::new();
    for (pod, ip) in [(&web, web_ip), (&old, old_ip), (&far, far_ip)] {
        add_address(&topo, pod, ip);
        // A process holds each pod namespace, as a pause container does.
        sleepers.push(
            topo.spawn_in(pod, "sleep", &["infinity"], &[])
                .expect("sleep"),
        );
    }
    let config_dir = config_dir(&topo);
    let cluster = |web_meta: &str| {
        [
            namespace_yaml("mesh", true),
            namespace_yaml("plain", false),
            pod_yaml("mesh", "web", "n1", web_ip, web_meta),
            pod_yaml("plain", "old", "n1", old_ip, ""),
            pod_yaml("mesh", "far", "n2", far_ip, ""),
        ]
        .concat()
    };
    write_atomically(&config_dir.join("cluster.yaml"), &cluster(""));
    assert_eq!(chains_installed(&old), 4, "stale rules in place");

    // Ready means the start pass ran: web is captured, old cleared, far untouched.
    let agent = start_agent(&topo, &node, &[]);
    assert_eq!(chains_installed(&web), 4, "agent: {}", agent.log_tail());
    assert!(has_route_rule(&topo, &web));
    assert_eq!(chains_installed(&old), 0, "agent: {}", agent.log_tail());
    assert_eq!(chains_installed(&far), 0);
    let zds_socket = topo.dir().join("zds.sock");
    let ztunnel = fake_ztunnel(zds_socket.clone(), false);
    assert_eq!(next(&ztunnel), add_of(&web, "web-sa"));
    assert_eq!(next(&ztunnel), Seen::SnapshotSent);

    // A restart loses nothing: the rules stay (found exact, so not rewritten: never a moment
    // without them, counters kept) and the new agent's first snapshot carries the pod again.
    traffic(&topo, &web);
    let counted = counted_rules(&topo, &web);
    agent.stop().expect("stop agent");
    assert!(matches!(next(&ztunnel), Seen::Closed(_)));
    assert_eq!(chains_installed(&web), 4);
    let agent = start_agent(&topo, &node, &["--reconcile-interval-ms", "100"]);
    assert_eq!(chains_installed(&web), 4, "agent: {}", agent.log_tail());
    assert_not_rewritten(
        &counted,
        &counted_rules(&topo, &web),
        &format!("agent restart; agent: {}", agent.log_tail()),
    );
    let ztunnel = fake_ztunnel(zds_socket, false);
    assert_eq!(next(&ztunnel), add_of(&web, "web-sa"));
    assert_eq!(next(&ztunnel), Seen::SnapshotSent);

    // The runtime tears the sandbox down while its pause process and Pod object still exist:
    // the DEL (a container id this agent never saw) removes the rules, and the reconcile loop
    // does not capture that namespace again.
    let cni_socket = topo.dir().join("cni.sock");
    let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "cni-plugin",
        "agent_socket": cni_socket,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": format!("{web_ip}/32")}]}});
    let web_ns = netns_path(&web.netns_name);
    // First a late DEL of an older sandbox of the pod (another namespace, or one already
    // gone): the agent found web by a scan and knows no container id, so only the netns
    // tells; the live sandbox keeps its capture.
    for older in [netns_path(&far.netns_name), topo.dir().join("gone-netns")] {
        let (code, _, err) = plugin("DEL", &older, "mesh", "web", &conf);
        assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
        assert_eq!(chains_installed(&web), 4, "agent: {}", agent.log_tail());
    }
    assert!(
        ztunnel.recv_timeout(Duration::from_millis(300)).is_err(),
        "no del sent; agent: {}",
        agent.log_tail()
    );
    let (code, _, err) = plugin("DEL", &web_ns, "mesh", "web", &conf);
    assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
    assert_eq!(chains_installed(&web), 0);
    assert!(!has_route_rule(&topo, &web));
    assert_eq!(next(&ztunnel), Seen::Del(web.uid.clone()));
    assert!(
        ztunnel.recv_timeout(Duration::from_millis(600)).is_err(),
        "agent: {}",
        agent.log_tail()
    );
    assert_eq!(chains_installed(&web), 0);

    // A runtime retrying ADD on that namespace gets it captured again; the Pod object going
    // away releases it.
    let (code, _, err) = plugin("ADD", &web_ns, "mesh", "web", &conf);
    assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
    assert_eq!(chains_installed(&web), 4);
    assert_eq!(next(&ztunnel), add_of(&web, "web-sa"));

    // A stale Pod object (ghost) lists web's address while web's own object lags with an
    // old one: a scan for ghost finds web's namespace, which web holds: refused, with a
    // warning naming both, and ztunnel is not handed web's namespace under ghost's name.
    let ghosted = cluster("").replace(
        &pod_yaml("mesh", "web", "n1", web_ip, ""),
        &[
            pod_yaml("mesh", "web", "n1", unique_ip(9), ""),
            pod_yaml("mesh", "ghost", "n1", web_ip, ""),
        ]
        .concat(),
    );
    write_atomically(&config_dir.join("cluster.yaml"), &ghosted);
    if let Ok(seen) = ztunnel.recv_timeout(Duration::from_millis(600)) {
        panic!("ztunnel got {seen:?}\nagent: {}", agent.log_tail());
    }
    e2e::wait_until("a warning naming both pods", TIMEOUT, || {
        agent
            .log()
            .lines()
            .any(|l| l.contains("mesh/ghost") && l.contains("pod mesh/web holds it"))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nagent: {}", agent.log_tail()));
    write_atomically(&config_dir.join("cluster.yaml"), &cluster(""));
    let without_web: String = cluster("").replace(&pod_yaml("mesh", "web", "n1", web_ip, ""), "");
    write_atomically(&config_dir.join("cluster.yaml"), &without_web);
    wait_chains(&web, 0, &agent);
    assert_eq!(next(&ztunnel), Seen::Del(web.uid.clone()));
    assert!(agent.is_running(), "agent: {}", agent.log_tail());
    for sleeper in &sleepers {
        let _ = sleeper.stop();
    }
}

#[test]
fn ztunnel_is_not_served_until_the_start_pass_could_read_the_config() {
    e2e::require_root();
    let mut topo = Topology::for_this_test().expect("topology");
    let node = topo.add_node("n1").expect("node");
    let web_ip = unique_ip(6);
    let (web, sleeper) = running_pod(&mut topo, &node, "mesh", "web", web_ip);
    let config_dir = config_dir(&topo);
    let cluster = [
        namespace_yaml("mesh", true),
        pod_yaml("mesh", "web", "n1", web_ip, ""),
    ]
    .concat();
    write_atomically(&config_dir.join("cluster.yaml"), &cluster);
    let broken = config_dir.join("broken.yaml");
    write_atomically(&broken, "kind: Pod\nmetadata: [not, a, mapping]\n");

    // The agent cannot read its config: it retries (warning each time), is not ready, and
    // does not serve a ztunnel that connects (its snapshot would be empty: ztunnel would
    // drop every pod of the node).
    let agent = spawn_agent(&topo, &node, &["--reconcile-interval-ms", "100"]);
    e2e::wait_until("the start pass retried", TIMEOUT, || {
        agent
            .log()
            .matches("cannot read the config dir for the start pass")
            .count()
            >= 2
    })
    .unwrap_or_else(|e| panic!("{e:#}\nagent: {}", agent.log_tail()));
    let ztunnel = fake_ztunnel(topo.dir().join("zds.sock"), false);
    assert!(
        ztunnel.recv_timeout(Duration::from_millis(400)).is_err(),
        "agent: {}",
        agent.log_tail()
    );
    assert!(!agent.log().contains("node agent ready"));
    // The CNI socket is served: ADD fails closed, saying why.
    let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "cni-plugin",
        "agent_socket": topo.dir().join("cni.sock"),
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": format!("{web_ip}/32")}]}});
    let (code, out, _) = plugin("ADD", &netns_path(&web.netns_name), "mesh", "web", &conf);
    assert_ne!(code, 0);
    let err: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(err["code"], json!(999), "{err}");
    let details = err["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("config source cannot be read") && details.contains("broken.yaml"),
        "{err}"
    );
    assert_eq!(chains_installed(&web), 0);

    // Readable: the start pass captures web, and the waiting ztunnel's first snapshot has it.
    std::fs::remove_file(&broken).expect("rm");
    assert_eq!(next(&ztunnel), add_of(&web, "web-sa"));
    assert_eq!(next(&ztunnel), Seen::SnapshotSent);
    agent
        .wait_for_log("node agent ready", TIMEOUT)
        .expect("ready");
    assert_eq!(chains_installed(&web), 4);
    assert!(agent.is_running(), "agent: {}", agent.log_tail());
    let _ = sleeper.stop();
}

#[test]
fn cni_calls_do_not_wait_for_a_reconcile_scan() {
    e2e::require_root();
    let mut topo = Topology::for_this_test().expect("topology");
    let node = topo.add_node("n1").expect("node");
    // A pod whose address the node cannot reach: every pass waits for an ARP answer that
    // never comes (500 ms) while looking for its namespace.
    let lost = topo
        .add_pod(&node, "mesh", "lost", PodOpts::default())
        .expect("pod");
    let lost_ip = unique_ip(10);
    topo.exec_in(
        &lost,
        "ip",
        &["addr", "add", &format!("{lost_ip}/32"), "dev", "eth0"],
    )
    .expect("ip addr add");
    let sleeper = topo
        .spawn_in(&lost, "sleep", &["infinity"], &[])
        .expect("sleep");
    let yaml = [
        namespace_yaml("mesh", true),
        namespace_yaml("plain", false),
        pod_yaml("mesh", "lost", "n1", lost_ip, ""),
    ]
    .concat();
    let quick = topo
        .add_pod(&node, "plain", "quick", PodOpts::default())
        .expect("pod");
    let config_dir = config_dir(&topo);
    write_atomically(&config_dir.join("cluster.yaml"), &yaml);
    let agent = start_agent(&topo, &node, &["--reconcile-interval-ms", "50"]);
    let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "cni-plugin",
        "agent_socket": topo.dir().join("cni.sock"),
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": format!("{}/24", quick.ip)}]}});
    let passes = || agent.log().matches(" reconciling").count();
    for _ in 0..3 {
        // Right after a pass starts, it is looking for the lost pod (for 500 ms).
        let before = passes();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while passes() == before {
            assert!(std::time::Instant::now() < deadline, "{}", agent.log_tail());
            std::thread::sleep(Duration::from_millis(5));
        }
        let started = std::time::Instant::now();
        let (code, _, err) = plugin(
            "ADD",
            &netns_path(&quick.netns_name),
            "plain",
            "quick",
            &conf,
        );
        let took = started.elapsed();
        assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
        assert!(
            took < Duration::from_millis(300),
            "ADD took {took:?}: it waited for the scan; agent: {}",
            agent.log_tail()
        );
    }
    assert!(agent.is_running(), "agent: {}", agent.log_tail());
    let _ = sleeper.stop();
}

#[test]
fn label_changes_enrol_and_release_running_pods() {
    e2e::require_root();
    let mut topo = Topology::for_this_test().expect("topology");
    let node = topo.add_node("n1").expect("node");
    let web_ip = unique_ip(5);
    let (web, sleeper) = running_pod(&mut topo, &node, "demo", "web", web_ip);
    // Known from its CNI ADD; its Pod object has no address, so no scan can find it.
    let added = topo
        .add_pod(&node, "demo", "added", PodOpts::default())
        .expect("pod");
    let config_dir = config_dir(&topo);
    let cluster_yaml = config_dir.join("cluster.yaml");
    let added_yaml = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: added, namespace: demo}\n\
                      spec: {nodeName: n1, containers: [{name: main, image: local}]}\n";
    let write_sa = |ambient: bool, web_meta: Option<&str>, web_sa: &str| {
        let mut text = namespace_yaml("demo", ambient);
        if let Some(meta) = web_meta {
            let web = pod_yaml("demo", "web", "n1", web_ip, meta);
            text.push_str(&web.replace(
                "serviceAccountName: web-sa",
                &format!("serviceAccountName: {web_sa}"),
            ));
        }
        text.push_str(added_yaml);
        write_atomically(&cluster_yaml, &text);
    };
    let write = |ambient: bool, web_meta: Option<&str>| write_sa(ambient, web_meta, "web-sa");
    write(false, Some(""));

    let agent = start_agent(&topo, &node, &["--reconcile-interval-ms", "100"]);
    let ztunnel = fake_ztunnel(topo.dir().join("zds.sock"), false);
    assert_eq!(next(&ztunnel), Seen::SnapshotSent);
    let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "cni-plugin",
        "agent_socket": topo.dir().join("cni.sock"),
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": format!("{}/24", added.ip)}]}});
    let (code, _, err) = plugin(
        "ADD",
        &netns_path(&added.netns_name),
        "demo",
        "added",
        &conf,
    );
    assert_eq!(code, 0, "plugin: {err}\nagent: {}", agent.log_tail());
    assert_eq!(chains_installed(&added), 0);
    assert_eq!(chains_installed(&web), 0);

    // The namespace joins the mesh: both pods are captured, no CNI call involved.
    write(true, Some(""));
    wait_chains(&web, 4, &agent);
    wait_chains(&added, 4, &agent);
    let adds = next_n(&ztunnel, 2);
    for want in [add_of(&web, "web-sa"), add_of(&added, "default")] {
        assert!(adds.contains(&want), "{want:?} not in {adds:?}");
    }

    // A config dir that cannot be read changes nothing, even though the label went.
    let broken = config_dir.join("broken.yaml");
    write_atomically(&broken, "kind: Pod\nmetadata: [not, a, mapping]\n");
    write(false, Some(""));
    agent
        .wait_for_log("cannot read the config dir", TIMEOUT)
        .expect("warned");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(chains_installed(&web), 4);
    assert_eq!(chains_installed(&added), 4);
    // Readable again: the label is gone, so both are released.
    std::fs::remove_file(&broken).expect("rm");
    wait_chains(&web, 0, &agent);
    wait_chains(&added, 0, &agent);
    assert!(!has_route_rule(&topo, &web));
    let dels = next_n(&ztunnel, 2);
    for want in [Seen::Del(web.uid.clone()), Seen::Del(added.uid.clone())] {
        assert!(dels.contains(&want), "{want:?} not in {dels:?}");
    }

    // Back in; then the pod's own opt-out label releases web alone.
    write(true, Some(""));
    wait_chains(&web, 4, &agent);
    wait_chains(&added, 4, &agent);
    let _ = next_n(&ztunnel, 2);
    write(true, Some(", labels: {istio.io/dataplane-mode: none}"));
    wait_chains(&web, 0, &agent);
    assert_eq!(next(&ztunnel), Seen::Del(web.uid.clone()));
    assert_eq!(chains_installed(&added), 4);
    write(true, Some(""));
    wait_chains(&web, 4, &agent);
    assert_eq!(next(&ztunnel), add_of(&web, "web-sa"));

    // Its service account changes in the source: ztunnel is told again (del, then add with
    // the new identity); the capture stays.
    write_sa(true, Some(""), "web-sa2");
    assert_eq!(next(&ztunnel), Seen::Del(web.uid.clone()));
    assert_eq!(next(&ztunnel), add_of(&web, "web-sa2"));
    assert_eq!(chains_installed(&web), 4);
    write(true, Some(""));
    assert_eq!(next(&ztunnel), Seen::Del(web.uid.clone()));
    assert_eq!(next(&ztunnel), add_of(&web, "web-sa"));

    // The Pod object goes: released.
    write(true, None);
    wait_chains(&web, 0, &agent);
    assert_eq!(next(&ztunnel), Seen::Del(web.uid.clone()));
    assert_eq!(chains_installed(&added), 4);

    // The ADD-known pod leaves by its DEL.
    let (code, _, err) = plugin(
        "DEL",
        &netns_path(&added.netns_name),
        "demo",
        "added",
        &conf,
    );
    assert_eq!(code, 0, "plugin: {err}");
    assert_eq!(chains_installed(&added), 0);
    assert_eq!(next(&ztunnel), Seen::Del(added.uid.clone()));
    assert!(agent.is_running(), "agent: {}", agent.log_tail());
    let _ = sleeper.stop();
}

#[test]
fn agent_installs_itself_into_the_cni_config() {
    e2e::require_root();
    let mut topo = Topology::for_this_test().expect("topology");
    let node = topo.add_node("n1").expect("node");
    let dir = topo.dir().to_path_buf();
    std::fs::create_dir_all(dir.join("config")).expect("config dir");
    let conf_dir = dir.join("net.d");
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    let install_args = [
        "--cni-conf-dir",
        conf_dir.to_str().expect("utf-8"),
        "--cni-bin-dir",
        bin_dir.to_str().expect("utf-8"),
    ];
    let agent = spawn_agent(&topo, &node, &install_args);
    agent
        .wait_for_log("waiting for the primary CNI plugin", TIMEOUT)
        .expect("waits for a conflist");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !agent.log().contains("node agent ready"),
        "ready means installed: {}",
        agent.log_tail()
    );

    // The primary CNI writes its config; ours is appended to the first list by name.
    let primary = json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.244.1.0/24"}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]});
    let first = conf_dir.join("10-primary.conflist");
    let later = conf_dir.join("20-later.conflist");
    write_atomically(&later, &primary.to_string());
    write_atomically(&first, &primary.to_string());
    agent
        .wait_for_log("node agent ready", TIMEOUT)
        .expect("ready");
    assert!(agent.log().contains("installed into the CNI config"));
    let read = |p: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json")
    };
    let cni_socket = dir.join("cni.sock");
    let mut want = primary.clone();
    want["plugins"]
        .as_array_mut()
        .expect("list")
        .push(json!({"type": "ambient-mesh-cni", "agent_socket": cni_socket}));
    assert_eq!(read(&first), want);
    assert_eq!(read(&later), primary, "only the first list is changed");
    let binary = bin_dir.join("ambient-mesh-cni");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&binary).expect("binary").permissions(),
    );
    assert_eq!(mode & 0o777, 0o755);
    let version = Command::new(&binary)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .expect("run the installed binary");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("supportedVersions"),
        "{version:?}"
    );

    // The install stays when the agent stops: ADD through it fails closed (11).
    agent.stop().expect("stop");
    assert_eq!(read(&first), want);
    assert!(binary.exists());
    let mut conf = read(&first)["plugins"][2].clone();
    conf["cniVersion"] = json!("1.0.0");
    conf["name"] = json!("k8s-pod-network");
    conf["prevResult"] = json!({"cniVersion": "1.0.0"});
    let (code, out, _) = plugin("ADD", Path::new("/proc/self/ns/net"), "demo", "web", &conf);
    assert_ne!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["code"],
        json!(11)
    );

    // A restarted agent finds its entry in place and rewrites nothing.
    let before = std::fs::read(&first).expect("read");
    let agent = start_agent(&topo, &node, &install_args);
    agent
        .wait_for_log("installed into the CNI config", TIMEOUT)
        .expect("installed");
    assert!(
        agent.log().contains("changed=false"),
        "{}",
        agent.log_tail()
    );
    assert_eq!(std::fs::read(&first).expect("read"), before);
    agent.stop().expect("stop");

    // uninstall removes the entry and the binary.
    let out = Command::new(env!("CARGO_BIN_EXE_cni-plugin"))
        .args(["uninstall", "--cni-conf-dir"])
        .arg(&conf_dir)
        .arg("--cni-bin-dir")
        .arg(&bin_dir)
        .output()
        .expect("uninstall");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&first), primary);
    assert!(!binary.exists());
}
