//! The node agent's operator surface: JSON log lines in the shared schema, `GET /metrics` on
//! `--monitoring-addr`, and the log filter changed at run time on `--admin-addr`.
//!
//! Needs root (the agent runs in a node network namespace): fails loudly without it.

use std::time::Duration;

use e2e::Topology;

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn the_agent_logs_json_serves_metrics_and_takes_a_new_log_level_at_run_time() {
    e2e::require_root();
    let mut topo = Topology::for_this_test().expect("topology");
    let node = topo.add_node("n1").expect("node");
    let dir = topo.dir().to_path_buf();
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(
        config_dir.join("cluster.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n",
    )
    .expect("write config");
    let monitoring = format!("{}:15024", node.underlay_ip);
    let agent = topo
        .spawn_in(
            &node,
            env!("CARGO_BIN_EXE_cni-plugin"),
            &[
                "--log-format",
                "json",
                "agent",
                "--zds-socket",
                dir.join("zds.sock").to_str().expect("utf-8"),
                "--cni-socket",
                dir.join("cni.sock").to_str().expect("utf-8"),
                "--config-dir",
                config_dir.to_str().expect("utf-8"),
                "--node-name",
                "n1",
                "--monitoring-addr",
                &monitoring,
                "--admin-addr",
                "127.0.0.1:9877",
            ],
            &[("RUST_LOG", "info")],
        )
        .expect("start agent");
    agent
        .wait_for_log("node agent ready", TIMEOUT)
        .expect("agent ready");

    let curl = |args: &[&str]| topo.exec_in(&node, "curl", args).expect("curl");
    let metrics = curl(&["-s", &format!("http://{monitoring}/metrics")]);
    for want in [
        "cni_agent_enrolled_pods 0",
        "cni_agent_ztunnel_connected 0",
        "cni_agent_rule_install_failures_total 0",
        "process_resident_memory_bytes ",
        "tokio_workers{runtime=\"main\"} 2",
        "mesh_build_info{component=\"cni-agent\"",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }

    let before = curl(&["-s", "http://127.0.0.1:9877/logging"]);
    assert!(before.contains("log filter: info"), "{before}");
    let set = curl(&[
        "-s",
        "-X",
        "POST",
        "http://127.0.0.1:9877/logging?level=debug",
    ]);
    assert!(set.contains("log filter now: debug"), "{set}");
    let bad = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "http://127.0.0.1:9877/logging?level=a=b=c",
    ]);
    assert_eq!(bad, "400");
    agent
        .wait_for_log("log filter changed", TIMEOUT)
        .expect("the change is logged");
    // Debug lines now appear (the reconcile passes log at debug).
    let log = agent.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert_eq!(line["component"], "cni-agent", "{line}");
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "{key} missing: {line}");
        }
    }
    let ready = lines
        .iter()
        .find(|l| l["message"] == "node agent ready")
        .expect("the ready line");
    assert_eq!(ready["node"], "n1");
    assert_eq!(ready["level"], "info");
}
