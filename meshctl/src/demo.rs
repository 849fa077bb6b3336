//! `meshctl demo`: the mesh on a two-node local cluster, narrated.
//!
//! The demo drives meshctl's own commands (it runs this executable as a child and prints each
//! command line before its output), so every step is one a person can type afterwards:
//! a cluster comes up, an HTTP server and a client run in namespace `demo`, a request goes
//! across in plaintext, the namespace is labelled for ambient, the same request now crosses
//! as HBONE with both SPIFFE identities in ztunnel's access log, and the `istio_tcp_*` metrics
//! that moved are shown. Wire checks use tcpdump on the underlay. `--waypoint` runs the L7
//! scenario instead ([`waypoint`]): a canary split and a 403 through a waypoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;

/// The demo's namespace.
const NAMESPACE: &str = "demo";
/// The server's port.
const PORT: u16 = 8080;
/// How long enrolment and config propagation may take.
const SETTLE: Duration = Duration::from_secs(30);

/// Flags of `meshctl demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Leave the cluster running at the end (remove it later with `meshctl cluster down`).
    #[arg(long)]
    pub keep: bool,
    /// Name of the demo's cluster (the prefix of its network namespaces).
    #[arg(long, default_value = "meshdemo")]
    pub name: String,
    /// The L7 scenario instead: a waypoint, an 80/20 canary and a 403 from an
    /// AuthorizationPolicy.
    #[arg(long)]
    pub waypoint: bool,
}

mod waypoint;

/// Runs the demo against the cluster kept in `state_dir`; tears it down at the end (also on
/// failure) unless `--keep`.
pub fn run(args: &DemoArgs, state_dir: &Path) -> anyhow::Result<()> {
    preflight()?;
    let demo = Demo {
        exe: std::env::current_exe().context("finding meshctl's own executable")?,
        state_dir: state_dir.to_path_buf(),
        name: args.name.clone(),
    };
    let result = if args.waypoint {
        waypoint::story(&demo)
    } else {
        demo.story()
    };
    if args.keep && result.is_ok() {
        say(&format!(
            "\nThe cluster stays up (state in {}). Try:\n  meshctl --state-dir {} get pods\n  meshctl --state-dir {} cluster down",
            state_dir.display(),
            state_dir.display(),
            state_dir.display()
        ));
        return result;
    }
    heading("Tear down");
    let down = demo.meshctl(&["cluster", "down"]);
    result.and(down.map(|_| ()))
}

