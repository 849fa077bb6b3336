//! Upstream Istio ztunnel standing in for ours on every node of the local cluster, and back.
//!
//! Upstream runs in shared (in-pod) mode: `PROXY_MODE=shared` takes the node's pods from our CNI
//! node agent over ZDS (`INPOD_UDS`), and its workloads and certificates come from our
//! istiod-lite (`XDS_ADDRESS`, `CA_ADDRESS`, trusting the cluster's root, authenticated with the
//! node's bearer token). Its environment is described in `../shared/anchors/README.md`. Ours is
//! stopped first with `meshctl cluster stop ztunnel` (only one proxy can serve a node's ZDS
//! socket) and started again with `meshctl cluster start ztunnel`.
//!
//! Upstream is this process's child, not a meshctl daemon, so `meshctl cluster down` does not
//! know it: every upstream process is registered in [`RUNNING`] and stopped by [`stop_all`],
//! which the benchmark's teardown (end of run, error or signal) calls before `cluster down`
//! (registered with [`crate::cluster::before_down`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::cluster::{Cluster, PodRef};
use crate::WAIT;

/// Where the shared upstream build lives, from the repository's parent (`../shared/anchors`).
const SHARED_RELATIVE: &str = "../shared/anchors/ztunnel";
/// The same, at its usual absolute place.
const SHARED_ABSOLUTE: &str = "/work/shared/anchors/ztunnel";

/// Upstream processes this benchmark started: (node, pid).
static RUNNING: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());

/// The default upstream binary: the shared build, if it exists.
pub(crate) fn default_path() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [PathBuf::from(SHARED_ABSOLUTE), repo.join(SHARED_RELATIVE)]
        .into_iter()
        .find(|p| p.is_file())
}

/// The data-plane worker count of our ztunnel: its data runtime is tokio's default
/// multi-threaded runtime, one worker per core. Upstream is pinned to the same.
pub(crate) fn our_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// One running upstream ztunnel.
pub(crate) struct Proc {
    pub(crate) node: &'static str,
    pub(crate) child: Child,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Upstream on every node, while it stands in for ours.
pub(crate) struct Upstream {
    pub(crate) binary: PathBuf,
    pub(crate) procs: Vec<Proc>,
    /// `ZTUNNEL_WORKER_THREADS` of the processes it starts.
    pub(crate) workers: usize,
}

impl Upstream {
    pub(crate) fn new(binary: PathBuf) -> Upstream {
        Upstream {
            binary,
            procs: Vec::new(),
            workers: our_workers(),
        }
    }

    /// The pid of upstream on `node`, while it runs.
    pub(crate) fn pid(&self, node: &str) -> Option<u32> {
        self.procs.iter().find(|p| p.node == node).map(Proc::pid)
    }

