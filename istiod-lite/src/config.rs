//! istiod-lite's configuration: one typed struct, parsed once from flags and environment.
//!
//! Tests build a [`Config`] as a plain struct literal; nothing here reads the process
//! environment except through clap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Where the cluster is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// A directory of Kubernetes YAML (the local cluster).
    Dir,
    /// The Kubernetes API server.
    Kubernetes,
}

/// The config source resolved from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This directory.
    Dir(PathBuf),
    /// The API server, through this kubeconfig (`None`: the default chain).
    Kubernetes(Option<PathBuf>),
}

/// How log lines are written (the schema of JSON lines: `mesh::logging::json`).
pub use mesh::logging::LogFormat;

/// The mesh control plane: certificate authority and config server.
///
/// istiod-lite signs workload certificates for node tunnels (ztunnel) over
/// `istio.v1.auth.IstioCertificateService/CreateCertificate`, and serves workloads, services
/// and authorization policies over delta ADS (`DeltaAggregatedResources`), both gRPC over TLS
/// on port 15012. Callers authenticate with a bearer token from the tokens file or, on
/// Kubernetes, a projected ServiceAccount token checked with TokenReview; a node may only obtain
/// the identities of pods scheduled on it (read from the config directory or the API server),
/// never a node-wide one such as `ns/istio-system/sa/ztunnel`. The root CA is generated on first start and kept in the data
/// directory, or loaded from a plug-in CA directory.
#[derive(Debug, Clone, Parser)]
#[command(name = "istiod-lite", version, about, long_about)]
pub struct Config {
    /// Where the generated root (`root-cert.pem`, `ca-key.pem`) is kept, and where
    /// `root-cert.pem` is published for clients.
    #[arg(long, env = "DATA_DIR", default_value = "/var/lib/istiod-lite")]
    pub data_dir: PathBuf,

    /// Directory of Kubernetes YAML files (multi-document), followed while running: pods say
    /// which identities run on which node (for the CA); namespaces, pods, services and
    /// authorization policies are translated into the config pushed to proxies. Required
    /// with `--config-source dir`.
    #[arg(long, env = "CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// Where the cluster is read from: `dir` (the YAML directory) or `kubernetes` (the API
    /// server, watched). Default: `dir` when `--config-dir` is given, else `kubernetes` when
    /// running in a pod (`KUBERNETES_SERVICE_HOST` is set).
    #[arg(long, env = "CONFIG_SOURCE", value_enum)]
    pub config_source: Option<SourceKind>,

    /// Kubeconfig for `--config-source kubernetes` outside a cluster; default: the in-cluster
    /// service account, else `$KUBECONFIG` or `~/.kube/config`.
    #[arg(long, env = "KUBECONFIG_FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Set by Kubernetes in every pod; only its presence is read (the default config source).
    #[arg(long, env = "KUBERNETES_SERVICE_HOST", hide = true)]
    pub kubernetes_service_host: Option<String>,

    /// Address the gRPC/TLS server listens on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,