/// Tools the demo itself uses (the cluster checks its own).
fn preflight() -> anyhow::Result<()> {
    for (tool, package) in [("curl", "curl"), ("tcpdump", "tcpdump"), ("ip", "iproute2")] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("the demo needs `{tool}`: install the Debian package {package}");
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn say(text: &str) {
    println!("{text}");
}

fn heading(text: &str) {
    say(&format!("\n== {text} =="));
}

/// Prints `text` indented under a command line.
fn show(text: &str) {
    for line in text.lines() {
        say(&format!("  {line}"));
    }
}

struct Demo {
    exe: PathBuf,
    state_dir: PathBuf,
    name: String,
}

impl Demo {
    fn story(&self) -> anyhow::Result<()> {
        heading("1. A two-node cluster on this machine: istiod-lite, and per node a ztunnel and the CNI agent");
        self.meshctl(&["cluster", "up", "--nodes", "2", "--name", &self.name])?;
        heading("2. An HTTP server and a client in namespace `demo`, not in the mesh yet");
        let echo = self.exe.display().to_string();
        self.meshctl(&[
            "pod",
            "run",
            "server",
            "-n",
            NAMESPACE,
            "--sa",
            "server",
            "--node",
            "n2",
            "--",
            &echo,
            "http-echo",
            "--port",
            "8080",
            "--name",
            "server",
        ])?;
        self.meshctl(&[
            "pod", "run", "client", "-n", NAMESPACE, "--sa", "client", "--node", "n1", "--",
            "sleep", "infinity",
        ])?;
        self.meshctl(&["get", "pods", "-n", NAMESPACE])?;
        let server_ip = self.pod_ip("server")?;

        heading("3. (a) Before enrolment: the request crosses the nodes in plaintext");
        let before = self.metrics("n2")?;
        let wire = self.request(&server_ip, "plaintext-before-enrolment")?;
        say(&format!(
            "  On the wire (tcpdump on the underlay): the request header is readable in {} packet(s).",
            wire.marker_hits
        ));

        heading("4. (b) Label the namespace for ambient: no pod restarts");
        self.meshctl(&["label", "ns", NAMESPACE, "istio.io/dataplane-mode=ambient"])?;
        self.wait_enrolled()?;
        self.meshctl(&["get", "pods", "-n", NAMESPACE])?;

        heading("5. (c) The same request, now carried over HBONE (mutual TLS, HTTP/2 CONNECT to :15008)");
        let wire = self.request(&server_ip, "hbone-after-enrolment")?;
        say(&format!(
            "  On the wire: the request header is in {} packet(s); {} packet(s) to or from port 15008; {} other TCP packet(s) between pods.",
            wire.marker_hits, wire.hbone_packets, wire.other_pod_packets
        ));
        if wire.marker_hits > 0 {
            bail!("the request was readable on the wire after enrolment");
        }
        let access = self.access_line("n2")?;
        say("  ztunnel on n2 logged the connection (access log):");
        for field in [
            "src.identity",
            "dst.identity",
            "mtls",
            "src.addr",
            "dst.addr",
        ] {
            if let Some(v) = log_field(&access, field) {
                say(&format!("    {field} = {v}"));
            }
        }

        heading("6. (d) The metrics that moved (ztunnel on n2, :15020/metrics)");
        let after = self.metrics("n2")?;
        let moved = moved_metrics(&before, &after);
        if moved.is_empty() {
            bail!("no istio_tcp_* metric moved on n2");
        }
        for (series, (from, to)) in moved {
            say(&format!("  {series}: {from} -> {to}"));
        }
        Ok(())
    }

    /// Runs `meshctl --state-dir <dir> ARGS`, echoing the command and its output.
    fn meshctl(&self, args: &[&str]) -> anyhow::Result<String> {
        say(&format!("$ meshctl {}", args.join(" ")));
        let out = Command::new(&self.exe)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running meshctl {}", args.join(" ")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        // Progress (stderr) happened before the result (stdout).
        show(&String::from_utf8_lossy(&out.stderr));
        show(&stdout);
        if !out.status.success() {
            bail!("`meshctl {}` failed ({})", args.join(" "), out.status);
        }
        Ok(stdout)
    }

    /// Like [`Demo::meshctl`] without echoing (for polling).
    fn meshctl_quiet(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.exe)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "`meshctl {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn pods(&self) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        Ok(parse_table(
            &self.meshctl_quiet(&["get", "pods", "-n", NAMESPACE])?,
        ))
    }

    fn pod_ip(&self, name: &str) -> anyhow::Result<String> {
        self.pods()?
            .into_iter()
            .find(|p| p.get("NAME").map(String::as_str) == Some(name))
            .and_then(|p| p.get("IP").cloned())
            .with_context(|| format!("pod {name} has no IP in `meshctl get pods`"))
    }

    /// Waits until both pods are captured and the client's ztunnel knows the server speaks
    /// HBONE (otherwise the first request could still go out in plaintext).
    fn wait_enrolled(&self) -> anyhow::Result<()> {
        say("  waiting for the CNI agents to capture both pods and for ztunnel to learn it...");
        let deadline = Instant::now() + SETTLE;
        loop {
            let captured = self
                .pods()?
                .iter()
                .all(|p| p.get("CAPTURED").map(String::as_str) == Some("yes"));
            if captured && self.knows_hbone("n1", "server")? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the pods were not enrolled within {SETTLE:?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn netns(&self, node: &str) -> String {
        format!("{}-{node}", self.name)
    }

    /// GETs `path` from ztunnel's admin port (127.0.0.1:15000) or another port on the node's
    /// underlay address, inside node `node`'s namespace.
    fn node_get(&self, node: &str, port: u16, path: &str) -> anyhow::Result<String> {
        let host = if port == 15000 {
            "127.0.0.1".to_string()
        } else {
            // Node nI has 10.250.0.I on the underlay (`meshctl cluster status`).
            let index = node.trim_start_matches('n');
            format!("10.250.0.{index}")
        };
        let url = format!("http://{host}:{port}{path}");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns(node),
                "curl",
                "-sS",
                "--max-time",
                "5",
            ])
            .arg(&url)
            .output()
            .context("running curl in the node")?;
        if !out.status.success() {
            bail!(
                "GET {url} on {node}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn knows_hbone(&self, node: &str, pod: &str) -> anyhow::Result<bool> {
        let dump: serde_json::Value =
            serde_json::from_str(&self.node_get(node, 15000, "/config_dump")?)
                .context("ztunnel config_dump is not JSON")?;
        let uid = format!("Kubernetes//v1/Pod/{NAMESPACE}/{pod}");
        Ok(dump["config"]["workloads"].as_array().is_some_and(|ws| {
            ws.iter()
                .any(|w| w["uid"] == uid.as_str() && w["tunnelProtocol"] == "HBONE")
        }))
    }

    fn metrics(&self, node: &str) -> anyhow::Result<BTreeMap<String, f64>> {
        Ok(parse_metrics(&self.node_get(node, 15020, "/metrics")?))
    }

    /// One request from the client to the server with a marker header, recorded on the
    /// underlay.
    fn request(&self, server_ip: &str, marker: &str) -> anyhow::Result<Wire> {
        let pcap = self.state_dir.join(format!("demo-{marker}.pcap"));
        let tap = Tcpdump::start(&self.netns("ul"), &pcap)?;
        let url = format!("http://{server_ip}:{PORT}/");
        let header = format!("x-demo: {marker}");
        let reply = self.meshctl(&[
            "pod",
            "exec",
            "client",
            "-n",
            NAMESPACE,
            "--",
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            &header,
            &url,
        ]);
        // Let the last segments reach the capture before it stops.
        std::thread::sleep(Duration::from_millis(300));
        let bytes = tap.stop()?;
        reply?;
        let wire = Wire {
            marker_hits: count(&bytes, marker.as_bytes()),
            hbone_packets: tcpdump_count(&pcap, "tcp port 15008")?,
            other_pod_packets: tcpdump_count(
                &pcap,
                "tcp and net 10.244.0.0/16 and not port 15008",
            )?,
        };
        let _ = std::fs::remove_file(&pcap);
        Ok(wire)
    }

    /// The last inbound access-log line of ztunnel on `node` for the demo's server.
    fn access_line(&self, node: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let log = std::fs::read_to_string(self.ztunnel_log(node)?).unwrap_or_default();
            if let Some(line) = log.lines().rev().find(|l| {
                l.contains("connection complete")
                    && l.contains("mtls=true")
                    && l.contains("sa/server")
            }) {
                return Ok(line.to_string());
            }
            if Instant::now() > deadline {
                bail!("no access-log line for the server on {node}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ztunnel_log(&self, node: &str) -> anyhow::Result<PathBuf> {
        let dir = self.state_dir.join("logs");
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains("ztunnel") && name.contains(node) {
                return Ok(entry.path());
            }
        }
        bail!("no ztunnel log for {node} in {}", dir.display())
    }
}

/// What one request looked like on the underlay.
struct Wire {
    marker_hits: usize,
    hbone_packets: usize,
    other_pod_packets: usize,
}

/// tcpdump recording every packet in a namespace, packet-buffered to a file.
struct Tcpdump {
    child: Child,
    path: PathBuf,
}

impl Tcpdump {
    fn start(netns: &str, path: &Path) -> anyhow::Result<Tcpdump> {
        let log_path = path.with_extension("log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "tcpdump",
                "--immediate-mode",
                "-Z",
                "root",
            ])
            .args(["-i", "any", "-U", "-s", "0", "-w"])
            .arg(path)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting tcpdump on the underlay")?;
        let tap = Tcpdump {
            child,
            path: path.to_path_buf(),
        };
        // The file header is written before the capture runs; "listening on" comes after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("listening on")
        {
            if Instant::now() > deadline {
                bail!("tcpdump did not start on {netns}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&log_path);
        Ok(tap)
    }

    fn stop(mut self) -> anyhow::Result<Vec<u8>> {
        // SIGINT: tcpdump writes out what it holds and exits.
        interrupt_and_wait(&mut self.child);
        std::fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGINT, then up to 2 s for the exit, then SIGKILL.
fn interrupt_and_wait(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Packets in `pcap` matching a tcpdump filter.
fn tcpdump_count(pcap: &Path, filter: &str) -> anyhow::Result<usize> {
    let out = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .arg(filter)
        .stderr(Stdio::null())
        .output()
        .context("reading the capture with tcpdump")?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// A whitespace table with a header row into one map per row.
fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split_whitespace().collect();
    lines
        .map(|l| {
            columns
                .iter()
                .zip(l.split_whitespace())
                .map(|(c, v)| ((*c).to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// `istio_tcp_*` series of a Prometheus text page, by series (name and labels).
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("istio_tcp_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Series whose value changed, shortened to the labels a reader cares about.
fn moved_metrics(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> Vec<(String, (f64, f64))> {
    after
        .iter()
        .filter_map(|(series, to)| {
            let from = before.get(series).copied().unwrap_or(0.0);
            (from != *to).then(|| (shorten(series), (from, *to)))
        })
        .collect()
}

fn shorten(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_string();
    };
    let keep = [
        "reporter",
        "source_principal",
        "destination_principal",
        "connection_security_policy",
    ];
    let kept: Vec<&str> = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|kv| keep.iter().any(|k| kv.starts_with(&format!("{k}="))))
        .collect();
    format!("{name}{{{}}}", kept.join(","))
}

/// The value of `key=` in a tracing text line (quoted or not).
fn log_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    let value = match rest.strip_prefix('"') {
        Some(q) => q.split('"').next()?,
        None => rest.split_whitespace().next()?,
    };
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_parse_by_header() {
        let rows = parse_table(
            "NAME    NAMESPACE  NODE  IP          SERVICE-ACCOUNT  CAPTURED\nserver  demo       n2    10.244.2.2  server           no\n",
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["IP"], "10.244.2.2");
        assert_eq!(rows[0]["CAPTURED"], "no");
    }

    #[test]
    fn only_moved_series_are_reported_with_short_labels() {
        let before = parse_metrics(
            "# HELP x\nistio_tcp_sent_bytes_total{reporter=\"destination\",source_app=\"a\"} 10\nistio_tcp_received_bytes_total{reporter=\"destination\"} 5\n",
        );
        let after = parse_metrics(
            "istio_tcp_sent_bytes_total{reporter=\"destination\",source_app=\"a\"} 90\nistio_tcp_received_bytes_total{reporter=\"destination\"} 5\nistio_tcp_connections_opened_total{reporter=\"destination\",connection_security_policy=\"mutual_tls\"} 1\n",
        );
        let moved = moved_metrics(&before, &after);
        assert_eq!(
            moved,
            vec![
                (
                    "istio_tcp_connections_opened_total{reporter=\"destination\",connection_security_policy=\"mutual_tls\"}".to_string(),
                    (0.0, 1.0)
                ),
                (
                    "istio_tcp_sent_bytes_total{reporter=\"destination\"}".to_string(),
                    (10.0, 90.0)
                ),
            ]
        );
    }

    #[test]
    fn log_fields_are_read_quoted_or_bare() {
        let line = "2026 INFO access: src.identity=spiffe://cluster.local/ns/demo/sa/client mtls=true policy=\"a b\" connection complete";
        assert_eq!(
            log_field(line, "src.identity").as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/client")
        );
        assert_eq!(log_field(line, "mtls").as_deref(), Some("true"));
        assert_eq!(log_field(line, "policy").as_deref(), Some("a b"));
        assert_eq!(log_field(line, "nope"), None);
    }

    #[test]
    fn markers_are_counted_in_raw_bytes() {
        assert_eq!(count(b"xx-demo-xx-demo", b"demo"), 2);
        assert_eq!(count(b"abc", b""), 0);
    }
}