    /// Stops ours on every node of `nodes` (ours keeps the other nodes), starts upstream there,
    /// and waits until each is ready and serves its pods (`served[i]` are the pods of
    /// `nodes[i]`, which must show `Up`) and knows `known` as HBONE workloads.
    pub(crate) fn swap_in(
        &mut self,
        c: &Cluster,
        nodes: &[&'static str],
        served: &[Vec<&PodRef>],
        known: &[&PodRef],
    ) -> anyhow::Result<()> {
        if !self.procs.is_empty() {
            return Ok(());
        }
        for node in nodes {
            c.ok(&["cluster", "stop", "ztunnel", "--node", node])?;
        }
        // Teardown on error or signal stops them, even if this `Upstream` is never dropped.
        static HOOKED: std::sync::Once = std::sync::Once::new();
        HOOKED.call_once(|| crate::cluster::before_down(stop_all));
        for node in nodes {
            let child = self.spawn(c, node)?;
            RUNNING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((node.to_string(), child.id()));
            self.procs.push(Proc { node, child });
        }
        for (node, pods) in nodes.iter().zip(served) {
            self.wait_ready(c, node, pods, known)?;
        }
        Ok(())
    }

    /// Stops upstream and starts ours again where it was stopped (`meshctl cluster start
    /// ztunnel` skips a node whose ztunnel runs and waits until ours is ready).
    pub(crate) fn swap_out(&mut self, c: &Cluster) -> anyhow::Result<()> {
        if self.procs.is_empty() {
            return Ok(());
        }
        for p in self.procs.drain(..) {
            stop(p.child, p.node);
        }
        c.ok(&["cluster", "start", "ztunnel"])?;
        Ok(())
    }

    /// Stops every upstream process (ours stays stopped): the next `swap_in` starts fresh ones,
    /// e.g. with another worker count.
    pub(crate) fn stop_procs(&mut self) {
        for p in self.procs.drain(..) {
            stop(p.child, p.node);
        }
    }

    fn spawn(&self, c: &Cluster, node: &str) -> anyhow::Result<Child> {
        let state = &c.state;
        let netns = format!("{}-{node}", c.name);
        let node_dir = state.join("nodes").join(node);
        let root = state.join("istiod").join("root-cert.pem");
        // The cluster's tokens file holds every node's token; meshctl also writes the node's
        // own to nodes/<node>/token, which is what AUTH_TOKEN wants (a file with the token).
        let token = node_dir.join("token");
        anyhow::ensure!(
            token.is_file(),
            "{} missing: no token for node {node}",
            token.display()
        );
        let istiod = format!("https://{}", c.istiod_addr()?);
        let log_path = state
            .join("logs")
            .join(format!("upstream-ztunnel-{node}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns])
            .arg(&self.binary)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("PROXY_MODE", "shared")
            .env("INPOD_UDS", node_dir.join("ztunnel.sock"))
            .env("XDS_ADDRESS", &istiod)
            .env("CA_ADDRESS", &istiod)
            .env("XDS_ROOT_CA", &root)
            .env("CA_ROOT_CA", &root)
            .env("AUTH_TOKEN", &token)
            .env("NODE_NAME", node)
            .env("ZTUNNEL_WORKER_THREADS", self.workers.to_string())
            // Ours logs every connection at info (meshctl's RUST_LOG=info,access=info): so
            // does upstream, so both pay for an access log line per connection.
            .env("RUST_LOG", "info,access=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: a terminal's Ctrl-C reaches mesh-bench, which stops it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        eprintln!(
            "  upstream ztunnel on {node}: pid {} (log {})",
            child.id(),
            log_path.display()
        );
        Ok(child)
    }

    fn wait_ready(
        &mut self,
        c: &Cluster,
        node: &str,
        pods: &[&PodRef],
        known: &[&PodRef],
    ) -> anyhow::Result<()> {
        let log = c
            .state
            .join("logs")
            .join(format!("upstream-ztunnel-{node}.log"));
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.node == node)
            .context("no upstream process for the node")?;
        let netns = format!("{}-{node}", c.name);
        e2e::retry_until(
            &format!("upstream ztunnel on {node} to serve its pods"),
            WAIT,
            || {
                if let Some(status) = proc.child.try_wait()? {
                    bail!("upstream ztunnel on {node} exited ({status})");
                }
                let ready = Command::new("ip")
                    .args(["netns", "exec", &netns, "curl", "-s", "-o", "/dev/null"])
                    .args(["-w", "%{http_code}", "--max-time", "2"])
                    .arg("http://127.0.0.1:15021/healthz/ready")
                    .output()?;
                anyhow::ensure!(
                    ready.stdout == b"200",
                    "not ready ({})",
                    String::from_utf8_lossy(&ready.stdout)
                );
                let dump = c.config_dump(node)?;
                for p in pods {
                    let state = &dump["workloadState"][p.uid()]["state"];
                    anyhow::ensure!(state == "Up", "{} is not Up yet ({state})", p.uid());
                }
                let workloads = dump["workloads"].as_array().cloned().unwrap_or_default();
                for p in known.iter().chain(pods) {
                    let uid = p.uid();
                    anyhow::ensure!(
                        workloads
                            .iter()
                            .any(|w| w["uid"] == uid.as_str() && w["protocol"] == "HBONE"),
                        "{uid} is not an HBONE workload yet"
                    );
                }
                Ok(())
            },
        )
        .map_err(|e| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            anyhow::anyhow!(
                "{e:#}\nthe end of {}:\n{}",
                log.display(),
                lines[lines.len().saturating_sub(20)..].join("\n")
            )
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for p in self.procs.drain(..) {
            stop(p.child, p.node);
        }
    }
}

/// SIGTERM, up to 5 s for it to exit, then SIGKILL.
fn stop(mut child: Child, node: &str) {
    let pid = child.id();
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            forget(pid);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("upstream ztunnel on {node} (pid {pid}) ignored SIGTERM: killing it");
    let _ = child.kill();
    let _ = child.wait();
    forget(pid);
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

fn forget(pid: u32) {
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|(_, p)| *p != pid);
}

/// Kills every upstream process still registered (teardown on error or signal, where the
/// [`Upstream`] that owns them may never be dropped).
pub(crate) fn stop_all() {
    let running = std::mem::take(
        &mut *RUNNING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for (node, pid) in running {
        eprintln!("stopping upstream ztunnel on {node} (pid {pid})");
        signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
}
