//! The ztunnel binary: parse the config, set up logging, run. See `ARCHITECTURE.md`.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};
use ztunnel::admin::LogReload;
use ztunnel::config::{Config, LogFormat};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Logs to stderr through a non-blocking writer (a slow log sink never stalls proxying);
/// the filter can be changed at run time through `/logging`.
fn init_tracing(format: LogFormat) -> (LogReload, tracing_appender::non_blocking::WorkerGuard) {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    let reload: LogReload = Arc::new(move |level: &str| {
        if !level.is_empty() {
            let new =
                EnvFilter::try_new(level).map_err(|e| format!("bad filter {level:?}: {e}"))?;
            handle.reload(new).map_err(|e| e.to_string())?;
            tracing::info!(filter = level, "log filter changed");
        }
        handle
            .with_current(|f| f.to_string())
            .map_err(|e| e.to_string())
    });
    (reload, guard)
}

fn main() -> ExitCode {
    let config = Arc::new(Config::parse());
    // The guard flushes buffered log lines when main returns.
    let (log_reload, _log_guard) = init_tracing(config.log_format);
    tracing::debug!(?config, "configuration");
    // Two runtimes, as upstream: a single-threaded one for control work (CA, xDS, admin,
    // policy re-checks) on its own thread, and a multi-threaded one for the data plane.
    let (control_handle, runtime) = match mesh::runtime::control_and_data("ztunnel") {
        Ok(runtimes) => runtimes,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtimes");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ztunnel::app::run(config, log_reload, control_handle)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "ztunnel failed");
            ExitCode::FAILURE
        }
    }
}
