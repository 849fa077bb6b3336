//! `meshctl cluster`: a local cluster on this machine's kernel networking — nodes and pods
//! are network namespaces — running the mesh's real daemons, detached, so they outlive the
//! command: `up`, `down`, `status`, and `start|stop|restart` of a component.
//!
//! All state lives in one directory ([`state`]); the names and addresses are planned before
//! anything is created ([`plan`]); [`network`] builds the namespaces and links;
//! [`components`] starts, checks and stops the daemons; [`prometheus`] runs a Prometheus
//! scraping them (`up --prometheus`).

pub mod components;
pub mod network;
pub mod plan;
pub mod prometheus;
pub mod rollout;
pub mod state;

use clap::{Args, Subcommand, ValueEnum};

use anyhow::{bail, Context as _};
use components::Daemon;
use state::{ClusterState, StateDir};

use crate::process::ProcRecord;
use crate::{netns, pod, sys, table};

/// `meshctl cluster` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a local cluster: an underlay, N nodes, and (unless --no-mesh) istiod-lite on
    /// n1 plus a ztunnel and a CNI node agent per node.
    Up(UpArgs),
    /// Remove the cluster: pods, daemons, network namespaces and the state directory.
    Down(DownArgs),
    /// Show nodes, daemons and pod counts.
    Status,
    /// Start a component (waits until it is ready).
    Start(ComponentArgs),
    /// Stop a component (SIGTERM, then SIGKILL after 5 s).
    Stop(ComponentArgs),
    /// Stop, then start a component.
    Restart(ComponentArgs),
    /// Internal (started by `up --prometheus`): forwards the host's Prometheus port into node
    /// n1 and keeps the scrape target files current.
    #[command(hide = true)]
    PrometheusSidecar(SidecarArgs),
}

/// Flags of the hidden `meshctl cluster prometheus-sidecar`.
#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// The host port to serve Prometheus on (127.0.0.1).
    #[arg(long)]
    pub port: u16,
}

/// Flags of `meshctl cluster up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes (n1..nN).
    #[arg(long, default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(plan::MAX_NODES)))]
    pub nodes: u8,
    /// Only the network: no istiod-lite, ztunnel or node agent (install them later with
    /// `meshctl cluster start mesh`).
    #[arg(long)]
    pub no_mesh: bool,
    /// Cluster name, the prefix of its network namespaces (letters and digits).
    #[arg(long, default_value = "mesh")]
    pub name: String,
    /// Also run Prometheus (Debian's `prometheus`) with the shipped config and rules
    /// (manifests/prometheus/), scraping every ztunnel, istiod-lite and waypoint; its UI on
    /// http://127.0.0.1:<--prometheus-port>.
    #[arg(long)]
    pub prometheus: bool,
    /// The host port of Prometheus' UI and API (0: any free port).
    #[arg(long, default_value_t = prometheus::DEFAULT_PORT, requires = "prometheus")]
    pub prometheus_port: u16,
    /// Scrape and rule evaluation interval instead of the shipped 15s (e.g. 1s for tests).
    #[arg(long, requires = "prometheus")]
    pub prometheus_interval: Option<String>,
}

/// Flags of `meshctl cluster down`.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// When cluster.json is gone: the name of the cluster whose leftover network namespaces
    /// (`<name>-*`) to remove.
    #[arg(long)]
    pub name: Option<String>,
}

/// A mesh component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Component {
    /// The control plane (on n1).
    Istiod,
    /// The node tunnel.
    Ztunnel,
    /// The CNI node agent.
    Agent,
    /// All three.
    Mesh,
}

/// Flags of `meshctl cluster start|stop|restart`.
#[derive(Debug, Args)]
pub struct ComponentArgs {
    /// What to start or stop.
    #[arg(value_enum)]
    pub component: Component,
    /// Only on this node (default: every node).
    #[arg(long)]
    pub node: Option<String>,
}

/// Runs a `meshctl cluster` subcommand.
pub fn run(state: &StateDir, command: &ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Up(args) => up(state, args),
        ClusterCommand::Down(args) => down(state, args, Report::Stdout),
        ClusterCommand::Status => status(state),
        ClusterCommand::Start(args) => start(state, args),
        ClusterCommand::Stop(args) => stop(state, args),
        ClusterCommand::Restart(args) => {
            stop(state, args)?;
            start(state, args)
        }
        ClusterCommand::PrometheusSidecar(args) => prometheus::run_sidecar(state, args.port),
    }
}

