//! cni-plugin: the mesh's CNI plugin and node agent, in one binary.
//!
//! - **Plugin mode** (the container runtime runs it with `CNI_COMMAND` set): a chained CNI
//!   plugin (CNI 1.0.0) that tells the node agent about each pod sandbox ([`plugin`]).
//! - **Agent mode** (`cni-plugin agent ...`): one per node; decides which pods are in the mesh,
//!   installs their capture rules and hands their network namespaces to ztunnel ([`agent`]).
//!
//! See `cni-plugin/ARCHITECTURE.md`.

#![forbid(unsafe_code)]

mod agent;
mod agent_proto;
// The pure CNI parsing is the crate's library (fuzzed); `crate::cni` names it here.
use cni_plugin::cni;
mod enrollment;
mod install;
mod kube_enrollment;
mod metrics;
mod netns;
mod node;
mod plugin;
mod pods;
mod reconcile;
mod repair;
mod resolve;
mod rules;
mod scan;
mod ztunnel;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mesh::logging::{LogFormat, LogReload};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// cni-plugin, the CNI plugin and node agent of the ambient mesh (Istio ambient compatible).
///
/// Run by the container runtime with `CNI_COMMAND` set, it acts as a chained CNI plugin: it
/// passes the previous plugin's result through and tells the node agent about the pod (ADD
/// fails with "try again later" while the agent is unreachable; DEL always succeeds). Run as
/// `cni-plugin agent`, it is that node agent.
#[derive(Debug, Clone, Parser)]
#[command(name = "cni-plugin", version)]
struct Cli {
    /// Log line format, `text` or `json`; the level comes from RUST_LOG (default `info`) and
    /// can be changed at run time on the agent's admin port (`POST /logging?level=`).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Clone, Subcommand)]
enum Sub {
    /// Run the node agent: serve the plugin's events, capture enrolled pods, serve ZDS.
    Agent(Box<AgentArgs>),
    /// Remove what the agent installed: its entry from every `*.conflist` of the conf dir and
    /// its binary from the bin dir.
    Uninstall(UninstallArgs),
}

/// `uninstall`'s flags.
#[derive(Debug, Clone, Args)]
struct UninstallArgs {
    /// The CNI network config directory.
    #[arg(long, env = "CNI_CONF_DIR")]
    cni_conf_dir: PathBuf,

    /// The CNI plugin binary directory.
    #[arg(long, env = "CNI_BIN_DIR")]
    cni_bin_dir: PathBuf,
}

/// The node agent's flags.
#[derive(Debug, Clone, Args)]
struct AgentArgs {
    /// Unix socket on which the agent serves ZDS to the node's ztunnel.
    #[arg(long, env = "ZDS_SOCKET", default_value = mesh::zds::DEFAULT_SOCKET)]
    zds_socket: PathBuf,

    /// Unix socket on which the agent takes the plugin's events (the plugin config's
    /// `agent_socket`).
    #[arg(long, env = "CNI_SOCKET", default_value = cni::DEFAULT_AGENT_SOCKET)]
    cni_socket: PathBuf,

    /// Directory of Kubernetes YAML (the one istiod-lite reads): Namespaces and Pods decide
    /// enrolment (label `istio.io/dataplane-mode`). Without it, the agent watches the
    /// Kubernetes API server (this node's Pods and every Namespace).
    #[arg(long, env = "CONFIG_DIR")]
    config_dir: Option<PathBuf>,

    /// Cluster id used in workload uids (`<cluster>//v1/Pod/<ns>/<name>`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,

    /// Also redirect the pods' DNS (UDP 53) to ztunnel's 15053.
    #[arg(long, env = "CAPTURE_DNS")]
    capture_dns: bool,

    /// This node's name: the agent manages the pods whose `spec.nodeName` it is (and those
    /// the runtime on this node sets up).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    /// Milliseconds between two reads of the config dir to follow label changes.
    #[arg(long, env = "RECONCILE_INTERVAL_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..))]
    reconcile_interval_ms: u64,

    /// Milliseconds between checks of every enrolled pod's capture rules: rules removed by
    /// a reboot or another tool are rewritten without restarting the pod. 0 turns it off.
    #[arg(long, env = "RULE_CHECK_INTERVAL_MS", default_value_t = 2000)]
    rule_check_interval_ms: u64,

    /// Install into this CNI network config directory: add the plugin to its first
    /// `*.conflist` (waiting for one to appear). Needs --cni-bin-dir.
    #[arg(long, env = "CNI_CONF_DIR", requires = "cni_bin_dir")]
    cni_conf_dir: Option<PathBuf>,

    /// Serve `GET /metrics` (Prometheus) here, e.g. `0.0.0.0:15014` in the DaemonSet.
    #[arg(long, env = "MONITORING_ADDR")]
    monitoring_addr: Option<SocketAddr>,

    /// Serve the admin endpoint (`GET|POST /logging`) here; keep it on loopback
    /// (`127.0.0.1:9877` in the DaemonSet).
    #[arg(long, env = "ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,

