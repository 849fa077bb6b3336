//! ztunnel's configuration: one typed struct, parsed once at start from flags and environment.
//! Where Istio's ztunnel has an environment variable for the same setting, the same name works.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mesh::tcp_congestion::CongestionControl;
use mesh::tcp_keepalive::TcpKeepalive;

/// How log lines are written (the schema of JSON lines: `mesh::logging::json`).
pub use mesh::logging::LogFormat;

/// ztunnel, the per-node tunnel of the ambient mesh (Istio ambient compatible).
///
/// One ztunnel runs on every node. It receives each enrolled pod's network namespace from the
/// CNI agent (ZDS, on a Unix socket), listens inside it on 15001 (outbound capture), 15006
/// (inbound plaintext) and 15008 (HBONE), fetches a certificate per pod identity from the mesh
/// CA, learns workloads, services and policies over delta xDS, and carries the pods' TCP
/// connections as HTTP/2 CONNECT streams over mutual TLS (HBONE).
#[derive(Debug, Clone, Parser)]
#[command(name = "ztunnel", version)]
pub struct Config {
    /// Name of the Kubernetes node this ztunnel runs on.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

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

    /// File holding the bearer token this node presents to the CA and xDS server.
    #[arg(long, env = "CA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The CNI agent's ZDS socket.
    #[arg(long, env = "INPOD_UDS", default_value = mesh::zds::DEFAULT_SOCKET)]
    pub inpod_uds: PathBuf,

    /// Worker threads of the data-plane runtime (every proxied connection runs there); one
    /// per core when unset. Upstream's name for the same setting.
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// The mesh's trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Cluster id reported in metrics and baggage.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,

    /// Admin endpoint (/config_dump, /logging, /quitquitquit); keep it on localhost.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,

    /// Prometheus endpoint (/metrics).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,

    /// Readiness endpoint (/healthz/ready).
    #[arg(long, env = "READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// Lifetime to request for workload certificates, in seconds.
    #[arg(long, env = "SECRET_TTL_SECS", default_value_t = 86_400)]
    pub cert_ttl_secs: u64,

    /// How long a pod's live connections may go on after the pod leaves the mesh (ZDS `del`,
    /// or missing from the CNI agent's snapshot), in seconds. Its listeners stop at once; what
    /// is still open after this is closed. The same pod handed over again within it keeps its
    /// connections. 0 closes them at once.
    ///
    /// Upstream ztunnel drains a removed pod for its own `CONNECTION_TERMINATION_DEADLINE`
    /// (default 5 s). Kept as short: a deleted pod's containers have already exited when the
    /// CNI DEL arrives, and every open connection holds the pod's network namespace alive.
    #[arg(long, env = "POD_DRAIN_SECS", default_value_t = 5)]
    pub pod_drain_secs: u64,

    /// How long a stopping ztunnel (SIGTERM, ctrl-c, `/quitquitquit`) keeps serving the
    /// connections it has, in seconds. At the stop it closes every pod listener (a newer
    /// ztunnel's listeners in the same `SO_REUSEPORT` group take the new connections and the
    /// queued ones), sends GOAWAY on every inbound HBONE connection, and waits for its proxied
    /// connections to end by themselves; those still open at the deadline are closed cleanly
    /// (FIN, END_STREAM, GOAWAY), then it exits. Kubernetes' `terminationGracePeriodSeconds`
    /// (30 in manifests/ztunnel.yaml) must exceed it. 0 closes them at once.
    #[arg(long, env = "DRAIN_DEADLINE_SECS", default_value_t = 20)]
    pub drain_deadline_secs: u64,

    /// TCP keepalive on every proxied socket that leaves the pod (the tunnels', and
    /// plaintext peers'), so that a peer that vanished is noticed and its connection torn down
    /// end to end. Sockets to the pod's own applications never carry it: their other end is
    /// this kernel, which answers the probes even for a hung application.
    #[arg(long, env = "KEEPALIVE_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub keepalive_enabled: bool,

    /// Idle time before the first keepalive probe (`180s`, `3m`, or seconds).
    #[arg(long, env = "KEEPALIVE_TIME", default_value = "180s", value_parser = mesh::tcp_keepalive::parse_duration)]
    pub keepalive_time: Duration,

    /// Time between unanswered keepalive probes.
    #[arg(long, env = "KEEPALIVE_INTERVAL", default_value = "180s", value_parser = mesh::tcp_keepalive::parse_duration)]
    pub keepalive_interval: Duration,