fn up(state: &StateDir, args: &UpArgs) -> anyhow::Result<()> {
    sys::preflight()?;
    plan::check_cluster_name(&args.name)?;
    let refuse_existing = || -> anyhow::Result<()> {
        if let Some(existing) = state.load_opt()? {
            bail!(
                "a cluster ({}) exists already in {}: run `meshctl cluster down` first",
                existing.name,
                state.root().display()
            );
        }
        Ok(())
    };
    // Checked before the lock (which creates the directory), and again under it.
    refuse_existing()?;
    let prefix = plan::netns_prefix(&args.name);
    let taken = netns::list_with_prefix(&prefix)?;
    if !taken.is_empty() {
        bail!(
            "network namespaces named {prefix}* exist already ({}): a cluster {name} runs with \
             another --state-dir (take it down there, or pick another --name), or they are \
             leftovers of a lost state directory (remove them with `meshctl cluster down --name \
             {name}`)",
            taken.join(", "),
            name = args.name
        );
    }
    let mut cluster = ClusterState {
        name: args.name.clone(),
        underlay_netns: plan::underlay_netns(&args.name),
        istiod_addr: plan::istiod_addr(),
        istiod_monitoring_addr: plan::istiod_monitoring_addr(),
        nodes: plan::nodes(&args.name, args.nodes),
        daemons: Default::default(),
    };
    let daemons = components::mesh_daemons(&cluster);
    if !args.no_mesh {
        components::check_binaries(&daemons)?;
    }
    if args.prometheus {
        sys::tool("prometheus")?;
        prometheus::config(args.prometheus_interval.as_deref())?;
    }
    let lock = state.lock()?;
    refuse_existing()?;
    std::fs::create_dir_all(state.config_dir()).context("creating the config directory")?;
    std::fs::create_dir_all(state.istiod_dir()).context("creating istiod's directory")?;
    // Written first, so that `down` knows the cluster however far `up` gets.
    state.save(&cluster)?;
    let built = (|| {
        progress!(
            "creating {} node(s) in network namespaces {prefix}*",
            cluster.nodes.len()
        );
        network::create(&cluster)?;
        network::write_node_files(state, &cluster)?;
        if !args.no_mesh {
            for d in &daemons {
                let started = components::start(state, &mut cluster, d);
                state.save(&cluster)?;
                started?;
            }
        }
        if args.prometheus {
            let started = prometheus::start(
                state,
                &mut cluster,
                args.prometheus_port,
                args.prometheus_interval.as_deref(),
            );
            state.save(&cluster)?;
            started?;
        }
        anyhow::Ok(())
    })();
    if let Err(e) = built {
        progress!("cluster up failed; tearing down what was created");
        drop(lock);
        if let Err(down_err) = down(state, &DownArgs { name: None }, Report::Stderr) {
            progress!("warning: teardown incomplete: {down_err:#}");
        }
        return Err(e);
    }
    out!(
        "cluster {} is up: {} node(s) ({}), {}",
        cluster.name,
        cluster.nodes.len(),
        cluster
            .nodes
            .iter()
            .map(|n| format!("{} {}", n.name, n.underlay_ip))
            .collect::<Vec<_>>()
            .join(", "),
        if args.no_mesh {
            "no mesh (install it with `meshctl cluster start mesh`)".to_string()
        } else {
            format!("istiod-lite at {}", cluster.istiod_addr)
        }
    );
    if let Some(url) = prometheus::url(state, &cluster) {
        out!("prometheus: {url}");
    }
    Ok(())
}

/// The daemons a `start|stop|restart` names, in start order.
fn selected(cluster: &ClusterState, args: &ComponentArgs) -> anyhow::Result<Vec<Daemon>> {
    let nodes: Vec<String> = match &args.node {
        Some(n) => vec![cluster.node(n)?.name.clone()],
        None => cluster.nodes.iter().map(|n| n.name.clone()).collect(),
    };
    let per_node = |make: fn(String) -> Daemon| nodes.iter().cloned().map(make).collect();
    Ok(match args.component {
        Component::Istiod => {
            if args.node.is_some() {
                bail!("istiod runs on n1 only: --node does not apply");
            }
            vec![Daemon::Istiod]
        }
        Component::Ztunnel => per_node(Daemon::Ztunnel),
        Component::Agent => per_node(Daemon::Agent),
        Component::Mesh => {
            let mut all = Vec::new();
            if args.node.is_none() {
                all.push(Daemon::Istiod);
            }
            all.extend(per_node(Daemon::Agent));
            all.extend::<Vec<Daemon>>(per_node(Daemon::Ztunnel));
            all
        }
    })
}

