//! Runs the built `meshctl demo` end to end, as the README's run command does: a two-node local
//! cluster on real network namespaces, a request before and after enrolment, the identities in
//! ztunnel's access log, the metrics that moved, then a teardown that leaves nothing.
//!
//! Needs root, curl and tcpdump (scripts/test.sh installs them) and the mesh's binaries next to
//! meshctl (`cargo build -p istiod-lite -p ztunnel -p cni-plugin` first).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::{Command, Output};

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

fn run(args: &[&str]) -> Output {
    Command::new(MESHCTL)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("meshctl runs")
}

/// The number just before `needle` on the line that contains it.
fn count_before(stdout: &str, needle: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stdout}"));
    let head = &line[..line.find(needle).expect("found")];
    head.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {needle:?} in {line:?}"))
}

#[test]
fn the_demo_shows_plaintext_then_hbone_with_both_identities_and_moved_metrics_and_cleans_up() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces): run as root"
    );
    let state = tempfile::tempdir().expect("state dir");
    let name = format!("dm{}", std::process::id() % 100_000);
    let out = run(&[
        "--state-dir",
        state.path().to_str().expect("utf-8"),
        "demo",
        "--name",
        &name,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");

    // (a) before enrolment the request header is readable on the underlay.
    let plaintext_hits = count_before(&stdout, "packet(s).");
    assert!(
        plaintext_hits > 0,
        "plaintext visible before enrolment:\n{stdout}"
    );
    // (b) the label, (c) HBONE: nothing readable, HBONE packets seen, both identities.
    assert!(stdout.contains("$ meshctl label ns demo istio.io/dataplane-mode=ambient"));
    assert_eq!(
        count_before(&stdout, "packet(s); "),
        0,
        "header readable after enrolment:\n{stdout}"
    );
    assert!(
        count_before(&stdout, "packet(s) to or from port 15008") > 0,
        "{stdout}"
    );
    assert!(
        stdout.contains("src.identity = spiffe://cluster.local/ns/demo/sa/client"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dst.identity = spiffe://cluster.local/ns/demo/sa/server"),
        "{stdout}"
    );
    // (d) metrics moved.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("istio_tcp_connections_opened_total") && l.contains(" -> ")),
        "{stdout}"
    );
    // Torn down: no namespace of the demo's cluster is left.
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&netns.stdout)
            .lines()
            .any(|l| l.starts_with(&format!("{name}-"))),
        "namespaces left behind"
    );
}

#[test]
fn help_names_demo_and_the_cluster_commands() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for command in ["demo", "cluster", "pod", "apply", "label", "authz"] {
        assert!(stdout.contains(command), "{command}: {stdout}");
    }
}

#[test]
fn the_waypoint_demo_shows_a_canary_split_and_a_403_then_cleans_up() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces): run as root"
    );
    let state = tempfile::tempdir().expect("state dir");
    let name = format!("dw{}", std::process::id() % 100_000);
    let started = std::time::Instant::now();
    let out = run(&[
        "--state-dir",
        state.path().to_str().expect("utf-8"),
        "demo",
        "--waypoint",
        "--name",
        &name,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the demo took {:?}",
        started.elapsed()
    );
    let v1 = count_before(&stdout, "(weights 80/20)");
    let line = stdout
        .lines()
        .find(|l| l.contains("web-v1 answered"))
        .expect("the split line");
    let v1_count: usize = line
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(v1 > 0, "{line}");
    assert!((60..=95).contains(&v1_count), "{line}");
    assert!(stdout.contains("HTTP 403: RBAC: access denied"), "{stdout}");
    assert!(stdout.contains("HTTP 200: hello from web-v"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("istio_requests_total{reporter=\"waypoint\"")),
        "{stdout}"
    );
    assert!(stdout.contains("$ meshctl cluster down"), "{stdout}");
}
