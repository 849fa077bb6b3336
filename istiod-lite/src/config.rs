//! istiod-lite's configuration: one typed struct, parsed once from flags and environment.
//!
//! Tests build a [`Config`] as a plain struct literal; nothing here reads the process
//! environment except through clap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The certificate authority of the mesh control plane.
///
/// istiod-lite signs workload certificates for node tunnels (ztunnel) over
/// `istio.v1.auth.IstioCertificateService/CreateCertificate` (gRPC over TLS, port 15012).
/// Callers authenticate with a bearer token from the tokens file; a node may only obtain the
/// identities of pods scheduled on it (read from the Kubernetes YAML in the config directory)
/// and its own ztunnel identity. The root CA is generated on first start and kept in the data
/// directory, or loaded from a plug-in CA directory.
#[derive(Debug, Clone, Parser)]
#[command(name = "istiod-lite", version, about, long_about)]
pub struct Config {
    /// Where the generated root (`root-cert.pem`, `ca-key.pem`) is kept, and where
    /// `root-cert.pem` is published for clients.
    #[arg(long, env = "DATA_DIR", default_value = "/var/lib/istiod-lite")]
    pub data_dir: PathBuf,

    /// Directory of Kubernetes YAML files (multi-document); `kind: Pod` documents say which
    /// pods run on which node.
    #[arg(long, env = "CONFIG_DIR")]
    pub config_dir: PathBuf,

    /// Address the gRPC/TLS server listens on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,

    /// The mesh's trust domain: the only one this CA signs for.
    #[arg(long, env = "TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// YAML file of caller tokens: `tokens: [{token: "...", node: "node-1"}]`.
    #[arg(long, env = "TOKENS_FILE")]
    pub tokens_file: PathBuf,

    /// Plug-in CA directory in Istio's `cacerts` layout (`ca-cert.pem`, `ca-key.pem`,
    /// `cert-chain.pem`, `root-cert.pem`); when set, used instead of a generated root.
    #[arg(long, env = "PLUGIN_CA_DIR")]
    pub plugin_ca_dir: Option<PathBuf>,

    /// Longest lifetime of a workload certificate, in seconds; longer requests are capped.
    #[arg(long = "max-cert-ttl-secs", env = "MAX_CERT_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_cert_ttl_secs: u64,

    /// Names (DNS or IP) in istiod-lite's own serving certificate, comma-separated.
    #[arg(
        long,
        env = "SERVER_NAMES",
        value_delimiter = ',',
        default_value = "istiod-lite.istio-system.svc,localhost,127.0.0.1"
    )]
    pub server_names: Vec<String>,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// The cap on workload certificate lifetimes.
    pub fn max_cert_ttl(&self) -> Duration {
        Duration::from_secs(self.max_cert_ttl_secs)
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
            ["istiod-lite.istio-system.svc", "localhost", "127.0.0.1"]
        );
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.plugin_ca_dir.is_none());
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
        ])
        .expect("parses");
        assert_eq!(config.server_names, ["a.example", "10.0.0.1"]);
        assert_eq!(config.max_cert_ttl(), Duration::from_secs(3600));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.plugin_ca_dir, Some(PathBuf::from("/cacerts")));
        assert!(Config::try_parse_from([
            "istiod-lite",
            "--config-dir=/c",
            "--tokens-file=/t",
            "--max-cert-ttl-secs=0",
        ])
        .is_err());
    }
}