    /// Copy the running binary into this CNI plugin directory as `ambient-mesh-cni`. Needs
    /// --cni-conf-dir.
    #[arg(long, env = "CNI_BIN_DIR", requires = "cni_conf_dir")]
    cni_bin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return plugin_main();
    }
    let cli = Cli::parse();
    // Kept until main returns: dropping it flushes buffered log lines.
    let logging = mesh::logging::init("cni-agent", cli.log_format);
    tracing::debug!(?cli, "configuration");
    let result = match cli.command {
        Sub::Agent(args) => agent_main(*args, logging.reload.clone()),
        Sub::Uninstall(args) => uninstall_main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one place a daemon writes to stderr directly: before (or instead of) running.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("cni-plugin: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// CNI plugin mode: stdout carries only the result (or error) JSON; logs go to stderr.
fn plugin_main() -> ExitCode {
    // Logs go to stderr: stdout is the CNI result. Kept until the plugin returns.
    let _logging = mesh::logging::init("cni-plugin", LogFormat::Text);
    let mut stdin = Vec::new();
    let stdin = std::io::stdin().read_to_end(&mut stdin).map(|_| stdin);
    let outcome = plugin::run(|k| std::env::var(k).ok(), stdin, agent_proto::REPLY_TIMEOUT);
    if let Some(json) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
    }
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn agent_main(args: AgentArgs, log_reload: LogReload) -> anyhow::Result<()> {
    // It holds a descriptor per pod namespace it hands to ztunnel, plus its watches.
    mesh::limits::raise_fd_limit_and_log("cni-agent");
    anyhow::ensure!(
        !args.zds_socket.as_os_str().is_empty(),
        "--zds-socket must not be empty"
    );
    anyhow::ensure!(
        !args.cni_socket.as_os_str().is_empty(),
        "--cni-socket must not be empty"
    );
    if let Some(dir) = &args.config_dir {
        anyhow::ensure!(
            dir.is_dir(),
            "--config-dir {} is not a directory",
            dir.display()
        );
    }
    anyhow::ensure!(!args.node_name.is_empty(), "--node-name must not be empty");
    let install = match (args.cni_conf_dir, args.cni_bin_dir) {
        (Some(conf_dir), Some(bin_dir)) => Some(agent::InstallDirs { conf_dir, bin_dir }),
        _ => None,
    };
    let config = agent::AgentConfig {
        zds_socket: args.zds_socket,
        cni_socket: args.cni_socket,
        cluster_id: args.cluster_id,
        capture: mesh::capture::CaptureOptions {
            capture_dns: args.capture_dns,
        },
        node_name: args.node_name,
        reconcile_interval: Duration::from_millis(args.reconcile_interval_ms),
        rule_check_interval: (args.rule_check_interval_ms > 0)
            .then(|| Duration::from_millis(args.rule_check_interval_ms)),
        install,
        monitoring_addr: args.monitoring_addr,
        admin_addr: args.admin_addr,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let enrollment: Arc<dyn enrollment::Enrollment> = match args.config_dir {
            Some(dir) => Arc::new(enrollment::DirEnrollment::new(dir)),
            None => {
                let client = kube::Client::try_default().await.map_err(|e| {
                    anyhow::anyhow!(
                        "no --config-dir, and no Kubernetes API server to watch (in-cluster \
                         service account or $KUBECONFIG): {e}"
                    )
                })?;
                let timeout = Duration::from_secs(60);
                Arc::new(
                    kube_enrollment::KubeEnrollment::start(client, &config.node_name, timeout)
                        .await?,
                )
            }
        };
        agent::run(config, enrollment, log_reload).await
    })
}

fn uninstall_main(args: UninstallArgs) -> anyhow::Result<()> {
    let done = install::uninstall(&args.cni_conf_dir, &args.cni_bin_dir)?;
    for path in &done.conflists {
        tracing::info!(conflist = %path.display(), "removed the plugin from the CNI config");
    }
    match &done.binary {
        Some(path) => tracing::info!(path = %path.display(), "removed the plugin binary"),
        None => tracing::info!("no plugin binary to remove"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn agent_flags_parse_with_defaults() {
        let base = [
            "cni-plugin",
            "agent",
            "--config-dir",
            "/tmp",
            "--node-name",
            "n1",
        ];
        let cli = Cli::try_parse_from(base).expect("parses");
        let Sub::Agent(a) = cli.command else {
            panic!("not agent");
        };
        assert_eq!(a.zds_socket, PathBuf::from("/var/run/ztunnel/ztunnel.sock"));
        assert_eq!(
            a.cni_socket,
            PathBuf::from("/var/run/ambient-mesh/cni.sock")
        );
        assert_eq!(a.cluster_id, "Kubernetes");
        assert_eq!(a.node_name, "n1");
        assert_eq!(a.reconcile_interval_ms, 500);
        assert_eq!((a.cni_conf_dir, a.cni_bin_dir), (None, None));
        assert!(Cli::try_parse_from(["cni-plugin", "agent"]).is_err());
        assert!(
            Cli::try_parse_from(["cni-plugin", "agent", "--config-dir", "/tmp"]).is_err(),
            "--node-name is required"
        );
        // Install needs both directories.
        let one = [&base[..], &["--cni-conf-dir", "/etc/cni/net.d"]].concat();
        assert!(Cli::try_parse_from(one).is_err());
        let both = [
            &base[..],
            &[
                "--cni-conf-dir",
                "/etc/cni/net.d",
                "--cni-bin-dir",
                "/opt/cni/bin",
            ],
        ]
        .concat();
        let Sub::Agent(a) = Cli::try_parse_from(both).expect("parses").command else {
            panic!("not agent");
        };
        assert_eq!(a.cni_bin_dir, Some(PathBuf::from("/opt/cni/bin")));
        let uninstall = [
            "cni-plugin",
            "uninstall",
            "--cni-conf-dir",
            "/etc/cni/net.d",
            "--cni-bin-dir",
            "/opt/cni/bin",
        ];
        assert!(matches!(
            Cli::try_parse_from(uninstall).expect("parses").command,
            Sub::Uninstall(_)
        ));
    }
}
