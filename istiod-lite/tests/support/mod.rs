//! What istiod-lite's integration tests share: the node tokens, one `Env` (the temporary files
//! a server starts from) and the `Running` server it starts, the cluster YAML fixtures
//! ([`cluster`]), and the config API harness ([`xds`]: mesh fixtures, the mesh's `XdsClient`,
//! raw delta ADS streams and their handshake).
//!
//! Each test binary declares `mod support;` and uses its own part of it.

// Each test binary compiles this module on its own and uses a different part of it (the CA
// tests no xDS stream, the config source tests no server), so what one binary leaves unused is
// not dead.
#![allow(dead_code)]

pub mod cluster;
pub mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use istiod_lite::config::{Config, LogFormat};
use istiod_lite::xds::{XdsService, XdsSnapshot};
use istiod_lite::Server;
use mesh::testing::LogBuffer;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub const NODE1_TOKEN: &str = "node-1-token-0123456789abcdef";
pub const NODE2_TOKEN: &str = "node-2-token-0123456789abcdef";
pub const SERVER_NAME: &str = "istiod-lite.istio-system.svc";
/// The longest certificate lifetime the server grants.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more is sent" is watched for.
pub const QUIET: Duration = Duration::from_millis(500);

// ---- log capture -------------------------------------------------------------------------

pub fn logs() -> &'static LogBuffer {
    LogBuffer::global()
}

/// Waits (without sleeping blindly) until `condition` holds.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- harness -----------------------------------------------------------------------------

/// The files a server starts from: a data directory (not yet created: the server makes it),
/// a config directory, a tokens file for node-1 and node-2 and, if asked for, a plug-in CA
/// directory.
pub struct Env {
    _root: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub config_dir: PathBuf,
    pub tokens_file: PathBuf,
    pub plugin_ca_dir: Option<PathBuf>,
}

/// What goes into an [`Env`] besides the tokens.
#[derive(Default)]
pub struct EnvBuilder {
    pods: Option<String>,
    plugin_ca: Option<Vec<(String, String)>>,
}

impl EnvBuilder {
    /// Cluster YAML written to `pods.yaml` in the config directory.
    pub fn pods(mut self, yaml: &str) -> Self {
        self.pods = Some(yaml.into());
        self
    }

    /// A plug-in CA directory (`cacerts`) holding `files` (name, contents).
    pub fn plugin_ca(mut self, files: &[(&str, &str)]) -> Self {
        self.plugin_ca = Some(
            files
                .iter()
                .map(|(name, contents)| (name.to_string(), contents.to_string()))
                .collect(),
        );
        self
    }

    pub fn build(self) -> Env {
        logs();
        let root = tempfile::tempdir().expect("tempdir");
        let data_dir = root.path().join("data");
        let config_dir = root.path().join("config");
        std::fs::create_dir(&config_dir).expect("config dir");
        if let Some(pods) = &self.pods {
            std::fs::write(config_dir.join("pods.yaml"), pods).expect("pods");
        }
        let tokens_file = root.path().join("tokens.yaml");
        std::fs::write(
            &tokens_file,
            format!(
                "tokens:\n  - {{token: {NODE1_TOKEN}, node: node-1}}\n  - {{token: {NODE2_TOKEN}, node: node-2}}\n"
            ),
        )
        .expect("tokens");
        let plugin_ca_dir = self.plugin_ca.map(|files| {
            let dir = root.path().join("cacerts");
            std::fs::create_dir(&dir).expect("cacerts dir");
            for (name, contents) in files {
                std::fs::write(dir.join(name), contents).expect("write");
            }
            dir
        });
        Env {
            _root: root,
            data_dir,
            config_dir,
            tokens_file,
            plugin_ca_dir,
        }
    }
}

impl Env {
    /// Tokens only: an empty config directory and the server's own CA.
    pub fn new() -> Self {
        Self::builder().build()
    }

    pub fn builder() -> EnvBuilder {
        EnvBuilder::default()
    }