    /// Unanswered keepalive probes before a connection is declared dead.
    #[arg(long, env = "KEEPALIVE_RETRIES", default_value_t = 9)]
    pub keepalive_retries: u32,

    /// TCP congestion control of the sockets whose bytes never leave this node: to the pod's
    /// own applications, and tunnels between pods of this node. A pacing algorithm (BBR, the
    /// default of many nodes) only spends timers there. Empty: the node's default. Tunnels to
    /// other nodes always keep the node's default.
    #[arg(long, env = "LOCAL_CONGESTION_CONTROL", default_value = "reno", value_parser = local_congestion)]
    pub local_congestion_control: LocalCongestion,

    /// Connections between two pods this ztunnel serves are carried in-process: the
    /// destination's policy is checked and both ends are recorded as through a tunnel, but
    /// no TLS, HTTP/2 or third TCP connection is set up between two of our own sockets.
    /// `false` tunnels them over HBONE like every other connection.
    #[arg(long, env = "SAME_NODE_DIRECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub same_node_direct: bool,

    /// How long an identity's certificate keeps being renewed after the last pod with that
    /// identity left this node, in seconds. A pod that comes back, or a new pod of the same
    /// identity, within it finds the certificate ready; after it the renewal stops and the
    /// certificate is dropped. 0 stops it at once.
    #[arg(long, env = "CERT_RELEASE_GRACE_SECS", default_value_t = 30)]
    pub cert_release_grace_secs: u64,

    /// Most live proxied connections one pod may have at once, both directions together
    /// (outbound on 15001, inbound plaintext on 15006, HBONE streams on 15008). One more is
    /// refused (a reset; 503 on an HBONE stream), counted in
    /// `ztunnel_connection_failures_total{reason="connection_limit"}` and logged. 0 (the
    /// default) sets no cap: the open file limit, raised to its hard limit at start, bounds
    /// the node as a whole.
    #[arg(long, env = "MAX_CONNECTIONS_PER_POD", default_value_t = 0)]
    pub max_connections_per_pod: usize,

    /// Deadline for connecting to the next hop: the application (inbound) or a destination
    /// outside the mesh (outbound passthrough). HBONE tunnels have their own (10 s). `10s`,
    /// `500ms`, or seconds.
    #[arg(long, env = "CONNECT_TIMEOUT", default_value = "10s", value_parser = mesh::tcp_keepalive::parse_duration)]
    pub connect_timeout: Duration,

    /// A proxied connection on which neither side has sent a byte this long after it was set
    /// up is closed (cleanly: FIN, END_STREAM): a client that connects and never sends, to a
    /// server that waits for it, is cut off. Connections that carried a byte are never timed
    /// out for being quiet (keepalive finds dead peers). Generous by default, like Envoy's TCP
    /// idle timeout, since pools may open connections long before their first use. `1h`,
    /// `30s`, or seconds; `0` keeps them.
    #[arg(long, env = "FIRST_BYTE_TIMEOUT", default_value = "1h", value_parser = mesh::tcp_keepalive::parse_duration)]
    pub first_byte_timeout: Duration,

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

    /// How long an identity no served pod holds keeps its certificate renewed.
    pub fn cert_release_grace(&self) -> Duration {
        Duration::from_secs(self.cert_release_grace_secs)
    }

    /// How long a removed pod's connections drain before they are closed.
    pub fn pod_drain(&self) -> Duration {
        Duration::from_secs(self.pod_drain_secs)
    }

    /// The cap on one pod's live connections, `None` when there is none.
    pub fn max_connections_per_pod(&self) -> Option<std::num::NonZeroUsize> {
        std::num::NonZeroUsize::new(self.max_connections_per_pod)
    }

    /// The first-byte timeout, `None` when connections are kept however long they stay silent.
    pub fn first_byte_timeout(&self) -> Option<Duration> {
        Some(self.first_byte_timeout).filter(|d| !d.is_zero())
    }

    /// How long a stopping ztunnel drains its connections before closing them.
    pub fn drain_deadline(&self) -> Duration {
        Duration::from_secs(self.drain_deadline_secs)
    }

    /// TCP keepalive for proxied sockets, or `None` when turned off.
    pub fn keepalive(&self) -> Option<TcpKeepalive> {
        self.keepalive_enabled.then_some(TcpKeepalive {
            time: self.keepalive_time,
            interval: self.keepalive_interval,
            retries: self.keepalive_retries,
        })
    }
}

/// `--local-congestion-control`: an algorithm, or `None` (given empty) for the node's default.
/// (An alias, so that clap takes the whole value from the parser instead of making the flag
/// optional.)
pub type LocalCongestion = Option<CongestionControl>;

