//! Running istiod-lite as a child process for the demo: find the binary, write its tokens and
//! pod files, start it, wait until it is ready, stop it.
//!
//! The child is started with `kill_on_drop`, so every way out of the demo (success, error,
//! ctrl-c, panic) kills it; [`IstiodLite::stop`] kills and reaps it explicitly.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The binary's file name.
pub const BINARY: &str = "istiod-lite";

/// How long istiod-lite may take to publish its root and open its port.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One pod the demo's control plane knows about.
#[derive(Debug, Clone)]
pub struct DemoPod {
    /// Namespace.
    pub namespace: &'static str,
    /// Pod name.
    pub name: &'static str,
    /// Service account (the identity's last part).
    pub service_account: &'static str,
    /// Node the pod is scheduled on.
    pub node: &'static str,
}

/// Locates istiod-lite: the explicit path, else next to this executable.
pub fn find_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("--istiod-lite {}: no such file", path.display());
    }
    let me = std::env::current_exe().context("finding meshctl's own executable")?;
    let dir = me.parent().unwrap_or_else(|| Path::new("."));
    let candidate = dir.join(BINARY);
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!(
        "{BINARY} not found next to meshctl (looked for {}). Build it with \
         `cargo build -p istiod-lite` (same profile as meshctl), or pass --istiod-lite PATH",
        candidate.display()
    )
}

/// A running istiod-lite child.
#[derive(Debug)]
pub struct IstiodLite {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The root certificate it published (PEM).
    pub root_cert_pem: String,
    /// Its stdout and stderr.
    pub log_path: PathBuf,
    /// How long it took to become ready.
    pub ready_after: Duration,
}

/// What to start istiod-lite with.
#[derive(Debug)]
pub struct StartOptions<'a> {
    /// The binary.
    pub binary: &'a Path,
    /// The demo's temporary state directory (data, config and log go below it).
    pub state_dir: &'a Path,
    /// Trust domain.
    pub trust_domain: &'a str,
    /// The one caller token, for `node`.
    pub token: &'a str,
    /// The node the token belongs to.
    pub node: &'a str,
    /// Pods to write into the config directory.
    pub pods: &'a [DemoPod],
    /// Name in istiod-lite's serving certificate that the client will check.
    pub server_name: &'a str,
}

impl IstiodLite {
    /// Writes the tokens file and pod YAML, starts the binary on a free loopback port and
    /// waits until `root-cert.pem` exists and the port accepts connections.
    pub async fn start(opts: StartOptions<'_>) -> anyhow::Result<Self> {
        let data_dir = opts.state_dir.join("data");
        let config_dir = opts.state_dir.join("config");
        let tokens_file = opts.state_dir.join("tokens.yaml");
        let log_path = opts.state_dir.join("istiod-lite.log");
        std::fs::create_dir_all(&data_dir).context("creating the data directory")?;
        std::fs::create_dir_all(&config_dir).context("creating the config directory")?;
        std::fs::write(
            &tokens_file,
            format!(
                "tokens:\n  - token: \"{}\"\n    node: {}\n",
                opts.token, opts.node
            ),
        )
        .context("writing the tokens file")?;
        for pod in opts.pods {
            std::fs::write(
                config_dir.join(format!("{}-{}.yaml", pod.namespace, pod.name)),
                pod_yaml(pod),
            )
            .with_context(|| format!("writing the YAML of pod {}/{}", pod.namespace, pod.name))?;
        }

        let addr = free_loopback_port().context("finding a free port")?;
        let log = std::fs::File::create(&log_path).context("creating the istiod-lite log")?;
        let log_err = log.try_clone().context("duplicating the log handle")?;
        let started = Instant::now();
        let child = Command::new(opts.binary)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--tokens-file")
            .arg(&tokens_file)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--trust-domain")
            .arg(opts.trust_domain)
            .arg("--server-names")
            .arg(opts.server_name)
            // Any free port: two demos (or a real istiod-lite) may run on this machine.
            .arg("--monitoring-addr")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", opts.binary.display()))?;
        let mut me = IstiodLite {
            child,
            addr,
            root_cert_pem: String::new(),
            log_path,
            ready_after: Duration::ZERO,
        };
        me.root_cert_pem = me.wait_ready(&data_dir.join("root-cert.pem")).await?;
        me.ready_after = started.elapsed();
        Ok(me)
    }

    async fn wait_ready(&mut self, root_path: &Path) -> anyhow::Result<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("checking on istiod-lite")? {
                bail!(
                    "istiod-lite exited before it was ready ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(pem) = std::fs::read_to_string(root_path) {
                if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                    return Ok(pem);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "istiod-lite was not ready within {READY_TIMEOUT:?} (no {} or nothing \
                     listening on {}); its log:\n{}",
                    root_path.display(),
                    self.addr,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines istiod-lite logged, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(20);
        lines[start..].join("\n")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the child and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().await.context("stopping istiod-lite")?;
        }
        Ok(())
    }
}

/// A Kubernetes Pod document as istiod-lite reads it from its config directory.
fn pod_yaml(pod: &DemoPod) -> String {
    let DemoPod {
        namespace,
        name,
        service_account,
        node,
    } = pod;
    [
        "apiVersion: v1".to_string(),
        "kind: Pod".to_string(),
        "metadata:".to_string(),
        format!("  name: {name}"),
        format!("  namespace: {namespace}"),
        "  labels:".to_string(),
        "    istio.io/dataplane-mode: ambient".to_string(),
        "spec:".to_string(),
        format!("  nodeName: {node}"),
        format!("  serviceAccountName: {service_account}"),
        "  containers:".to_string(),
        format!("    - name: {name}"),
        format!("      image: demo/{name}"),
        String::new(),
    ]
    .join("\n")
}

/// A loopback port nothing listens on right now (bound, then released).
fn free_loopback_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    listener.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_yaml_names_node_and_service_account() {
        let yaml = pod_yaml(&DemoPod {
            namespace: "demo",
            name: "echo",
            service_account: "echo",
            node: "node-1",
        });
        assert!(yaml.contains("kind: Pod\n"), "{yaml}");
        assert!(yaml.contains("  namespace: demo\n"), "{yaml}");
        assert!(yaml.contains("  nodeName: node-1\n"), "{yaml}");
        assert!(yaml.contains("  serviceAccountName: echo\n"), "{yaml}");
    }

    #[test]
    fn a_missing_explicit_binary_is_named_in_the_error() {
        let err = find_binary(Some(Path::new("/nonexistent/istiod-lite"))).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/istiod-lite"),
            "{err}"
        );
    }
}
