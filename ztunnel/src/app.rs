//! Start-up wiring: build every component from the config and run until shutdown.

use std::sync::Arc;

use anyhow::Context;
use mesh::ca_client::{CaClient, CaClientConfig};
use mesh::cert_manager::{CertManager, RenewalConfig};
use mesh::metrics::XdsMetrics;
use mesh::store::Store;
use mesh::tcp_congestion::CongestionControl;
use mesh::xds::{BackoffConfig, BearerToken, NodeInfo, XdsClient, XdsConfig, XdsTls, XdsTransport};

use crate::admin::{AdminState, LogReload};
use crate::config::Config;
use crate::inpod::{self, PodStates, Pods};
use crate::netns::Netns;
use crate::proxy::hop::SocketSettings;
use crate::proxy::live::LiveConnections;
use crate::proxy::ProxyInputs;
use crate::telemetry::Telemetry;

/// Adds what every process exports (`process_*`, `tokio_*` of `runtimes`, `mesh_build_info`),
/// the xDS client's and certificate manager's metrics, and `ztunnel_pods` to the registry.
pub fn register_metrics(
    telemetry: &Telemetry,
    runtimes: &[(&str, tokio::runtime::Handle)],
    xds: &XdsMetrics,
    certs: &Arc<CertManager>,
    pods: PodStates,
) {
    telemetry.with_registry(|registry| {
        mesh::metrics::register_process(registry, "ztunnel", runtimes);
        mesh::metrics::register_xds(registry, xds);
        mesh::metrics::register_certificates(registry, certs);
        registry.register_collector(Box::new(pods));
    });
}

