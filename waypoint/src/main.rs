//! waypoint: the mesh's optional L7 proxy, one per namespace or service account.
//!
//! Today this binary only parses and checks its configuration (including the identity it will
//! serve as), then says that it cannot proxy yet and exits with status 1. The HBONE listener,
//! HTTP routing and L7 policy arrive in later issues. See `waypoint/ARCHITECTURE.md`.

#![forbid(unsafe_code)]

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

/// waypoint, the L7 proxy of the ambient mesh (Istio ambient compatible). Not functional yet:
/// this build checks its configuration and exits with status 1
///
/// A waypoint is deployed per namespace (or service account) that needs L7 features, as a
/// Gateway API `Gateway` with `gatewayClassName: istio-waypoint`. Once complete, it will accept
/// HBONE on 15008 from ztunnels, terminate the tunnel, apply HTTP routing (HTTPRoute/GRPCRoute:
/// matches, weights, retries, timeouts, rewrites) and L7 AuthorizationPolicy, then open a new
/// HBONE tunnel to the chosen destination pod.
///
/// Try `meshctl demo` to watch the HBONE tunnel that the waypoint
/// will terminate.
#[derive(Debug, Clone, Parser)]
#[command(name = "waypoint", version)]
struct Config {
    /// Namespace the waypoint runs in (part of its identity).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,

    /// Service account the waypoint runs as (part of its identity).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "waypoint")]
    service_account: String,

    /// The mesh's trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,

    /// The mesh CA and xDS server (istiod-lite), as an https:// address.
    #[arg(
        long,
        env = "CA_ADDRESS",
        default_value = "https://istiod-lite.istio-system.svc:15012",
        value_parser = https_address
    )]
    ca_address: String,

    /// Log line format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn https_address(s: &str) -> Result<String, String> {
    if s.starts_with("https://") && s.len() > "https://".len() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} must be an https:// address: credentials are never sent in the clear"
        ))
    }
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
                eprintln!("waypoint: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    let identity = mesh::Identity::new(
        &config.trust_domain,
        &config.namespace,
        &config.service_account,
    )
    .map_err(|e| anyhow::anyhow!("the waypoint's identity: {e}"))?;
    tracing::info!(identity = %identity, "waypoint identity");
    anyhow::bail!(
        "not functional yet: the HBONE listener, HTTP routing and L7 policy arrive in later \
         issues; this build only checks its configuration. See waypoint/ARCHITECTURE.md. \
         `meshctl demo` shows the HBONE tunnel working today."
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
    fn refuses_an_identity_that_is_not_a_spiffe_id() {
        let config = Config::try_parse_from(["waypoint", "--namespace", "a/b"]).expect("parses");
        let err = run(&config).expect_err("bad namespace");
        assert!(err.to_string().contains("identity"), "{err}");
    }
}
