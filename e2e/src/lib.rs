//! End-to-end test harness: test hosts made of network namespaces on one machine.
//!
//! A [`Topology`] builds "nodes" (a network namespace each, with IP forwarding, a bridge for
//! its pods and a link to an underlay shared by all nodes) and "pods" (a network namespace
//! each, a veth to their node's bridge, optionally the in-pod capture rules of
//! [`mesh::capture`]). Tests run the built binaries inside those namespaces with
//! [`Topology::spawn_in`], talk TCP with the `e2e-tcp` helper binary, hand pod namespaces to
//! ztunnel through a fake CNI agent ([`ZdsAgent`]), and watch the wire with [`Capture`].
//!
//! Everything lives inside namespaces the harness creates: no interface, route, rule or sysctl
//! of the host is touched, and the private addresses used (underlay `10.250.0.0/24`, pod CIDR
//! of node `i` `10.(10+i).S.0/24`, `S` per topology) exist only there. Dropping a [`Topology`] (also while
//! panicking) kills its processes and deletes its namespaces.
//!
//! Everything here needs root; tests call [`require_root`] first and fail, never skip.
//!
//! The API is blocking on purpose: tests are plain `#[test]` functions, the binaries under test
//! are separate processes, and the fake CNI agent runs on a thread of its own.

pub mod load;
mod pcap;
mod process;
mod sys;
mod tcp;
mod topology;
mod zds_agent;

use std::time::{Duration, Instant};

pub use pcap::{contains, Capture};
pub use process::Proc;
pub use sys::{exec_in, InNetns};
pub use tcp::HttpResponse;
pub use topology::{cleanup_stale, Node, Pod, PodOpts, Topology, UNDERLAY_CIDR};
pub use zds_agent::{Delivery, ZdsAgent, ZdsAgentOptions};

/// Panics unless the process runs as root: the harness creates network namespaces.
///
/// Call it first in every end-to-end test, so that a run without privilege fails loudly
/// instead of passing by skipping.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root (network namespaces): run as root");
    }
}

/// Polls `cond` until it holds, for at most `timeout`.
///
/// The error names `what` and the timeout. Polls every 20 ms at first, backing off to 200 ms.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    retry_until(what, timeout, || {
        if cond() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("not yet"))
        }
    })
}

/// Calls `f` until it returns `Ok`, for at most `timeout`; returns that value.
///
/// On timeout the error names `what` and carries the last error `f` returned, so a test that
/// waits for, say, a connection through the mesh to succeed reports why it last failed.
pub fn retry_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        let last = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(last.context(format!("timed out after {timeout:?} waiting for {what}")));
        }
        std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