/// Runs ztunnel until SIGTERM, ctrl-c or `/quitquitquit`, on the data-plane runtime; the CA
/// client, the xDS client, policy re-checks and the admin endpoints run on `control`, so config
/// work and metrics encoding never take a data-plane thread.
pub async fn run(
    config: Arc<Config>,
    log_reload: LogReload,
    control: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let home = Netns::current().context("reading ztunnel's own network namespace")?;
    let root_cert_pem = std::fs::read_to_string(&config.root_ca_file).with_context(|| {
        format!(
            "reading the control plane root certificate {}",
            config.root_ca_file.display()
        )
    })?;
    let token = match &config.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };

    // Clients created here spawn their connection tasks on the control runtime.
    let enter = control.enter();
    let ca = CaClient::new(CaClientConfig {
        address: config.ca_address().to_string(),
        root_cert_pem: root_cert_pem.clone(),
        server_name: config.control_plane_name.clone(),
        // Read afresh for every request: a projected token rotates.
        token: None,
        token_file: config.token_file.clone(),
        ttl: config.cert_ttl(),
        impersonate: true,
    })
    .context("CA client")?
    // Re-read before each request and connection: the control plane's root can rotate.
    .with_root_file(config.root_ca_file.clone());
    let certs = CertManager::on_runtime(
        Arc::new(ca),
        RenewalConfig {
            release_grace: config.cert_release_grace(),
            ..RenewalConfig::default()
        },
        control.clone(),
    );

    let store = Store::new();
    let node_ip = config.admin_addr.ip();
    let xds = XdsClient::new(
        XdsConfig {
            address: config.xds_address.clone(),
            transport: XdsTransport::Tls(XdsTls {
                root_cert_pem,
                server_name: config.control_plane_name.clone(),
                client_cert: None,
            }),
            token: config
                .token_file
                .clone()
                .map(BearerToken::File)
                .or(token.map(BearerToken::Static)),
            node: NodeInfo::ztunnel(
                node_ip,
                &format!("ztunnel-{}", config.node_name),
                "istio-system",
                &config.node_name,
            ),
            backoff: BackoffConfig::default(),
            // A node tunnel enforces L4 only: it never subscribes to waypoint types.
            extra_types: Vec::new(),
        },
        store.clone(),
    )
    .context("xDS client")?
    .with_root_file(config.root_ca_file.clone());
    drop(enter);
    let xds_status = xds.status();
    let xds_metrics = xds.metrics();
    control.spawn(xds.run());

    let telemetry = Arc::new(Telemetry::with_store(store.clone()));
    let pods = Arc::new(Pods::default());
    let live =
        Arc::new(LiveConnections::default().with_first_byte_timeout(config.first_byte_timeout()));
    let runtimes = [
        ("data", tokio::runtime::Handle::current()),
        ("control", control.clone()),
    ];
    register_metrics(
        &telemetry,
        &runtimes,
        &xds_metrics,
        &certs,
        PodStates {
            pods: pods.clone(),
            live: live.clone(),
        },
    );
    control.spawn(live.clone().watch(store.clone()));
    let pool_stats = mesh::hbone::PoolStats::new();
    let mut acceptor = None;
    telemetry.with_registry(|r| acceptor = Some(mesh::limits::Acceptor::register(r)));
    let limits = Arc::new(crate::proxy::limits::Limits::new(
        acceptor.unwrap_or_else(mesh::limits::Acceptor::new),
        config.max_connections_per_pod(),
        config.connect_timeout,
    ));
    let inputs = ProxyInputs {
        config: config.clone(),
        store: store.clone(),
        certs: certs.clone(),
        telemetry: telemetry.clone(),
        home,
        live: live.clone(),
        pool_stats: pool_stats.clone(),
        limits,
        sockets: SocketSettings {
            keepalive: config.keepalive(),
            local_congestion: config
                .local_congestion_control
                .clone()
                .and_then(CongestionControl::usable),
        },
        served: Arc::default(),
    };
    let zds = tokio::spawn(inpod::run(
        inputs,
        pods.clone(),
        config.inpod_uds.clone(),
        xds_status.clone(),
    ));

    let shutdown = Arc::new(tokio::sync::Notify::new());
    let admin = AdminState {
        store,
        certs,
        pods: pods.clone(),
        live: live.clone(),
        pool_stats,
        xds: xds_status,
        telemetry,
        log_reload,
        shutdown: shutdown.clone(),
        data_plane: tokio::runtime::Handle::current(),
    };
    let endpoints = crate::admin::serve_shared(
        &control,
        [
            (config.admin_addr, admin.clone().admin_handler(), "admin"),
            (
                config.metrics_addr,
                admin.clone().metrics_handler(),
                "metrics",
            ),
            (
                config.readiness_addr,
                admin.clone().readiness_handler(),
                "readiness",
            ),
        ],
    )
    .await?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM; shutting down"),
        () = shutdown.notified() => tracing::info!("/quitquitquit; shutting down"),
    }
    // No pod is taken any more, and a newer ztunnel sharing our ports answers every request.
    zds.abort();
    for endpoint in endpoints {
        endpoint.abort();
    }
    crate::shutdown::drain(&pods, &live, config.drain_deadline()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_registry_holds_process_runtime_xds_certificate_and_pod_metrics() {
        let telemetry = Telemetry::default();
        let certs = CertManager::new(
            mesh::testing::TestCa::new("cluster.local", std::time::Duration::from_secs(3600)),
            RenewalConfig::default(),
        );
        let runtimes = [("main", tokio::runtime::Handle::current())];
        let pods = PodStates {
            pods: Arc::new(Pods::default()),
            live: Arc::new(LiveConnections::default()),
        };
        register_metrics(&telemetry, &runtimes, &XdsMetrics::default(), &certs, pods);
        let text = telemetry.encode();
        let version = mesh::metrics::VERSION;
        for series in [
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "tokio_workers{runtime=\"main\"} 1",
            "tokio_alive_tasks{runtime=\"main\"} ",
            &format!("mesh_build_info{{component=\"ztunnel\",version=\"{version}\"}} 1"),
            "mesh_xds_connected 0",
            "mesh_certificates{state=\"pending\"} 0",
            "ztunnel_pods{state=\"serving\"} 0",
            "ztunnel_connection_failures_total{direction=\"outbound\",reason=\"timeout\"} 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