fn start(state: &StateDir, args: &ComponentArgs) -> anyhow::Result<()> {
    sys::preflight()?;
    let _lock = state.lock()?;
    let mut cluster = state.load()?;
    let daemons = selected(&cluster, args)?;
    components::check_binaries(&daemons)?;
    let mut started = Vec::new();
    for d in &daemons {
        match components::start(state, &mut cluster, d) {
            Ok(true) => started.push(d.clone()),
            Ok(false) => {}
            Err(e) => {
                // Undo this command's starts, newest first.
                for s in started.iter().rev() {
                    let _ = components::stop(&mut cluster, s);
                }
                state.save(&cluster)?;
                return Err(e);
            }
        }
        state.save(&cluster)?;
    }
    for d in &started {
        if let Some(r) = d.running(&cluster) {
            out!("{} started (pid {})", d.key(), r.pid);
        }
    }
    Ok(())
}

fn stop(state: &StateDir, args: &ComponentArgs) -> anyhow::Result<()> {
    sys::require_root()?;
    let _lock = state.lock()?;
    let mut cluster = state.load()?;
    for d in selected(&cluster, args)?.iter().rev() {
        let was_running = components::stop(&mut cluster, d);
        state.save(&cluster)?;
        if was_running? {
            out!("{} stopped", d.key());
        } else {
            out!("{} was not running", d.key());
        }
    }
    Ok(())
}

/// Where `down` reports its outcome: stdout when it is the command, stderr when it cleans up
/// after a failed `up` (whose result is the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Stdout,
    Stderr,
}

fn down(state: &StateDir, args: &DownArgs, report: Report) -> anyhow::Result<()> {
    sys::require_root()?;
    let cluster = match state.load_opt() {
        Ok(c) => c,
        Err(e) if args.name.is_some() => {
            progress!("warning: {e:#}; going by --name");
            None
        }
        Err(e) => return Err(e.context("use --name NAME to remove the cluster's namespaces")),
    };
    let name = match (&cluster, &args.name) {
        (Some(c), _) => c.name.clone(),
        (None, Some(n)) => {
            plan::check_cluster_name(n)?;
            n.clone()
        }
        (None, None) => {
            out!(
                "no cluster in {} (no cluster.json): nothing to do (namespaces left by a lost \
                 state directory go with `meshctl cluster down --name NAME`)",
                state.root().display()
            );
            return Ok(());
        }
    };
    // Without a cluster.json (`--name` after the state was lost) the directory may not be ours
    // at all: only the lock file this command makes is removed from it.
    let ours = state.cluster_file().exists();
    let root_existed = state.root().exists();
    let _lock = state.lock()?;
    let mut warnings = Vec::new();
    let mut procs: Vec<ProcRecord> = Vec::new();

    // Pods first, while the node agents can still hear their CNI DEL.
    let pods = pod::records(state).unwrap_or_else(|e| {
        warnings.push(format!("reading the pod records: {e:#}"));
        Vec::new()
    });
    if !pods.is_empty() {
        progress!("deleting {} pod(s)", pods.len());
    }
    procs.extend(pods.iter().flat_map(|p| [p.main, p.pause]).flatten());
    if let Some(c) = &cluster {
        for p in &pods {
            warnings.extend(
                pod::teardown(state, c, p)
                    .into_iter()
                    .map(|w| format!("pod {}/{}: {w}", p.namespace, p.name)),
            );
        }
    }

    if let Some(mut c) = cluster.clone() {
        procs.extend(c.daemons.values().copied());
        let mut order = components::mesh_daemons(&c);
        order.reverse();
        for d in &order {
            if let Ok(true) =
                components::stop(&mut c, d).map_err(|e| warnings.push(format!("{e:#}")))
            {
                progress!("{} stopped", d.key());
            }
        }
        // Anything else recorded (a node no longer in the plan...).
        for (key, record) in std::mem::take(&mut c.daemons) {
            if let Err(e) = record.stop() {
                warnings.push(format!("stopping {key}: {e:#}"));
            }
        }
    }

    // Every namespace of the cluster, also those no record knows (a half-created pod):
    // pods, then nodes, then the underlay (deleting a node removes its veths).
    let prefix = plan::netns_prefix(&name);
    let mut all = netns::list_with_prefix(&prefix)?;
    let rank = |n: &String| {
        let rest = &n[prefix.len()..];
        if rest == "ul" {
            2
        } else if rest.starts_with('n') && rest[1..].parse::<u8>().is_ok() {
            1
        } else {
            0
        }
    };
    all.sort_by_key(|n| (rank(n), n.clone()));
    if !all.is_empty() {
        progress!("deleting network namespaces {}", all.join(", "));
    }
    for n in &all {
        if let Err(e) = netns::delete(n) {
            warnings.push(format!("{e:#}"));
        }
    }

    // The state: cluster.json last, so an interrupted `down` can be run again.
    let mut entries = if ours {
        state.owned_entries()
    } else {
        vec![state.root().join(".lock")]
    };
    entries.sort_by_key(|p| p.ends_with("cluster.json"));
    for entry in entries {
        let removed = if entry.is_dir() {
            std::fs::remove_dir_all(&entry)
        } else {
            std::fs::remove_file(&entry)
        };
        if let Err(e) = removed {
            if e.kind() != std::io::ErrorKind::NotFound {
                warnings.push(format!("removing {}: {e}", entry.display()));
            }
        }
    }
    let removed = if ours || !root_existed {
        std::fs::remove_dir(state.root())
    } else {
        Ok(())
    };
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            warnings.push(format!(
                "left {} in place ({e}): it holds files meshctl did not create",
                state.root().display()
            ));
        }
    }

    for w in &warnings {
        progress!("warning: {w}");
    }
    let left_netns = netns::list_with_prefix(&prefix)?;
    let left_procs: Vec<i32> = procs
        .iter()
        .filter(|p| p.is_alive())
        .map(|p| p.pid)
        .collect();
    if !left_netns.is_empty() || !left_procs.is_empty() {
        bail!(
            "cluster {name} is not fully down: network namespaces left: [{}], processes left: \
             {left_procs:?}",
            left_netns.join(", ")
        );
    }
    let line = format!(
        "cluster {name} is down: no network namespace {prefix}* left, no process left, {} {}",
        state.root().display(),
        if state.root().exists() {
            "kept (foreign files)"
        } else {
            "removed"
        }
    );
    match report {
        Report::Stdout => out!("{line}"),
        Report::Stderr => progress!("{line}"),
    }
    Ok(())
}