/// Parses `--local-congestion-control`.
fn local_congestion(s: &str) -> Result<LocalCongestion, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

fn https_address(s: &str) -> Result<String, String> {
    if s.starts_with("https://") && s.len() > "https://".len() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} must be an https:// address: the node's token is never sent in the clear"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The config from a node name and `extra` flags.
    fn parse_with(extra: &[&str]) -> Result<Config, clap::Error> {
        let mut args = vec!["ztunnel", "--node-name", "n1"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn refuses_plaintext_control_plane_addresses() {
        assert!(parse_with(&["--xds-address", "http://cp:15012"]).is_err());
        assert!(parse_with(&["--ca-address", "http://cp:15012"]).is_err());
        let ok = parse_with(&["--xds-address", "https://cp:15012"]).expect("valid");
        assert_eq!(ok.ca_address(), "https://cp:15012");
    }

    #[test]
    fn removed_pods_drain_for_five_seconds_unless_configured() {
        let parse = |extra: &[&str]| parse_with(extra).expect("valid");
        assert_eq!(parse(&[]).pod_drain(), Duration::from_secs(5));
        assert_eq!(
            parse(&["--pod-drain-secs", "2"]).pod_drain(),
            Duration::from_secs(2)
        );
        assert_eq!(
            parse(&["--pod-drain-secs", "0"]).pod_drain(),
            Duration::ZERO
        );
        let args = ["ztunnel", "--node-name", "n1", "--pod-drain-secs", "soon"];
        assert!(Config::try_parse_from(args).is_err());
    }

    #[test]
    fn pods_have_no_connection_cap_a_ten_second_connect_deadline_and_an_hour_to_first_byte_unless_configured(
    ) {
        let parse = |extra: &[&str]| parse_with(extra).expect("valid");
        let default = parse(&[]);
        assert_eq!(default.max_connections_per_pod(), None);
        assert_eq!(default.connect_timeout, Duration::from_secs(10));
        assert_eq!(
            default.first_byte_timeout(),
            Some(Duration::from_secs(3600))
        );
        let tuned = parse(&[
            "--max-connections-per-pod",
            "100",
            "--connect-timeout",
            "500ms",
            "--first-byte-timeout",
            "30s",
        ]);
        assert_eq!(tuned.max_connections_per_pod().map(|n| n.get()), Some(100));
        assert_eq!(tuned.connect_timeout, Duration::from_millis(500));
        assert_eq!(tuned.first_byte_timeout(), Some(Duration::from_secs(30)));
        assert_eq!(
            parse(&["--first-byte-timeout", "0"]).first_byte_timeout(),
            None
        );
    }

    #[test]
    fn keepalive_is_on_by_default_with_upstream_timings_and_can_be_turned_off() {
        let parse = |extra: &[&str]| parse_with(extra).expect("valid");
        assert_eq!(parse(&[]).keepalive(), Some(TcpKeepalive::default()));
        assert_eq!(parse(&["--keepalive-enabled", "false"]).keepalive(), None);
        let tuned = parse(&["--keepalive-time", "30s", "--keepalive-interval", "5s"]);
        let ka = tuned.keepalive().expect("on");
        assert_eq!(ka.time, Duration::from_secs(30));
        assert_eq!(ka.interval, Duration::from_secs(5));
        assert_eq!(ka.retries, 9);
    }

    #[test]
    fn local_congestion_control_is_reno_by_default_can_be_turned_off_and_is_checked() {
        let default = parse_with(&[]).expect("valid").local_congestion_control;
        assert_eq!(default.map(|cc| cc.to_string()).as_deref(), Some("reno"));
        let cubic = parse_with(&["--local-congestion-control", "cubic"]).expect("valid");
        assert_eq!(
            cubic
                .local_congestion_control
                .map(|cc| cc.to_string())
                .as_deref(),
            Some("cubic")
        );
        let off = parse_with(&["--local-congestion-control", ""]).expect("valid");
        assert!(off.local_congestion_control.is_none());
        let bad = parse_with(&["--local-congestion-control", "bbr;rm"]).expect_err("invalid");
        assert!(
            bad.to_string().contains("not a congestion control name"),
            "{bad}"
        );
    }

    #[test]
    fn pods_of_this_node_are_joined_in_process_unless_turned_off() {
        let parse = |extra: &[&str]| parse_with(extra).expect("valid");
        assert!(parse(&[]).same_node_direct);
        assert!(!parse(&["--same-node-direct", "false"]).same_node_direct);
    }
}
