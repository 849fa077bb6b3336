//! The mesh's daemons in a local cluster: how each is started (binary, flags, environment,
//! namespace), when it counts as ready, and how it is stopped.
//!
//! - istiod-lite: node n1's namespace, listening on n1's underlay address :15012 (monitoring
//!   :15014); ready when it logs "istiod-lite ready".
//! - node agent (`cni-plugin agent`): each node's namespace; ready when it logs "node agent
//!   ready" (it has then installed its CNI plugin into the node's conflist).
//! - ztunnel: each node's namespace, admin on 127.0.0.1:15000, metrics :15020 and readiness
//!   :15021 on the node's underlay address; ready when `/healthz/ready` answers 200.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::plan;
use super::state::{ClusterState, StateDir};
use crate::process::{self, ProcRecord};

/// How long a daemon may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One daemon of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    /// The control plane, on node n1.
    Istiod,
    /// The node tunnel of a node.
    Ztunnel(String),
    /// The CNI node agent of a node.
    Agent(String),
}

impl Daemon {
    /// Its key in `cluster.json` and the base name of its log file.
    pub fn key(&self) -> String {
        match self {
            Daemon::Istiod => "istiod".into(),
            Daemon::Ztunnel(node) => format!("ztunnel-{node}"),
            Daemon::Agent(node) => format!("agent-{node}"),
        }
    }

    fn binary_name(&self) -> &'static str {
        match self {
            Daemon::Istiod => "istiod-lite",
            Daemon::Ztunnel(_) => "ztunnel",
            Daemon::Agent(_) => "cni-plugin",
        }
    }

    fn node<'c>(&self, cluster: &'c ClusterState) -> anyhow::Result<&'c plan::NodePlan> {
        match self {
            Daemon::Istiod => cluster.control_node(),
            Daemon::Ztunnel(node) | Daemon::Agent(node) => cluster.node(node),
        }
    }

    /// Whether its recorded process still runs; its record if so.
    pub fn running(&self, cluster: &ClusterState) -> Option<ProcRecord> {
        cluster
            .daemons
            .get(&self.key())
            .copied()
            .filter(ProcRecord::is_alive)
    }
}

/// The daemons of the whole mesh in start order: istiod-lite, the agents (ztunnel connects to
/// their ZDS socket), the ztunnels.
pub fn mesh_daemons(cluster: &ClusterState) -> Vec<Daemon> {
    let mut all = vec![Daemon::Istiod];
    all.extend(cluster.nodes.iter().map(|n| Daemon::Agent(n.name.clone())));
    all.extend(
        cluster
            .nodes
            .iter()
            .map(|n| Daemon::Ztunnel(n.name.clone())),
    );
    all
}

/// A sibling binary of meshctl's own executable; the error says how to build it.
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("finding meshctl's own executable")?;
    let dir = me.parent().unwrap_or_else(|| Path::new("."));
    let candidate = dir.join(name);
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!(
        "{name} not found next to meshctl (looked for {}): build it with `cargo build -p {name}` \
         (same profile as meshctl)",
        candidate.display()
    )
}

/// Checks that every binary the daemons need is there, before anything is created.
pub fn check_binaries(daemons: &[Daemon]) -> anyhow::Result<()> {
    for d in daemons {
        find_binary(d.binary_name())?;
    }
    Ok(())
}

