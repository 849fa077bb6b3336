//! Self-healing capture on real kernel networking: capture rules wiped from a running pod (as a
//! node reboot or another tool would) are rewritten by the agent within seconds, without the
//! pod restarting, and counted as a repair; so is a removed policy-routing rule.
//!
//! Needs root (network namespaces, iptables): fails loudly without it.

mod common;

use std::time::Duration;

use common::*;
use e2e::Topology;

#[test]
fn wiped_capture_rules_and_routing_are_rewritten_within_seconds_and_counted_as_repairs() {
    e2e::require_root();
    let mut topo = Topology::for_this_test().expect("topology");
    let node = topo.add_node("n1").expect("node");
    let ip = unique_ip(31);
    let (web, _pause) = running_pod(&mut topo, &node, "mesh", "web", ip);
    let config = config_dir(&topo);
    write_atomically(
        &config.join("cluster.yaml"),
        &format!(
            "{}{}",
            namespace_yaml("mesh", true),
            pod_yaml("mesh", "web", "n1", ip, "")
        ),
    );
    let monitoring = format!("{}:15024", node.underlay_ip);
    let agent = start_agent(
        &topo,
        &node,
        &[
            "--rule-check-interval-ms",
            "500",
            "--monitoring-addr",
            &monitoring,
        ],
    );
    wait_chains(&web, 4, &agent);
    let metrics = || {
        topo.exec_in(
            &node,
            "curl",
            &["-s", &format!("http://{monitoring}/metrics")],
        )
        .expect("curl /metrics")
    };
    assert!(
        !metrics().contains("reason=\"repair\""),
        "intact rules were counted as repaired:\n{}",
        metrics()
    );

    // Wipe everything, as a reboot that kept the namespace would.
    for table in ["nat", "mangle"] {
        topo.exec_in(&web, "iptables", &["-t", table, "-F"])
            .expect("flush");
        topo.exec_in(&web, "iptables", &["-t", table, "-X"])
            .expect("delete chains");
    }
    assert_eq!(chains_installed(&web), 0);
    let wiped = std::time::Instant::now();
    wait_chains(&web, 4, &agent);
    assert!(
        wiped.elapsed() < Duration::from_secs(5),
        "repaired after {:?}",
        wiped.elapsed()
    );
    agent
        .wait_for_log("capture rules were missing or changed; rewritten", TIMEOUT)
        .expect("the repair is logged");
    let text = metrics();
    assert!(
        text.contains("cni_agent_rule_installs_total{reason=\"repair\"} 1"),
        "{text}"
    );
    assert!(text.contains("cni_agent_enrolled_pods 1"), "{text}");

    // Checks that find everything in place add nothing: no duplicate policy-routing rule.
    std::thread::sleep(Duration::from_millis(1500));
    let rules = topo
        .exec_in(&web, "ip", &["rule", "show"])
        .expect("ip rule");
    assert_eq!(rules.matches("32764").count(), 1, "{rules}");
    assert!(metrics().contains("cni_agent_rule_installs_total{reason=\"repair\"} 1"));

    // The policy-routing rule alone removed: put back and counted as a repair too.
    topo.exec_in(&web, "ip", &["rule", "del", "pref", "32764"])
        .expect("ip rule del");
    assert!(!has_route_rule(&topo, &web));
    e2e::wait_until("the ip rule is back", TIMEOUT, || {
        has_route_rule(&topo, &web)
    })
    .unwrap_or_else(|e| panic!("{e:#}\nagent: {}", agent.log_tail()));
    e2e::wait_until("counted as a repair", TIMEOUT, || {
        metrics().contains("cni_agent_rule_installs_total{reason=\"repair\"} 2")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", metrics()));
}
