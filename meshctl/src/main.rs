//! meshctl: the command line of the mesh.
//!
//! A command-line tool, not a daemon: it prints its results on stdout and its logs (off unless
//! `RUST_LOG` asks) on stderr. Today it has one subcommand, [`demo`]; commands that talk to a
//! cluster come later.

#![forbid(unsafe_code)]

mod demo;
mod istiod;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// meshctl, the command line of the ambient mesh (Istio ambient compatible).
///
/// Today it has one subcommand: `demo` runs the mesh's foundation on this machine (the CA
/// istiod-lite, two workload identities, a mutual-TLS HBONE tunnel) so you can watch bytes
/// cross it. Commands to install the mesh into a cluster, inspect pods and apply policy
/// (cluster, pod, apply) come in later issues; they do not exist yet.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local HBONE demo: a CA, two workload identities, bytes through the tunnel.
    Demo(demo::DemoArgs),
}

fn init_tracing() {
    // A CLI: quiet unless asked. Logs go to stderr so stdout stays the demo's narrative.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    tracing::debug!(?cli, "arguments");
    let result = match cli.command {
        Command::Demo(args) => demo::run_until_interrupted(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("meshctl: error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