/// The command line of a daemon (after the binary).
fn args(daemon: &Daemon, state: &StateDir, cluster: &ClusterState) -> anyhow::Result<Vec<String>> {
    let s = |p: PathBuf| p.display().to_string();
    let mut argv = match daemon {
        Daemon::Istiod => vec![
            "--config-dir".into(),
            s(state.config_dir()),
            "--data-dir".into(),
            s(state.istiod_dir()),
            "--tokens-file".into(),
            s(state.tokens_file()),
            "--listen".into(),
            cluster.istiod_addr.to_string(),
            "--monitoring-addr".into(),
            cluster.istiod_monitoring_addr.to_string(),
            "--push-debounce-ms".into(),
            "50".into(),
        ],
        Daemon::Ztunnel(node) => {
            let plan = cluster.node(node)?;
            if !state.root_cert().is_file() {
                bail!(
                    "{} does not exist: istiod-lite has never run; start it first \
                     (`meshctl cluster start istiod`)",
                    state.root_cert().display()
                );
            }
            vec![
                "--node-name".into(),
                node.clone(),
                "--xds-address".into(),
                format!("https://{}", cluster.istiod_addr),
                "--root-ca-file".into(),
                s(state.root_cert()),
                "--token-file".into(),
                s(state.node_token(node)),
                "--inpod-uds".into(),
                s(state.ztunnel_socket(node)),
                "--admin-addr".into(),
                plan::ZTUNNEL_ADMIN.to_string(),
                "--metrics-addr".into(),
                plan.ztunnel_metrics().to_string(),
                "--readiness-addr".into(),
                plan.ztunnel_readiness().to_string(),
            ]
        }
        Daemon::Agent(node) => vec![
            "agent".into(),
            "--node-name".into(),
            node.clone(),
            "--config-dir".into(),
            s(state.config_dir()),
            "--zds-socket".into(),
            s(state.ztunnel_socket(node)),
            "--cni-socket".into(),
            s(state.cni_socket(node)),
            "--cni-conf-dir".into(),
            s(state.cni_conf_dir(node)),
            "--cni-bin-dir".into(),
            s(state.cni_bin_dir(node)),
        ],
    };
    if let Daemon::Agent(node) = daemon {
        argv.push("--monitoring-addr".into());
        argv.push(cluster.node(node)?.agent_monitoring().to_string());
        // Loopback of the node's namespace, beside ztunnel's 15000 and istiod-lite's 9876.
        argv.push("--admin-addr".into());
        argv.push(plan::AGENT_ADMIN.to_string());
    }
    Ok(argv)
}

fn env(daemon: &Daemon) -> &'static [(&'static str, &'static str)] {
    match daemon {
        Daemon::Ztunnel(_) => &[("RUST_LOG", "info,access=info")],
        _ => &[("RUST_LOG", "info")],
    }
}

/// Starts `daemon` unless it runs already, waits until it is ready and records it in
/// `cluster` (the caller saves). On failure it is stopped again and the error carries the
/// end of its log. Returns whether it was started (false: it was running).
pub fn start(
    state: &StateDir,
    cluster: &mut ClusterState,
    daemon: &Daemon,
) -> anyhow::Result<bool> {
    let key = daemon.key();
    if let Some(running) = daemon.running(cluster) {
        progress!("{key} is running already (pid {})", running.pid);
        return Ok(false);
    }
    let Spawned {
        record,
        netns,
        log,
        offset,
    } = spawn(state, cluster, daemon)?;
    cluster.daemons.insert(key.clone(), record);
    progress!("{key}: started (pid {}), waiting until ready", record.pid);
    if let Err(e) = wait_ready(daemon, cluster, &netns, &log, offset, record) {
        let _ = record.stop();
        cluster.daemons.remove(&key);
        bail!(
            "{key} {e:#}; the end of {}:\n{}",
            log.display(),
            log_tail(&log, 25)
        );
    }
    progress!("{key}: ready");
    Ok(true)
}

/// A daemon process just started, not yet recorded.
pub struct Spawned {
    /// The process.
    pub record: ProcRecord,
    /// The network namespace it runs in.
    pub netns: String,
    /// Its log file.
    pub log: PathBuf,
    /// The log's length before it started: its own lines come after.
    pub offset: u64,
}