fn status(state: &StateDir) -> anyhow::Result<()> {
    let cluster = state.load()?;
    let pods = pod::records(state)?;
    let show = |d: &Daemon| match d.running(&cluster) {
        Some(r) => format!("running:{}", r.pid),
        None => "stopped".to_string(),
    };
    out!(
        "cluster {}  state {}  underlay {} ({})",
        cluster.name,
        state.root().display(),
        plan::UNDERLAY_CIDR,
        cluster.underlay_netns
    );
    out!(
        "istiod-lite {} (node n1)  {}",
        cluster.istiod_addr,
        show(&Daemon::Istiod)
    );
    if let Some(url) = prometheus::url(state, &cluster) {
        let show_key = |key: &str| match cluster.daemons.get(key).filter(|r| r.is_alive()) {
            Some(r) => format!("running:{}", r.pid),
            None => "stopped".to_string(),
        };
        out!(
            "prometheus {url} (in node n1)  {}  sidecar {}",
            show_key(prometheus::KEY),
            show_key(prometheus::SIDECAR_KEY)
        );
    }
    let mut rows = vec![[
        "NODE",
        "NETNS",
        "UNDERLAY-IP",
        "POD-CIDR",
        "ZTUNNEL",
        "AGENT",
        "PODS",
    ]
    .map(String::from)
    .to_vec()];
    for n in &cluster.nodes {
        rows.push(vec![
            n.name.clone(),
            if netns::exists(&n.netns) {
                n.netns.clone()
            } else {
                format!("{}(missing)", n.netns)
            },
            n.underlay_ip.to_string(),
            n.pod_cidr.clone(),
            show(&Daemon::Ztunnel(n.name.clone())),
            show(&Daemon::Agent(n.name.clone())),
            pods.iter().filter(|p| p.node == n.name).count().to_string(),
        ]);
    }
    out!("{}", table::format(&rows).trim_end());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterState {
        ClusterState::example()
    }

    fn keys(component: Component, node: Option<&str>) -> anyhow::Result<Vec<String>> {
        let args = ComponentArgs {
            component,
            node: node.map(String::from),
        };
        Ok(selected(&cluster(), &args)?
            .iter()
            .map(Daemon::key)
            .collect())
    }

    #[test]
    fn components_select_daemons_in_start_order() {
        assert_eq!(keys(Component::Istiod, None).expect("ok"), ["istiod"]);
        assert!(keys(Component::Istiod, Some("n1")).is_err());
        assert_eq!(
            keys(Component::Ztunnel, None).expect("ok"),
            ["ztunnel-n1", "ztunnel-n2"]
        );
        assert_eq!(
            keys(Component::Agent, Some("n2")).expect("ok"),
            ["agent-n2"]
        );
        assert_eq!(
            keys(Component::Mesh, None).expect("ok"),
            ["istiod", "agent-n1", "agent-n2", "ztunnel-n1", "ztunnel-n2"]
        );
        assert_eq!(
            keys(Component::Mesh, Some("n1")).expect("ok"),
            ["agent-n1", "ztunnel-n1"]
        );
        assert!(keys(Component::Ztunnel, Some("n7")).is_err());
    }
}
