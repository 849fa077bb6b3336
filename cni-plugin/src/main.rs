//! cni-plugin: the mesh's CNI node agent, which enrols pods and hands them to ztunnel.
//!
//! Today this binary only parses and checks its configuration, then says that it cannot enrol
//! pods yet and exits with status 1. Pod watching, the capture rules inside each pod's network
//! namespace and the ZDS server for ztunnel arrive in later issues. See
//! `cni-plugin/ARCHITECTURE.md`.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

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

/// cni-plugin, the CNI node agent of the ambient mesh (Istio ambient compatible). Not
/// functional yet: this build checks its configuration and exits with status 1
///
/// One agent runs on every node. Once complete, it will find pods enrolled in the mesh (label
/// `istio.io/dataplane-mode=ambient` on the pod or its namespace, no pod restart), install the
/// capture rules inside each pod's network namespace (iptables or nftables: outbound TCP to
/// 15001, inbound to 15006, HBONE on 15008 untouched), and hand the namespace to the node's
/// ztunnel over ZDS (a SOCK_SEQPACKET Unix socket, the namespace passed as a file descriptor).
///
/// It is not yet usable as a CNI plugin either.
#[derive(Debug, Clone, Parser)]
#[command(name = "cni-plugin", version)]
struct Config {
    /// Name of the Kubernetes node this agent runs on; only pods on this node are enrolled.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,

    /// Unix socket on which the agent serves ZDS to the node's ztunnel.
    #[arg(
        long,
        env = "ZDS_SOCKET",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    zds_socket: PathBuf,

    /// Log line format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
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
    let config = Config::parse();
    init_tracing(config.log_format);
    tracing::debug!(?config, "configuration");
    match run(&config) {
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

fn run(config: &Config) -> anyhow::Result<()> {
    if config.zds_socket.as_os_str().is_empty() {
        anyhow::bail!("--zds-socket must not be empty");
    }
    anyhow::bail!(
        "not functional yet: pod enrolment, capture rules and the ZDS server for ztunnel arrive \
         in later issues; this build only checks its configuration. See \
         cni-plugin/ARCHITECTURE.md."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn says_it_is_not_functional_yet() {
        let config = Config::try_parse_from(["cni-plugin"]).expect("defaults parse");
        let err = run(&config).expect_err("not functional");
        assert!(err.to_string().contains("not functional yet"), "{err}");
    }
}
