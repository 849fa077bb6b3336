//! Load and limits (issue 15, item 5; docs/reliability.md section 5): ten thousand
//! connections through one node with bounded memory, running out of file descriptors, a
//! pod's connection cap, and clients that connect and send nothing. Needs root.
//!
//! `E2E_LIMITS_CONNECTIONS` changes the number of concurrent connections of the first test
//! (default 10000).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

mod common;

use std::time::{Duration, Instant};

use common::{metric_sum, Mesh};
use e2e::{Pod, Proc, Topology};

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// `e2e-tcp hold` from `client` to `to`, `n` connections; returns the process and its
/// until-file once it has printed its `held` line.
fn hold(
    mesh: &Mesh,
    client: &Pod,
    to: &str,
    n: usize,
    timeout: Duration,
) -> (Proc, std::path::PathBuf) {
    let until = mesh
        .topo
        .dir()
        .join(format!("hold-{}-{n}.until", client.name));
    let proc = mesh
        .topo
        .spawn_in(
            client,
            Topology::tcp_tool().unwrap(),
            &["hold", to, &n.to_string(), until.to_str().unwrap()],
            &[],
        )
        .expect("hold");
    proc.wait_for_log("held ok=", timeout)
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", proc.log_tail(), mesh.logs()));
    (proc, until)
}