/// Starts a process of `daemon` (whether or not one runs already: an upgrade runs two
/// ztunnels for a moment) without waiting or recording it.
pub fn spawn(state: &StateDir, cluster: &ClusterState, daemon: &Daemon) -> anyhow::Result<Spawned> {
    let binary = find_binary(daemon.binary_name())?;
    let argv_owned = args(daemon, state, cluster)?;
    let netns = daemon.node(cluster)?.netns.clone();
    std::fs::create_dir_all(state.logs_dir()).context("creating the log directory")?;
    let log = state.log(&daemon.key());
    // Readiness lines are looked for after this point, not in an earlier run's lines.
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut argv: Vec<&OsStr> = vec![binary.as_os_str()];
    argv.extend(argv_owned.iter().map(OsStr::new));
    let record = process::spawn_detached(&process::Spawn {
        netns: &netns,
        argv: &argv,
        env: env(daemon),
        log: &log,
    })?;
    Ok(Spawned {
        record,
        netns,
        log,
        offset,
    })
}

fn wait_ready(
    daemon: &Daemon,
    cluster: &ClusterState,
    netns: &str,
    log: &Path,
    offset: u64,
    record: ProcRecord,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !record.is_alive() {
            bail!("exited before it was ready");
        }
        let ready = match daemon {
            Daemon::Istiod => log_since(log, offset).contains("istiod-lite ready"),
            Daemon::Agent(_) => log_since(log, offset).contains("node agent ready"),
            Daemon::Ztunnel(node) => {
                let addr = cluster.node(node)?.ztunnel_readiness();
                crate::netns::http_get(netns, addr, "/healthz/ready", Duration::from_secs(1))
                    .is_ok_and(|r| r.status == 200)
            }
        };
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("was not ready within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops `daemon` if it runs and forgets it in `cluster` (the caller saves). Returns whether
/// it was running.
pub fn stop(cluster: &mut ClusterState, daemon: &Daemon) -> anyhow::Result<bool> {
    let Some(record) = cluster.daemons.get(&daemon.key()).copied() else {
        return Ok(false);
    };
    let was_running = record
        .stop()
        .with_context(|| format!("stopping {}", daemon.key()))?;
    cluster.daemons.remove(&daemon.key());
    Ok(was_running)
}

/// What `log` got after its first `offset` bytes.
pub fn log_since(log: &Path, offset: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last `lines` lines of a log file.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterState {
        ClusterState::example()
    }

    #[test]
    fn mesh_starts_istiod_then_agents_then_ztunnels() {
        let keys: Vec<String> = mesh_daemons(&cluster()).iter().map(Daemon::key).collect();
        assert_eq!(
            keys,
            ["istiod", "agent-n1", "agent-n2", "ztunnel-n1", "ztunnel-n2"]
        );
    }

    #[test]
    fn agent_flags_name_the_node_files_and_its_metrics_and_admin_addresses() {
        let state = StateDir::new("/s");
        let line = args(&Daemon::Agent("n2".into()), &state, &cluster())
            .expect("args")
            .join(" ");
        assert_eq!(
            line,
            "agent --node-name n2 --config-dir /s/config --zds-socket /s/nodes/n2/ztunnel.sock \
             --cni-socket /s/nodes/n2/cni.sock --cni-conf-dir /s/nodes/n2/cni/net.d \
             --cni-bin-dir /s/nodes/n2/cni/bin --monitoring-addr 10.250.0.2:15015 \
             --admin-addr 127.0.0.1:9877"
        );
        let istiod = args(&Daemon::Istiod, &state, &cluster())
            .expect("args")
            .join(" ");
        assert!(istiod.contains("--listen 10.250.0.1:15012"), "{istiod}");
        assert!(
            istiod.contains("--monitoring-addr 10.250.0.1:15014"),
            "{istiod}"
        );
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("x.log");
        std::fs::write(&log, "a\nb\nc\n").expect("write");
        assert_eq!(log_tail(&log, 2), "b\nc");
        assert_eq!(log_since(&log, 2), "b\nc\n");
        assert_eq!(log_tail(&dir.path().join("none"), 2), "");
    }
}
