//! The waypoint's configuration: one typed struct, parsed once at start from flags and
//! environment. Where ztunnel (or Istio's waypoint) has an environment variable for the same
//! setting, the same name works.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mesh::Identity;

use crate::select::WaypointBinding;

/// How log lines are written (the schema of JSON lines: `mesh::logging::json`).
pub use mesh::logging::LogFormat;

/// waypoint, the L7 proxy of the ambient mesh (Istio ambient compatible).
///
/// A waypoint is deployed per namespace (or service account) that needs L7 features, as a
/// Gateway API `Gateway` with `gatewayClassName: istio-waypoint`. It accepts HBONE on 15008
/// from ztunnels (the CONNECT authority is the original destination), detects HTTP/1.1,
/// HTTP/2 and gRPC inside each tunnel, picks an endpoint of the destination service per
/// request and forwards over a new HBONE tunnel presenting its own identity. Anything that is
/// not HTTP passes through as TCP under L4 policy.
#[derive(Debug, Clone, Parser)]
#[command(name = "waypoint", version)]
pub struct Config {
    /// Namespace the waypoint runs in (part of its identity).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Service account the waypoint runs as (part of its identity; named after the Gateway).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "waypoint")]
    pub service_account: String,

    /// The Gateway this waypoint implements (its Service is `<name>.<namespace>.svc...`);
    /// defaults to the service account, which the deployer names after the Gateway.
    #[arg(long, env = "GATEWAY_NAME")]
    pub gateway_name: Option<String>,

    /// Serve only destinations whose `waypoint` is this one (refuse others with 400). Off
    /// only for debugging: without it the waypoint relays to any destination it knows.
    #[arg(long, env = "ENFORCE_WAYPOINT_BINDING", default_value_t = true, action = clap::ArgAction::Set)]
    pub enforce_binding: bool,

    /// The waypoint pod's name (xDS node id and metadata).
    #[arg(long, env = "POD_NAME", default_value = "waypoint")]
    pub pod_name: String,

    /// Name of the Kubernetes node the waypoint runs on.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,

    /// The waypoint pod's IP (xDS node metadata); defaults to 0.0.0.0.
    #[arg(long, env = "INSTANCE_IP", default_value = "0.0.0.0")]
    pub instance_ip: std::net::IpAddr,

    /// The mesh's trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Cluster id reported in metrics.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// The control plane's xDS address (https://host:15012).
    #[arg(long, env = "XDS_ADDRESS", value_parser = https_address,
          default_value = "https://istiod-lite.istio-system.svc:15012")]
    pub xds_address: String,

    /// The CA address; defaults to the xDS address.
    #[arg(long, env = "CA_ADDRESS", value_parser = https_address)]
    pub ca_address: Option<String>,

    /// PEM root certificate(s) that signed the control plane's serving certificate; re-read
    /// before each connection to the CA and xDS server, so it can rotate without a restart.
    #[arg(
        long,
        env = "CA_ROOT_CA",
        default_value = "/var/run/secrets/istio/root-cert.pem"
    )]
    pub root_ca_file: PathBuf,

    /// Name the control plane's serving certificate must carry.
    #[arg(
        long,
        env = "CA_SERVER_NAME",
        default_value = "istiod-lite.istio-system.svc"
    )]
    pub control_plane_name: String,

    /// File holding the bearer token the waypoint presents to the CA and xDS server (its
    /// service account token).
    #[arg(long, env = "CA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Lifetime to request for the waypoint's certificate, in seconds.
    #[arg(long, env = "SECRET_TTL_SECS", default_value_t = 86_400)]
    pub cert_ttl_secs: u64,

    /// HBONE listener (from ztunnels).
    #[arg(long, env = "HBONE_ADDR", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,

    /// Admin endpoint (/config_dump, /logging, /quitquitquit); keep it on localhost.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Prometheus endpoint (/metrics).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,

    /// Readiness endpoint (/healthz/ready).
    #[arg(long, env = "READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// How long to wait for a tunnel's first bytes before treating it as opaque TCP (a
    /// server-first protocol), in milliseconds.
    #[arg(long, env = "PROTOCOL_DETECT_TIMEOUT_MS", default_value_t = 200)]
    pub protocol_detect_timeout_ms: u64,

    /// How long an HTTP/1.1 client may take to send a request's headers (slowloris guard),
    /// in seconds.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// Tunnels whose protocol is not known yet (the waypoint waits for their first bytes) at
    /// once; one more is refused with 503 until some have sent theirs or timed out. Bounds
    /// what clients that open tunnels and send nothing can hold.
    #[arg(long, env = "MAX_PENDING_STREAMS", default_value_t = 1024)]
    pub max_pending_streams: usize,

    /// On SIGTERM, how long open connections may finish before the waypoint exits, in
    /// seconds (Istio's variable name). New connections are refused at once.
    #[arg(long, env = "TERMINATION_DRAIN_DURATION_SECONDS", default_value_t = 5)]
    pub drain_secs: u64,

    /// Log line format, `text` or `json`; the level comes from RUST_LOG (default `info`) and
    /// can be changed at run time on the admin port (`POST /logging?level=`).
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// Where certificates come from.
    pub fn ca_address(&self) -> &str {
        self.ca_address.as_deref().unwrap_or(&self.xds_address)
    }

    /// Requested certificate lifetime.
    pub fn cert_ttl(&self) -> Duration {
        Duration::from_secs(self.cert_ttl_secs)
    }

    /// The waypoint's own identity.
    pub fn identity(&self) -> Result<Identity, mesh::identity::IdentityError> {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// The data-plane settings derived from this config.
    pub fn proxy_config(&self) -> Result<ProxyConfig, mesh::identity::IdentityError> {
        Ok(ProxyConfig {
            identity: self.identity()?,
            cluster_id: self.cluster_id.clone(),
            protocol_detect_timeout: Duration::from_millis(self.protocol_detect_timeout_ms),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            max_pending_streams: self.max_pending_streams,
            name: self
                .gateway_name
                .clone()
                .unwrap_or_else(|| self.service_account.clone()),
            namespace: self.namespace.clone(),
            binding: self.enforce_binding.then(|| WaypointBinding {
                name: self
                    .gateway_name
                    .clone()
                    .unwrap_or_else(|| self.service_account.clone()),
                namespace: self.namespace.clone(),
                own_ips: vec![self.instance_ip],
            }),
            ..ProxyConfig::new(self.identity()?)
        })
    }
}