    /// The mesh's trust domain: the only one this CA signs for.
    #[arg(long, env = "TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// YAML file of caller tokens: `tokens: [{token: "...", node: "node-1"}]`. Required with
    /// the directory source; optional on Kubernetes (TokenReview is used too).
    #[arg(long, env = "TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// The node tunnel's service account, `NAMESPACE/NAME`: on Kubernetes, only its
    /// projected tokens (audience `istio-ca`, bound to a pod) speak for a node.
    #[arg(
        long,
        env = "TUNNEL_SERVICE_ACCOUNT",
        default_value = "istio-system/ztunnel"
    )]
    pub tunnel_service_account: String,

    /// Plug-in CA directory in Istio's `cacerts` layout (`ca-cert.pem`, `ca-key.pem`,
    /// `cert-chain.pem`, `root-cert.pem`); when set, used instead of a generated root.
    #[arg(long, env = "PLUGIN_CA_DIR")]
    pub plugin_ca_dir: Option<PathBuf>,

    /// With `--plugin-ca-dir`: milliseconds between two looks at its files; when they change
    /// and load, the new material signs from then on, the serving certificate is reissued and
    /// `root-cert.pem` in the data directory gets the new trust bundle (root rotation without a
    /// restart, docs/reliability.md). 0: the plug-in CA is read at start only.
    #[arg(long, env = "CA_RELOAD_INTERVAL_MS", default_value_t = 1000)]
    pub ca_reload_interval_ms: u64,

    /// Longest lifetime of a workload certificate, in seconds; longer requests are capped.
    #[arg(long = "max-cert-ttl-secs", env = "MAX_CERT_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_cert_ttl_secs: u64,

    /// Names (DNS or IP) in istiod-lite's own serving certificate, comma-separated.
    #[arg(
        long,
        env = "SERVER_NAMES",
        value_delimiter = ',',
        default_value = "istiod.istio-system.svc,istiod-lite.istio-system.svc,localhost,127.0.0.1"
    )]
    pub server_names: Vec<String>,

    /// On Kubernetes, deploy a waypoint (ServiceAccount, Deployment, Service) for each
    /// Gateway of class `istio-waypoint`, and write the Gateways' status.
    #[arg(long, env = "DEPLOY_WAYPOINTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub deploy_waypoints: bool,

    /// The waypoint container image the deployer uses.
    #[arg(long, env = "WAYPOINT_IMAGE",
          default_value = concat!("ghcr.io/ambient-mesh/waypoint:", env!("CARGO_PKG_VERSION")))]
    pub waypoint_image: String,

    /// The control plane's address as waypoints dial it (and the name in its certificate is
    /// its host).
    #[arg(
        long,
        env = "WAYPOINT_XDS_ADDRESS",
        default_value = "https://istiod.istio-system.svc:15012"
    )]
    pub waypoint_xds_address: String,

    /// Seconds between two applies of every waypoint's objects, changed or not (repairs
    /// edits and deletions).
    #[arg(long, env = "DEPLOYER_RESYNC_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub deployer_resync_secs: u64,

    /// This pod's IP (from the downward API): named in the serving certificate, so a client
    /// that dials it and checks the name is served.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,

    /// Lifetime of istiod-lite's own serving certificate, in seconds; it is renewed after two
    /// thirds of it.
    #[arg(long, env = "SERVING_CERT_TTL_SECS", default_value_t = 30 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(3..))]
    pub serving_cert_ttl_secs: u64,

    /// Log line format, `text` or `json`; the level comes from RUST_LOG (default `info`) and
    /// can be changed at run time on the admin port (`POST /logging?level=`).
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// The cluster's name: the `<cluster>` in workload uids and `cluster_id` of workloads.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// DNS suffix of service host names: `<service>.<namespace>.svc.<suffix>`.
    #[arg(long, env = "DOMAIN_SUFFIX", default_value = "cluster.local")]
    pub domain_suffix: String,

    /// The mesh's root namespace: authorization policies there apply mesh-wide.
    #[arg(long, env = "ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,

    /// Address of the plain HTTP server for `GET /metrics` (Prometheus).
    #[arg(long, env = "MONITORING_ADDR", default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,

    /// Address of the admin server (`GET|POST /logging`): loopback, because it changes the
    /// process. 9876 is istiod's introspection (ControlZ) port.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9876")]
    pub admin_addr: SocketAddr,

    /// Config changes closer together than this many milliseconds are pushed to proxies as
    /// one (waiting at most ten times this after the first change of a burst); 0 pushes each
    /// change at once.
    #[arg(
        long = "push-debounce-ms",
        env = "PUSH_DEBOUNCE_MS",
        default_value_t = 100
    )]
    pub push_debounce_ms: u64,
}

