//! What meshctl's local-cluster tests share: running the built meshctl against a state
//! directory, the prerequisites, and waiting for a condition.

// Each test file uses a different part.
#![allow(dead_code, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The meshctl binary under test.
pub const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

/// Runs `meshctl --state-dir <state> <args>` (logs at warn).
pub fn meshctl(state: &Path, args: &[&str]) -> Output {
    Command::new(MESHCTL)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("meshctl runs")
}

/// Runs meshctl and asserts it succeeded; its stdout.
pub fn meshctl_ok(state: &Path, args: &[&str]) -> String {
    let out = meshctl(state, args);
    assert!(
        out.status.success(),
        "meshctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts root (network namespaces) and that `bins` were built next to meshctl (cargo builds
/// only this package's binaries for its tests).
pub fn require_prerequisites(bins: &[&str]) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces): run as root"
    );
    let dir = Path::new(MESHCTL)
        .parent()
        .expect("meshctl has a directory");
    for bin in bins {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: build it first: cargo build{}",
            dir.join(bin).display(),
            bins.iter().map(|b| format!(" -p {b}")).collect::<String>()
        );
    }
}

/// Polls `check` every 100 ms for up to `timeout`; panics with `what` and the last value.
pub fn eventually<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> (bool, T),
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, value) = check();
        if done {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: {value:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