/// What the data plane itself needs: no addresses of the control plane, so tests build one
/// directly ([`ProxyConfig::new`]).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The identity the waypoint presents (inbound and outbound).
    pub identity: Identity,
    /// The waypoint's name (its Gateway's): which `targetRefs` policies apply here.
    pub name: String,
    /// The waypoint's namespace.
    pub namespace: String,
    /// Cluster id for metrics.
    pub cluster_id: String,
    /// Wait for the first bytes of a tunnel this long before passing it through as TCP.
    pub protocol_detect_timeout: Duration,
    /// HTTP/1.1 request headers must arrive within this (slowloris guard).
    pub header_read_timeout: Duration,
    /// Largest HTTP/1.1 request head accepted (larger gets 431).
    pub max_header_bytes: usize,
    /// Tunnels waiting for their first bytes (protocol detection) at once; one more is
    /// refused with 503.
    pub max_pending_streams: usize,
    /// Upstream HTTP/1.1 connections idle longer than this are closed.
    pub upstream_idle_timeout: Duration,
    /// The port endpoints accept HBONE on.
    pub endpoint_hbone_port: u16,
    /// When set, only destinations bound to this waypoint are served.
    pub binding: Option<WaypointBinding>,
}

impl ProxyConfig {
    /// Defaults for `identity`.
    pub fn new(identity: Identity) -> Self {
        ProxyConfig {
            name: identity.service_account().to_string(),
            namespace: identity.namespace().to_string(),
            identity,
            cluster_id: "Kubernetes".to_string(),
            protocol_detect_timeout: Duration::from_millis(200),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_pending_streams: 1024,
            upstream_idle_timeout: Duration::from_secs(90),
            endpoint_hbone_port: mesh::hbone::HBONE_PORT,
            binding: None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn refuses_plaintext_control_plane_addresses() {
        assert!(Config::try_parse_from(["waypoint", "--xds-address", "http://cp:15012"]).is_err());
        assert!(Config::try_parse_from(["waypoint", "--ca-address", "http://cp:15012"]).is_err());
        let ok = Config::try_parse_from(["waypoint", "--xds-address", "https://cp:15012"])
            .expect("valid");
        assert_eq!(ok.ca_address(), "https://cp:15012");
    }

    #[test]
    fn refuses_an_identity_that_is_not_a_spiffe_id() {
        let config = Config::try_parse_from(["waypoint", "--namespace", "a/b"]).expect("parses");
        assert!(config.identity().is_err());
        assert!(config.proxy_config().is_err());
    }

    #[test]
    fn listens_on_istio_ports_by_default() {
        let c = Config::try_parse_from(["waypoint"]).expect("parses");
        assert_eq!(c.hbone_addr.port(), 15008);
        assert_eq!(c.admin_addr, "127.0.0.1:15000".parse().expect("addr"));
        assert_eq!(c.metrics_addr.port(), 15020);
        assert_eq!(c.readiness_addr.port(), 15021);
        let p = c.proxy_config().expect("identity");
        assert_eq!(
            p.identity.to_string(),
            "spiffe://cluster.local/ns/default/sa/waypoint"
        );
        assert_eq!(p.protocol_detect_timeout, Duration::from_millis(200));
        let b = p.binding.expect("enforced by default");
        assert_eq!(
            (b.name.as_str(), b.namespace.as_str()),
            ("waypoint", "default")
        );
        let off = Config::try_parse_from(["waypoint", "--enforce-binding", "false"])
            .expect("parses")
            .proxy_config()
            .expect("identity");
        assert!(off.binding.is_none());
    }
}
