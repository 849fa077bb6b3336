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
mod cni;
mod enrollment;
mod netns;
mod plugin;
mod rules;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// cni-plugin, the CNI plugin and node agent of the ambient mesh (Istio ambient compatible).
///
/// Run by the container runtime with `CNI_COMMAND` set, it acts as a chained CNI plugin: it
/// passes the previous plugin's result through and tells the node agent about the pod (ADD
/// fails with "try again later" while the agent is unreachable; DEL always succeeds). Run as
/// `cni-plugin agent`, it is that node agent.
#[derive(Debug, Clone, Parser)]
#[command(name = "cni-plugin", version)]
struct Cli {
    /// Log line format; the level comes from RUST_LOG (default `info`).
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Clone, Subcommand)]
enum Sub {
    /// Run the node agent: serve the plugin's events, capture enrolled pods, serve ZDS.
    Agent(AgentArgs),
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
    /// enrolment (label `istio.io/dataplane-mode`).
    #[arg(long, env = "CONFIG_DIR")]
    config_dir: PathBuf,

    /// Cluster id used in workload uids (`<cluster>//v1/Pod/<ns>/<name>`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,

    /// Also redirect the pods' DNS (UDP 53) to ztunnel's 15053.
    #[arg(long, env = "CAPTURE_DNS")]
    capture_dns: bool,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return plugin_main();
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    tracing::debug!(?cli, "configuration");
    let result = match cli.command {
        Sub::Agent(args) => agent_main(args),
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
    init_tracing(LogFormat::Text);
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

fn agent_main(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.zds_socket.as_os_str().is_empty(),
        "--zds-socket must not be empty"
    );
    anyhow::ensure!(
        !args.cni_socket.as_os_str().is_empty(),
        "--cni-socket must not be empty"
    );
    anyhow::ensure!(
        args.config_dir.is_dir(),
        "--config-dir {} is not a directory",
        args.config_dir.display()
    );
    let config = agent::AgentConfig {
        zds_socket: args.zds_socket,
        cni_socket: args.cni_socket,
        cluster_id: args.cluster_id,
        capture: mesh::capture::CaptureOptions {
            capture_dns: args.capture_dns,
        },
    };
    let enrollment = Arc::new(enrollment::DirEnrollment::new(args.config_dir));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(agent::run(config, enrollment))
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
        let cli =
            Cli::try_parse_from(["cni-plugin", "agent", "--config-dir", "/tmp"]).expect("parses");
        let Sub::Agent(a) = cli.command;
        assert_eq!(a.zds_socket, PathBuf::from("/var/run/ztunnel/ztunnel.sock"));
        assert_eq!(
            a.cni_socket,
            PathBuf::from("/var/run/ambient-mesh/cni.sock")
        );
        assert_eq!(a.cluster_id, "Kubernetes");
        assert!(Cli::try_parse_from(["cni-plugin", "agent"]).is_err());
    }
}