impl Config {
    /// The config source the flags ask for; see [`Config::config_source`].
    pub fn source(&self) -> anyhow::Result<Source> {
        let kind = match (self.config_source, &self.config_dir) {
            (Some(kind), _) => kind,
            (None, Some(_)) => SourceKind::Dir,
            (None, None) if self.kubernetes_service_host.is_some() => SourceKind::Kubernetes,
            (None, None) => anyhow::bail!(
                "no config source: give --config-dir DIR, or --config-source kubernetes"
            ),
        };
        match kind {
            SourceKind::Dir => match &self.config_dir {
                Some(dir) => Ok(Source::Dir(dir.clone())),
                None => anyhow::bail!("--config-source dir needs --config-dir"),
            },
            SourceKind::Kubernetes => Ok(Source::Kubernetes(self.kubeconfig.clone())),
        }
    }

    /// The lifetime of the serving certificate.
    pub fn serving_cert_ttl(&self) -> Duration {
        Duration::from_secs(self.serving_cert_ttl_secs)
    }

    /// The cap on workload certificate lifetimes.
    pub fn max_cert_ttl(&self) -> Duration {
        Duration::from_secs(self.max_cert_ttl_secs)
    }

    /// How long config changes are left to settle before they are pushed.
    pub fn push_debounce(&self) -> Duration {
        Duration::from_millis(self.push_debounce_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let config = Config::try_parse_from([
            "istiod-lite",
            "--config-dir",
            "/etc/mesh",
            "--tokens-file",
            "/etc/tokens.yaml",
        ])
        .expect("parses");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/istiod-lite"));
        assert_eq!(config.listen, "0.0.0.0:15012".parse().expect("addr"));
        assert_eq!(config.trust_domain, "cluster.local");
        assert_eq!(config.max_cert_ttl(), Duration::from_secs(86_400));
        assert_eq!(
            config.server_names,
            [
                "istiod.istio-system.svc",
                "istiod-lite.istio-system.svc",
                "localhost",
                "127.0.0.1"
            ]
        );
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.plugin_ca_dir.is_none());
        assert_eq!(config.cluster_id, "Kubernetes");
        assert_eq!(config.domain_suffix, "cluster.local");
        assert_eq!(config.root_namespace, "istio-system");
        assert_eq!(
            config.monitoring_addr,
            "0.0.0.0:15014".parse().expect("addr")
        );
        assert_eq!(config.push_debounce(), Duration::from_millis(100));
    }

    #[test]
    fn flags_override_defaults_and_zero_ttl_is_refused() {
        let config = Config::try_parse_from([
            "istiod-lite",
            "--config-dir=/c",
            "--tokens-file=/t",
            "--server-names=a.example,10.0.0.1",
            "--max-cert-ttl-secs=3600",
            "--log-format=json",
            "--plugin-ca-dir=/cacerts",
            "--cluster-id=c2",
            "--domain-suffix=example.internal",
            "--root-namespace=mesh-root",
            "--monitoring-addr=127.0.0.1:9000",
            "--push-debounce-ms=0",
        ])
        .expect("parses");
        assert_eq!(config.server_names, ["a.example", "10.0.0.1"]);
        assert_eq!(config.max_cert_ttl(), Duration::from_secs(3600));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.plugin_ca_dir, Some(PathBuf::from("/cacerts")));
        assert_eq!(config.cluster_id, "c2");
        assert_eq!(config.domain_suffix, "example.internal");
        assert_eq!(config.root_namespace, "mesh-root");
        assert_eq!(
            config.monitoring_addr,
            "127.0.0.1:9000".parse().expect("addr")
        );
        assert_eq!(config.push_debounce(), Duration::ZERO);
        assert!(Config::try_parse_from([
            "istiod-lite",
            "--config-dir=/c",
            "--tokens-file=/t",
            "--max-cert-ttl-secs=0",
        ])
        .is_err());
    }
}
