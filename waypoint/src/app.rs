//! Start-up wiring: build every component from the config and run until shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use mesh::ca_client::{CaClient, CaClientConfig};
use mesh::cert_manager::{CertManager, RenewalConfig};
use mesh::metrics::XdsMetrics;
use mesh::store::Store;
use mesh::xds::{BackoffConfig, BearerToken, NodeInfo, XdsClient, XdsConfig, XdsTls, XdsTransport};
use tokio::net::TcpListener;

use crate::admin::{AdminState, LogReload};
use crate::config::Config;
use crate::{Telemetry, Waypoint};

/// The node info a waypoint sends: id `waypoint~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`
/// and metadata `NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`, `SERVICE_ACCOUNT`.
pub fn node_info(config: &Config) -> NodeInfo {
    let ns = &config.namespace;
    NodeInfo {
        id: format!(
            "waypoint~{}~{}.{ns}~{ns}.svc.cluster.local",
            config.instance_ip, config.pod_name
        ),
        metadata: BTreeMap::from([
            ("NAME".to_string(), config.pod_name.clone()),
            ("NAMESPACE".to_string(), ns.clone()),
            ("INSTANCE_IPS".to_string(), config.instance_ip.to_string()),
            ("NODE_NAME".to_string(), config.node_name.clone()),
            (
                "SERVICE_ACCOUNT".to_string(),
                config.service_account.clone(),
            ),
        ]),
    }
}

/// Adds what every process exports (`process_*`, `tokio_*` of `runtimes`, `mesh_build_info`)
/// and the xDS client's and certificate manager's metrics to the waypoint's registry.
pub fn register_metrics(
    telemetry: &Telemetry,
    runtimes: &[(&str, tokio::runtime::Handle)],
    xds: &XdsMetrics,
    certs: &Arc<CertManager>,
) {
    telemetry.with_registry(|registry| {
        mesh::metrics::register_process(registry, "waypoint", runtimes);
        mesh::metrics::register_xds(registry, xds);
        mesh::metrics::register_certificates(registry, certs);
    });
}

/// Runs the waypoint until SIGTERM, ctrl-c or `/quitquitquit`. The data plane runs on the
/// caller's runtime; the CA client, the xDS client and the admin endpoints on `control`.
pub async fn run(
    config: Arc<Config>,
    log_reload: LogReload,
    control: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let proxy_config = config
        .proxy_config()
        .map_err(|e| anyhow::anyhow!("the waypoint's identity: {e}"))?;
    let identity = proxy_config.identity.clone();
    tracing::info!(identity = %identity, "waypoint identity");
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
        token: token.clone(),
        token_file: config.token_file.clone(),
        ttl: config.cert_ttl(),
        impersonate: false,
    })
    .context("CA client")?
    // Re-read before each request and connection: the control plane's root can rotate.
    .with_root_file(config.root_ca_file.clone());
    let certs = CertManager::on_runtime(Arc::new(ca), RenewalConfig::default(), control.clone());
    certs.prefetch(&identity);

    let store = Store::new();
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
            node: node_info(&config),
            backoff: BackoffConfig::default(),
            // L7 routes, policies and request authentication.
            extra_types: mesh::xds::WAYPOINT_TYPES.to_vec(),
        },
        store.clone(),
    )
    .context("xDS client")?
    .with_root_file(config.root_ca_file.clone());
    drop(enter);
    let xds_status = xds.status();
    let xds_metrics = xds.metrics();
    control.spawn(xds.run());

    let waypoint = Waypoint::new(store, certs.clone(), proxy_config);
    let runtimes = [
        ("data", tokio::runtime::Handle::current()),
        ("control", control.clone()),
    ];
    register_metrics(waypoint.telemetry(), &runtimes, &xds_metrics, &certs);
    // Route tables are rebuilt on the control runtime when xDS changes the routes.
    control.spawn(waypoint.clone().sync_routes());
    let hbone = TcpListener::bind(config.hbone_addr)
        .await
        .with_context(|| format!("binding the HBONE listener on {}", config.hbone_addr))?;
    tracing::info!(addr = %config.hbone_addr, "HBONE listener up");
    let serving = waypoint.clone();
    tokio::spawn(async move { serving.serve(hbone).await });

    let shutdown = Arc::new(tokio::sync::Notify::new());
    let admin = AdminState {
        waypoint: waypoint.clone(),
        xds: Some(xds_status),
        log_reload,
        shutdown: shutdown.clone(),
    };
    let endpoint = |addr, handler, name| mesh::http_server::Endpoint {
        addr,
        handler,
        name,
    };
    mesh::http_server::serve_endpoints(
        &control,
        vec![
            endpoint(config.admin_addr, admin.clone().admin_handler(), "admin"),
            endpoint(
                config.metrics_addr,
                admin.clone().metrics_handler(),
                "metrics",
            ),
            endpoint(
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
    waypoint.drain();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(config.drain_secs);
    while waypoint.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tracing::info!(still_open = waypoint.open_connections(), "drained; exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn node_id_names_the_waypoint_pod() {
        let c = Config::try_parse_from([
            "waypoint",
            "--namespace",
            "shop",
            "--pod-name",
            "waypoint-abc",
            "--instance-ip",
            "10.1.2.3",
        ])
        .expect("parses");
        let n = node_info(&c);
        assert_eq!(
            n.id,
            "waypoint~10.1.2.3~waypoint-abc.shop~shop.svc.cluster.local"
        );
        assert_eq!(n.metadata["NAMESPACE"], "shop");
    }

    #[tokio::test]
    async fn the_registry_holds_process_runtime_xds_and_certificate_metrics() {
        let telemetry = Telemetry::default();
        let certs = CertManager::new(
            mesh::testing::TestCa::new("cluster.local", std::time::Duration::from_secs(3600)),
            RenewalConfig::default(),
        );
        let runtimes = [("main", tokio::runtime::Handle::current())];
        register_metrics(&telemetry, &runtimes, &XdsMetrics::default(), &certs);
        let text = telemetry.encode();
        let version = mesh::metrics::VERSION;
        for series in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "tokio_workers{runtime=\"main\"} 1",
            "tokio_worker_busy_seconds_total{runtime=\"main\"} ",
            &format!("mesh_build_info{{component=\"waypoint\",version=\"{version}\"}} 1"),
            "mesh_xds_connected 0",
            "mesh_xds_last_nack_timestamp_seconds 0",
            "mesh_certificates{state=\"available\"} 0",
            "mesh_certificate_rotations_total 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
