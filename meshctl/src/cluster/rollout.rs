//! `meshctl rollout restart ztunnel --node N`: replaces a node's ztunnel without dropping a
//! connection, as a Kubernetes DaemonSet rolling update with `maxSurge: 1` does.
//!
//! 1. A second ztunnel starts on the node beside the running one. It syncs its xDS config,
//!    connects to the CNI agent, which hands it every pod (its snapshot) and from then on sends
//!    changes to it only, and opens its in-pod listeners in the same `SO_REUSEPORT` groups as
//!    the old one's. It logs `ztunnel ready ... pid=<its pid>` once all that is done.
//! 2. Only then the old ztunnel gets SIGTERM: it closes its listeners (queued connections move
//!    to the new ones: the agent set `tcp_migrate_req` in every pod namespace), sends GOAWAY on
//!    its inbound HBONE connections and drains its connections until they end or its drain
//!    deadline (`DRAIN_DEADLINE_SECS`, 20 s) passes, then exits.
//! 3. We wait for that exit (bounded by `--timeout`; past it, SIGKILL and an error) and record
//!    the new pid in `cluster.json`.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::components::{self, Daemon, Spawned};
use super::state::StateDir;

/// `meshctl rollout ...`.
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Replace a component's process without dropping a connection: the new one starts and
    /// takes over, then the old one drains and exits.
    Restart(RestartArgs),
}

/// Components that can be rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rollable {
    /// A node's ztunnel.
    Ztunnel,
}

/// `meshctl rollout restart ztunnel --node N`.
#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// What to restart.
    pub component: Rollable,
    /// The node whose ztunnel is replaced.
    #[arg(long)]
    pub node: String,
    /// How long the new ztunnel may take to be ready, and the old one to drain and exit
    /// (its drain deadline is 20 s), in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// Runs a rollout command.
pub fn run(state: &StateDir, command: &RolloutCommand) -> anyhow::Result<()> {
    match command {
        RolloutCommand::Restart(args) => match args.component {
            Rollable::Ztunnel => {
                restart_ztunnel(state, &args.node, Duration::from_secs(args.timeout_secs))
            }
        },
    }
}

fn restart_ztunnel(state: &StateDir, node: &str, timeout: Duration) -> anyhow::Result<()> {
    crate::sys::preflight()?;
    let _lock = state.lock()?;
    let mut cluster = state.load()?;
    cluster.node(node)?;
    let daemon = Daemon::Ztunnel(node.to_string());
    let key = daemon.key();
    let Some(old) = daemon.running(&cluster) else {
        bail!(
            "{key} is not running: nothing to roll out (start it with \
             `meshctl cluster start ztunnel --node {node}`)"
        );
    };
    components::check_binaries(std::slice::from_ref(&daemon))?;

    let started = Instant::now();
    let Spawned {
        record: new,
        log,
        offset,
        ..
    } = components::spawn(state, &cluster, &daemon)?;
    progress!(
        "{key}: new ztunnel started (pid {}) beside the old one (pid {}); waiting until it serves every pod",
        new.pid,
        old.pid
    );
    let ready = format!("pid={}", new.pid);
    let deadline = started + timeout;
    loop {
        let lines = components::log_since(&log, offset);
        if lines
            .lines()
            .any(|l| l.contains("ztunnel ready") && l.contains(&ready))
        {
            break;
        }
        let failed = if !new.is_alive() {
            Some("exited before it was ready")
        } else if Instant::now() >= deadline {
            Some("was not ready in time")
        } else {
            None
        };
        if let Some(why) = failed {
            new.kill();
            bail!(
                "the new {key} (pid {}) {why} ({timeout:?}); the old one (pid {}) keeps \
                 serving. The end of {}:\n{}",
                new.pid,
                old.pid,
                log.display(),
                components::log_tail(&log, 25)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    progress!(
        "{key}: new ztunnel ready after {:.1}s; stopping the old one (pid {}), which drains its connections",
        started.elapsed().as_secs_f64(),
        old.pid
    );
    // From here on the new one serves the node, whatever happens to the old one.
    cluster.daemons.insert(key.clone(), new);
    state.save(&cluster)?;
    old.terminate();
    let draining = Instant::now();
    if !old.wait_gone(deadline.saturating_duration_since(draining)) {
        old.kill();
        bail!(
            "the old {key} (pid {}) did not exit within {timeout:?} of the rollout's start; \
             killed it (the new one, pid {}, serves the node)",
            old.pid,
            new.pid
        );
    }
    out!(
        "{key} restarted: pid {} -> {} (the old one drained in {:.1}s)",
        old.pid,
        new.pid,
        draining.elapsed().as_secs_f64()
    );
    Ok(())
}
