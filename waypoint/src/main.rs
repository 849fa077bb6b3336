//! The waypoint binary: parse the config, set up logging, run. See `ARCHITECTURE.md`.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use waypoint::config::Config;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let config = Arc::new(Config::parse());
    // The guard flushes buffered log lines when main returns.
    let logging = mesh::logging::init("waypoint", config.log_format);
    tracing::debug!(?config, "configuration");
    // Two sockets per proxied request stream, plus pooled upstreams.
    mesh::limits::raise_fd_limit_and_log("waypoint");
    // Two runtimes, as ztunnel: a single-threaded one for control work (CA, xDS, admin) on
    // its own thread, and a multi-threaded one for the data plane.
    let (control_handle, runtime) = match mesh::runtime::control_and_data("waypoint", None) {
        Ok(runtimes) => runtimes,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtimes");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(waypoint::app::run(
        config,
        logging.reload.clone(),
        control_handle,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "waypoint failed");
            ExitCode::FAILURE
        }
    }
}