    pub fn config(&self, listen: SocketAddr, debounce: Duration) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            config_dir: Some(self.config_dir.clone()),
            config_source: None,
            kubeconfig: None,
            kubernetes_service_host: None,
            listen,
            trust_domain: "cluster.local".into(),
            tokens_file: Some(self.tokens_file.clone()),
            tunnel_service_account: "istio-system/ztunnel".into(),
            deploy_waypoints: true,
            waypoint_image: "waypoint:test".into(),
            waypoint_xds_address: "https://istiod.istio-system.svc:15012".into(),
            deployer_resync_secs: 1,
            pod_ip: None,
            serving_cert_ttl_secs: 3600,
            plugin_ca_dir: self.plugin_ca_dir.clone(),
            ca_reload_interval_ms: 1000,
            max_cert_ttl_secs: MAX_TTL.as_secs(),
            server_names: vec![SERVER_NAME.into(), "localhost".into(), "127.0.0.1".into()],
            log_format: LogFormat::Text,
            cluster_id: "Kubernetes".into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            monitoring_addr: "127.0.0.1:0".parse().expect("addr"),
            admin_addr: "127.0.0.1:0".parse().expect("addr"),
            push_debounce_ms: u64::try_from(debounce.as_millis()).expect("ms"),
        }
    }

    /// Starts a server on a free port serving `mesh`, with a short debounce.
    pub async fn start(&self, mesh: &xds::Mesh) -> Running {
        self.start_with(mesh.snapshot(), "127.0.0.1:0", Duration::from_millis(20))
            .await
    }

    pub async fn start_with(
        &self,
        snapshot: XdsSnapshot,
        listen: &str,
        debounce: Duration,
    ) -> Running {
        let (snapshots, rx) = watch::channel(Arc::new(snapshot));
        let config = self.config(listen.parse().expect("addr"), debounce);
        let server = Server::bind_with_snapshots(&config, rx)
            .await
            .expect("server starts");
        Self::run(server, snapshots)
    }

    /// Starts a server on a free port that serves the translation of its config directory,
    /// as in production.
    pub async fn start_from_dir(&self) -> Running {
        let config = self.config(
            "127.0.0.1:0".parse().expect("addr"),
            Duration::from_millis(20),
        );
        let server = Server::bind(&config).await.expect("server starts");
        // Nobody publishes on this one: the config directory feeds the server.
        let (snapshots, _) = watch::channel(Arc::new(XdsSnapshot::default()));
        Self::run(server, snapshots)
    }

    /// Starts a server on a free port that reads the cluster from the Kubernetes API server
    /// at `api_url` (the fake one), through a kubeconfig written for it.
    pub async fn start_from_kube(&self, api_url: &str) -> Running {
        let kubeconfig = self.config_dir.join("../kubeconfig.yaml");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{api_url}\"}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n"
            ),
        )
        .expect("kubeconfig");
        let mut config = self.config(
            "127.0.0.1:0".parse().expect("addr"),
            Duration::from_millis(20),
        );
        config.config_dir = None;
        config.config_source = Some(istiod_lite::config::SourceKind::Kubernetes);
        config.kubeconfig = Some(kubeconfig);
        let server = Server::bind(&config).await.expect("server starts");
        let (snapshots, _) = watch::channel(Arc::new(XdsSnapshot::default()));
        Self::run(server, snapshots)
    }

    pub fn run(server: Server, snapshots: watch::Sender<Arc<XdsSnapshot>>) -> Running {
        let addr = server.local_addr();
        let monitoring = server.monitoring_addr();
        let root_pem = server.root_cert_pem().to_string();
        let xds = server.xds().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            monitoring,
            root_pem,
            xds,
            snapshots,
            stop,
            task,
        }
    }
}

/// A server running in this process.
pub struct Running {
    pub addr: SocketAddr,
    pub monitoring: SocketAddr,
    pub root_pem: String,
    pub xds: XdsService,
    pub snapshots: watch::Sender<Arc<XdsSnapshot>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn publish(&self, snapshot: XdsSnapshot) {
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    /// A TLS channel to the server that trusts its root and expects `server_name`.
    pub async fn channel(&self, server_name: &str) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.root_pem))
            .domain_name(server_name);
        Endpoint::from_shared(format!("https://{}", self.addr))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connects")
    }

    /// Shuts the server down; it must finish in time even with streams open.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops in time despite open streams")
            .expect("server task")
            .expect("server stops cleanly");
    }
}