/// The `ok` and `failed` counts of the `what` line (`held`, `verified`) of a hold log.
fn counts(log: &str, what: &str) -> (usize, usize) {
    let line = log
        .lines()
        .find(|l| l.starts_with(&format!("{what} ok=")))
        .unwrap_or_else(|| panic!("no {what} line in:\n{log}"));
    let field = |name: &str| -> usize {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (field("ok="), field("failed="))
}

/// Lets a hold finish: every held connection is checked once more, then all close.
fn release(proc: &Proc, until: &std::path::Path) -> (usize, usize) {
    std::fs::write(until, b"").unwrap();
    proc.wait_for_log("verified ok=", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", proc.log_tail()));
    counts(&proc.log(), "verified")
}

/// One connection through the mesh still works (service resumed).
fn one_connection_works(mesh: &Mesh, client: &Pod, server: &Pod) {
    let out = e2e::retry_until(
        "a new connection after the limit",
        Duration::from_secs(10),
        || mesh.topo.tcp_send(client, server.addr(7000), "after"),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(out, "after");
}

/// A client pod on node 1 holds 10,000 connections through both ztunnels to an echo server on
/// node 2; each carries its own bytes when opened and again after all are open. ztunnel's
/// memory per connection stays far below 64 KiB (measured: about 5 KiB), and none fails.
#[test]
fn ten_thousand_concurrent_connections_all_carry_bytes_with_bounded_memory_each() {
    let n: usize = std::env::var("E2E_LIMITS_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut mesh = Mesh::new("limits_10k", 2);
    let (client, server, _echo) = mesh.start_client_server();
    one_connection_works(&mesh, &client, &server);
    let pids: Vec<u32> = mesh.ztunnels.values().map(Proc::pid).collect();
    let before: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let started = Instant::now();
    let to = server.addr(7000).to_string();
    let (proc, until) = hold(&mesh, &client, &to, n, Duration::from_secs(90));
    let opened_in = started.elapsed();
    let (held, failed_open) = counts(&proc.log(), "held");
    let after: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let (verified, failed_verify) = release(&proc, &until);
    let per_conn: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 * 1024.0 / n as f64)
        .collect();
    println!(
        "{n} connections opened in {opened_in:?}: held {held}, failed {failed_open}; verified \
         {verified}, failed {failed_verify}; ztunnel RSS KiB before {before:?} after {after:?}; \
         bytes per connection {per_conn:?}"
    );
    assert_eq!((held, failed_open), (n, 0), "{}", proc.log_tail());
    assert_eq!((verified, failed_verify), (n, 0), "{}", proc.log_tail());
    for (node, bytes) in per_conn.iter().enumerate() {
        assert!(
            *bytes < 64.0 * 1024.0,
            "ztunnel on node {node} grew {bytes} bytes per connection"
        );
    }
}

/// ztunnel whose descriptor limit is lowered under its feet: connections beyond it are reset
/// at once (not left hanging), the condition is logged and counted, the connections already
/// open keep working, and service resumes once connections close.
#[test]
fn out_of_descriptors_ztunnel_resets_new_connections_warns_counts_and_recovers() {
    let mut mesh = Mesh::new("limits_fds", 2);
    let (client, server, _echo) = mesh.start_client_server();
    one_connection_works(&mesh, &client, &server);
    let ztunnel = &mesh.ztunnels[&mesh.nodes[0].name];
    assert!(
        ztunnel
            .log()
            .contains("open file limit (RLIMIT_NOFILE) raised"),
        "{}",
        ztunnel.log_tail()
    );
    let pid = ztunnel.pid();
    let limit = open_fds(pid) + 100;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit");
    assert!(status.success());
    let to = server.addr(7000).to_string();
    let (proc, until) = hold(&mesh, &client, &to, 300, Duration::from_secs(60));
    let (held, failed) = counts(&proc.log(), "held");
    println!("limit {limit} fds: held {held}, failed {failed}");
    assert_eq!(held + failed, 300);
    assert!(
        held >= 50,
        "connections within the limit are served: {held}"
    );
    assert!(failed >= 100, "connections beyond it fail: {failed}");
    let (verified, broken) = release(&proc, &until);
    assert_eq!((verified, broken), (held, 0), "{}", proc.log_tail());
    proc.wait_exit(Duration::from_secs(10)).expect("hold exits");
    let ztunnel = &mesh.ztunnels[&mesh.nodes[0].name];
    assert!(
        ztunnel.log().contains("out of file descriptors"),
        "{}",
        ztunnel.log_tail()
    );
    one_connection_works(&mesh, &client, &server);
    let metrics = mesh.metrics(0);
    let errors = metric_sum(
        &metrics,
        "mesh_accept_errors_total",
        &["listener=\"outbound\"", "reason=\"fd_limit\""],
    );
    println!("mesh_accept_errors_total{{listener=outbound,reason=fd_limit}} = {errors}");
    assert!(errors >= 1.0, "{metrics}");
    let shed = metric_sum(
        &metrics,
        "mesh_accept_shed_total",
        &["listener=\"outbound\""],
    );
    println!("mesh_accept_shed_total{{listener=outbound}} = {shed}");
    assert!(
        shed >= 1.0 && shed <= failed as f64,
        "the connections reset while queued are counted, and are among those that failed: {metrics}"
    );
}

/// With `MAX_CONNECTIONS_PER_POD=20`, a pod's 21st live connection is reset and counted as
/// `connection_limit`; the 20 keep working, and a new one works once they close.
#[test]
fn a_pod_over_its_connection_cap_is_reset_counted_and_served_again_below_it() {
    let mut mesh = Mesh::new("limits_cap", 2);
    mesh.ztunnel_env
        .push(("MAX_CONNECTIONS_PER_POD".into(), "20".into()));
    let (client, server, _echo) = mesh.start_client_server();
    let to = server.addr(7000).to_string();
    let (proc, until) = hold(&mesh, &client, &to, 30, Duration::from_secs(60));
    let (held, failed) = counts(&proc.log(), "held");
    assert_eq!((held, failed), (20, 10), "{}", proc.log_tail());
    let (verified, broken) = release(&proc, &until);
    assert_eq!((verified, broken), (20, 0));
    proc.wait_exit(Duration::from_secs(10)).expect("hold exits");
    let refused = metric_sum(
        &mesh.metrics(0),
        "ztunnel_connection_failures_total",
        &["direction=\"outbound\"", "reason=\"connection_limit\""],
    );
    assert_eq!(refused, 10.0);
    let ztunnel = &mesh.ztunnels[&mesh.nodes[0].name];
    assert!(
        ztunnel.log().contains("connection cap"),
        "{}",
        ztunnel.log_tail()
    );
    one_connection_works(&mesh, &client, &server);
}

/// A client that connects to 15008 and never starts its TLS handshake is closed at the
/// set-up deadline (10 s); one through 15001 (meshed client) or 15006 (client outside the
/// mesh) that never sends, to a server that waits for it, is closed cleanly at the first-byte
/// timeout (`FIRST_BYTE_TIMEOUT`, 3 s here, an hour by default). A connection that carried a
/// byte is never timed out for being quiet (ztunnel's unit tests).
#[test]
fn silent_clients_are_closed_at_the_hbone_set_up_deadline_and_the_first_byte_timeout() {
    let mut mesh = Mesh::new("limits_silent", 2);
    mesh.ztunnel_env
        .push(("FIRST_BYTE_TIMEOUT".into(), "3s".into()));
    let (client, server, _echo) = mesh.start_client_server();
    let outsider = mesh.pod(0, "demo", "outsider", "outsider", "outsider", false);
    let tool = Topology::tcp_tool().unwrap();
    let silent = |pod, to: &str, secs: &str| {
        let out = mesh
            .topo
            .exec_in(pod, &tool, &["silent", to, secs])
            .expect("silent client");
        let ms: u64 = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{out}"));
        (out, ms)
    };
    let (out, ms) = silent(&outsider, &server.addr(15008).to_string(), "20");
    println!("silent client on 15008: {out}");
    assert!(
        out.contains("ended=eof") || out.contains("ended=reset"),
        "closed by ztunnel, not left open: {out}"
    );
    assert!((9_000..15_000).contains(&ms), "at the 10 s deadline: {out}");
    let echo = server.addr(7000).to_string();
    for (pod, path) in [(&client, "15001"), (&outsider, "15006")] {
        let (out, ms) = silent(pod, &echo, "10");
        println!("silent client through {path}: {out}");
        assert!(out.contains("ended=eof"), "closed cleanly: {out}");
        assert!((2_500..6_000).contains(&ms), "at the 3 s timeout: {out}");
    }
}
