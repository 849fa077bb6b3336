//! istiod-lite: parse the configuration, set up logging, serve until SIGTERM or ctrl-c.

#![forbid(unsafe_code)]

use clap::Parser;
use istiod_lite::config::Config;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Kept until main returns: dropping it flushes buffered log lines.
    let logging = mesh::logging::init("istiod-lite", config.log_format);
    tracing::debug!(?config, "configuration");
    // One xDS stream per proxy in the cluster.
    mesh::limits::raise_fd_limit_and_log("istiod-lite");
    istiod_lite::run(config, logging.reload.clone(), shutdown_signal()).await
}

/// Completes on SIGTERM (Kubernetes stopping the pod) or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = sigterm => {},
    }
    tracing::info!("shutdown signal received; draining");
}
