//! Runs the built `meshctl demo` end to end: istiod-lite as a real child process, certificates
//! over gRPC/TLS, bytes through a real HBONE tunnel.
//!
//! istiod-lite must have been built into the same target directory first (`cargo build
//! --workspace`, as `scripts/test.sh` does); cargo does not build other packages' binaries for
//! this test. When it is missing the test fails and says how to build it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

fn istiod_lite() -> PathBuf {
    let path = PathBuf::from(MESHCTL)
        .parent()
        .expect("meshctl has a directory")
        .join("istiod-lite");
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, or \
         scripts/test.sh which does), then run the tests",
        path.display()
    );
    path
}

fn run(args: &[&str]) -> Output {
    Command::new(MESHCTL)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("meshctl runs")
}

/// The number in a line like `      sent              50 bytes: "..."`.
fn bytes_on_line(stdout: &str, label: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} in:\n{stdout}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {line:?}"))
}

#[test]
fn demo_tunnels_bytes_between_two_identities_and_shows_a_refusal() {
    let istiod = istiod_lite();
    let started = Instant::now();
    let out = run(&[
        "demo",
        "--istiod-lite",
        istiod.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "meshctl demo failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the demo took {:?}",
        started.elapsed()
    );

    let sleep = "spiffe://cluster.local/ns/demo/sa/sleep";
    let echo = "spiffe://cluster.local/ns/demo/sa/echo";
    let line_with = |label: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{stdout}"))
            .to_string()
    };
    assert!(line_with("client presented").ends_with(sleep), "{stdout}");
    assert!(line_with("server verified").contains(echo), "{stdout}");
    assert!(
        line_with("CA address").contains("https://127.0.0.1:"),
        "{stdout}"
    );
    assert!(line_with("root cert").contains("SHA-256 "), "{stdout}");
    assert!(
        stdout.contains("HBONE server: CONNECT 127.0.0.1:")
            && stdout.contains(&format!("from {sleep}")),
        "the server did not report the verified client identity:\n{stdout}"
    );

    let sent = bytes_on_line(&stdout, "sent");
    let received = bytes_on_line(&stdout, "received");
    assert!(sent > 0, "{stdout}");
    assert_eq!(sent, received, "echo lost or added bytes:\n{stdout}");

    assert!(line_with("TLS ").contains("TLSv1_3"), "{stdout}");
    assert!(line_with("TLS ").contains("ALPN h2"), "{stdout}");
    assert!(
        stdout.contains("refused by the client during the TLS handshake"),
        "{stdout}"
    );
    assert!(stdout.contains("sa/stranger: refused"), "{stdout}");
    assert!(stdout.contains("Demo complete."), "{stdout}");

    // The state directory is gone.
    let state = line_with("state dir");
    let dir = state.trim_start().trim_start_matches("state dir").trim();
    assert!(!PathBuf::from(dir).exists(), "{dir} was left behind");
}

#[test]
fn demo_fails_clearly_without_istiod_lite() {
    let out = run(&["demo", "--istiod-lite", "/nonexistent/istiod-lite"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/istiod-lite"), "{stderr}");
}

#[test]
fn help_names_demo_and_says_what_comes_later() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("demo"), "{stdout}");
    assert!(stdout.contains("later"), "{stdout}");
}
