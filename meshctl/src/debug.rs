//! istioctl's debug verbs, on the local cluster: `meshctl ztunnel-config
//! workloads|services|policies|certificates [--node N] [-o table|json|yaml]` (what a node's
//! ztunnel holds, from its `/config_dump`) and `meshctl logs COMPONENT [--node N] [-f]` (a
//! component's log file). Errors name the fix: the cluster is not up, the node does not exist,
//! the component is not running.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use mesh::store::StoreSnapshot;
use serde_json::Value;

use crate::cluster::state::StateDir;
use crate::kube_api::Target;
use crate::reach::Reach;
use crate::table;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// What `ztunnel-config` shows.
#[derive(Debug, Subcommand)]
pub enum ZtunnelConfig {
    /// Workloads: NAMESPACE NAME IP NODE IDENTITY PROTOCOL.
    Workloads(ZtunnelConfigArgs),
    /// Services: NAMESPACE NAME VIP PORTS ENDPOINTS WAYPOINT.
    Services(ZtunnelConfigArgs),
    /// Authorization policies: NAMESPACE NAME SCOPE ACTION RULES.
    Policies(ZtunnelConfigArgs),
    /// Certificates: IDENTITY STATE SERIAL NOT-AFTER EXPIRES-IN ROTATION.
    Certificates(ZtunnelConfigArgs),
    /// Live proxied connections: NAMESPACE POD DIRECTION SOURCE DESTINATION SOURCE-IDENTITY
    /// DESTINATION-IDENTITY WAYPOINT SENT RECEIVED AGE STATE.
    Connections(ZtunnelConfigArgs),
}

impl ZtunnelConfig {
    /// The flags, whichever view.
    pub fn args(&self) -> &ZtunnelConfigArgs {
        match self {
            ZtunnelConfig::Workloads(a)
            | ZtunnelConfig::Services(a)
            | ZtunnelConfig::Policies(a)
            | ZtunnelConfig::Certificates(a)
            | ZtunnelConfig::Connections(a) => a,
        }
    }

    /// The admin path whose JSON [`render`] reads.
    pub fn admin_path(&self) -> &'static str {
        match self {
            ZtunnelConfig::Connections(_) => "/connections",
            _ => "/config_dump",
        }
    }
}

/// Flags of `ztunnel-config`.
#[derive(Debug, Args)]
pub struct ZtunnelConfigArgs {
    /// The node whose ztunnel to ask.
    #[arg(long, default_value = "n1")]
    pub node: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The local cluster, or Kubernetes with `--kubeconfig`.
    #[command(flatten)]
    pub target: Target,
}

/// Flags of `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// `istiod-lite`, `ztunnel`, `cni`, or `waypoint` (with `-n`).
    pub component: String,
    /// The node, for `ztunnel` and `cni`.
    #[arg(long, default_value = "n1")]
    pub node: String,
    /// The waypoint's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The waypoint's name.
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    /// Keep printing what is appended.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// `meshctl ztunnel-config ...`.
pub fn ztunnel_config(state: &StateDir, what: &ZtunnelConfig) -> anyhow::Result<()> {
    let args = what.args();
    let dump = Reach::new(state, &args.target)?.ztunnel_admin(&args.node, what.admin_path())?;
    out!("{}", render(what, &dump, args.output)?.trim_end());
    Ok(())
}

/// The view of `dump` (a ztunnel's `/config_dump`, or its `/connections` for
/// `connections`) that `what` asks for.
pub fn render(what: &ZtunnelConfig, dump: &Value, output: Output) -> anyhow::Result<String> {
    if let ZtunnelConfig::Connections(_) = what {
        let rows = connection_rows(dump)?;
        return format_output(dump, rows, output);
    }
    let snapshot: StoreSnapshot = serde_json::from_value(dump["config"].clone())
        .context("not a ztunnel /config_dump of this mesh version")?;
    let (value, rows) = match what {
        ZtunnelConfig::Workloads(_) => (
            serde_json::to_value(&snapshot.workloads)?,
            workload_rows(&snapshot),
        ),
        ZtunnelConfig::Services(_) => (
            serde_json::to_value(&snapshot.services)?,
            service_rows(&snapshot),
        ),
        ZtunnelConfig::Policies(_) => (
            serde_json::to_value(&snapshot.policies)?,
            policy_rows(&snapshot),
        ),
        ZtunnelConfig::Certificates(_) => (dump["certificates"].clone(), certificate_rows(dump)),
        ZtunnelConfig::Connections(_) => unreachable!("handled above"),
    };
    format_output(&value, rows, output)
}

/// `value` as JSON or YAML, or `rows` as a table.
pub fn format_output(
    value: &Value,
    rows: Vec<Vec<String>>,
    output: Output,
) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(value)?,
        Output::Yaml => serde_saphyr::to_string(value).context("encoding YAML")?,
        Output::Table => table::format(&rows),
    })
}

fn connection_rows(conns: &Value) -> anyhow::Result<Vec<Vec<String>>> {
    let list = conns
        .as_array()
        .context("not a ztunnel /connections answer of this mesh version")?;
    let mut rows = vec![header(&[
        "NAMESPACE",
        "POD",
        "DIRECTION",
        "SOURCE",
        "DESTINATION",
        "SOURCE-IDENTITY",
        "DESTINATION-IDENTITY",
        "WAYPOINT",
        "SENT",
        "RECEIVED",
        "AGE",
        "STATE",
    ])];
    let text = |v: &Value| {
        v.as_str()
            .map_or("-".to_string(), |s| or_dash(s.to_string()))
    };
    for c in list {
        rows.push(vec![
            text(&c["pod_namespace"]),
            text(&c["pod_name"]),
            text(&c["direction"]),
            text(&c["src"]),
            text(&c["dst"]),
            text(&c["src_identity"]),
            text(&c["dst_identity"]),
            text(&c["waypoint"]),
            bytes(c["bytes_sent"].as_u64().unwrap_or(0)),
            bytes(c["bytes_received"].as_u64().unwrap_or(0)),
            age(c["age_ms"].as_u64().unwrap_or(0)),
            text(&c["state"]),
        ]);
    }
    Ok(rows)
}

/// A byte count the way `kubectl top` rounds: B, KiB, MiB, GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// An age the way kubectl prints one: 42s, 3m12s, 5h3m, 2d4h.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn workload_rows(s: &StoreSnapshot) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "NAMESPACE",
        "NAME",
        "IP",
        "NODE",
        "IDENTITY",
        "PROTOCOL",
    ])];
    for w in &s.workloads {
        let ips: Vec<String> = w.addresses.iter().map(ToString::to_string).collect();
        rows.push(vec![
            w.namespace().to_string(),
            w.name.clone(),
            or_dash(ips.join(",")),
            or_dash(w.node.clone()),
            w.identity.to_string(),
            format!("{:?}", w.tunnel_protocol).to_uppercase(),
        ]);
    }
    rows
}

fn service_rows(s: &StoreSnapshot) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "NAMESPACE",
        "NAME",
        "VIP",
        "PORTS",
        "ENDPOINTS",
        "WAYPOINT",
    ])];
    for svc in &s.services {
        let key = svc.key();
        let endpoints = s
            .workloads
            .iter()
            .filter(|w| w.services.contains_key(&key))
            .count();
        let vips: Vec<String> = svc.vips.iter().map(|v| v.ip.to_string()).collect();
        let ports: Vec<String> = svc
            .ports
            .iter()
            .map(|p| format!("{}->{}", p.service_port, p.target_port))
            .collect();
        let waypoint = svc
            .waypoint
            .as_ref()
            .map_or("-".to_string(), |gw| match &gw.destination {
                mesh::model::GatewayDestination::Hostname(h) => h.hostname.clone(),
                mesh::model::GatewayDestination::Address(a) => a.ip.to_string(),
            });
        rows.push(vec![
            svc.namespace.clone(),
            or_dash(svc.name.clone()),
            or_dash(vips.join(",")),
            or_dash(ports.join(",")),
            endpoints.to_string(),
            waypoint,
        ]);
    }
    rows
}

fn policy_rows(s: &StoreSnapshot) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "NAMESPACE",
        "NAME",
        "SCOPE",
        "ACTION",
        "RULES",
        "DRY-RUN",
    ])];
    for p in &s.policies {
        rows.push(vec![
            p.namespace.clone(),
            p.name.clone(),
            format!("{:?}", p.scope),
            format!("{:?}", p.action).to_uppercase(),
            p.rules.len().to_string(),
            p.dry_run.to_string(),
        ]);
    }
    rows
}

fn certificate_rows(dump: &Value) -> Vec<Vec<String>> {
    let mut rows = vec![header(&[
        "IDENTITY",
        "STATE",
        "SERIAL",
        "NOT-AFTER",
        "EXPIRES-IN",
        "ROTATION",
    ])];
    for c in dump["certificates"].as_array().into_iter().flatten() {
        let not_after = c["not_after_unix"]
            .as_i64()
            .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
            .map_or("-".to_string(), |t| t.to_string());
        let rotation = match c["renews_in_s"].as_i64() {
            Some(s) if s <= 0 => "due".to_string(),
            Some(s) => format!("in {s}s"),
            None => "-".to_string(),
        };
        rows.push(vec![
            c["identity"].as_str().unwrap_or("?").to_string(),
            c["state"].as_str().unwrap_or("?").to_string(),
            c["serial"].as_str().unwrap_or("-").to_string(),
            not_after,
            c["expires_in_s"]
                .as_i64()
                .map_or("-".to_string(), |s| format!("{s}s")),
            rotation,
        ]);
    }
    rows
}

fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// The log file name of a component.
fn log_key(args: &LogsArgs) -> anyhow::Result<String> {
    Ok(match args.component.as_str() {
        "istiod-lite" | "istiod" => "istiod".into(),
        "ztunnel" => format!("ztunnel-{}", args.node),
        "cni" | "cni-plugin" | "agent" => format!("agent-{}", args.node),
        "waypoint" => format!("pod-{}-{}", args.namespace, args.name),
        other => bail!("no component {other:?}: one of istiod-lite, ztunnel, cni, waypoint"),
    })
}

/// `meshctl logs ...`.
pub fn logs(state: &StateDir, args: &LogsArgs) -> anyhow::Result<()> {
    let key = log_key(args)?;
    let path = if args.component == "waypoint" {
        // The waypoint's pod has a generated suffix: the newest log of its prefix.
        newest_with_prefix(&state.logs_dir(), &key)?
    } else {
        state.log(&key)
    };
    let mut file = std::fs::File::open(&path).with_context(|| {
        format!(
            "no log {} (is the cluster up and {} running? `meshctl cluster status`)",
            path.display(),
            args.component
        )
    })?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    emit(&text)?;
    if !args.follow {
        return Ok(());
    }
    let mut at = file.stream_position()?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(at);
        if len < at {
            at = 0; // truncated or replaced: from the start
        }
        if len > at {
            file.seek(SeekFrom::Start(at))?;
            let mut more = String::new();
            file.read_to_string(&mut more)?;
            emit(&more)?;
            at = len;
        }
    }
}

/// Writes log text to stdout as it is (it has its own newlines).
fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn newest_with_prefix(dir: &std::path::Path, prefix: &str) -> anyhow::Result<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("no logs at {} (is the cluster up?)", dir.display()))?;
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .with_context(|| format!("no waypoint log {prefix}-* (see `meshctl waypoint list`)"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dump() -> Value {
        let store = mesh::store::Store::new();
        serde_json::json!({
            "config": store.snapshot(),
            "certificates": [
                {"identity": "spiffe://cluster.local/ns/a/sa/b", "state": "available",
                 "serial": "0a1b", "not_after_unix": 1800000000,
                 "expires_in_s": 86000, "renews_in_s": 43000, "chain_len": 2},
                {"identity": "spiffe://cluster.local/ns/a/sa/d", "state": "available",
                 "expires_in_s": 10, "renews_in_s": -5, "chain_len": 2},
                {"identity": "spiffe://cluster.local/ns/a/sa/c", "state": "pending"}
            ],
        })
    }

    fn args() -> ZtunnelConfigArgs {
        ZtunnelConfigArgs {
            node: "n1".into(),
            output: Output::Table,
            target: Target::default(),
        }
    }

    #[test]
    fn certificates_show_state_and_times() {
        let text = render(&ZtunnelConfig::Certificates(args()), &dump(), Output::Table).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("IDENTITY"), "{text}");
        assert!(
            lines[1].contains("available")
                && lines[1].contains("0a1b")
                && lines[1].contains("2027-01-15T08:00:00Z")
                && lines[1].contains("86000s")
                && lines[1].contains("in 43000s"),
            "{text}"
        );
        assert!(lines[2].trim_end().ends_with("due"), "rotation due: {text}");
        assert!(
            lines[3].contains("pending") && lines[3].ends_with('-'),
            "{text}"
        );
        let json = render(&ZtunnelConfig::Certificates(args()), &dump(), Output::Json).unwrap();
        assert!(json.contains("\"renews_in_s\": 43000"), "{json}");
    }

    #[test]
    fn an_empty_store_gives_headers_only_and_bad_dumps_say_so() {
        let text = render(&ZtunnelConfig::Workloads(args()), &dump(), Output::Table).unwrap();
        assert_eq!(text.trim().lines().count(), 1, "{text}");
        assert!(render(
            &ZtunnelConfig::Services(args()),
            &serde_json::json!({}),
            Output::Table
        )
        .is_err());
    }

    #[test]
    fn connections_show_both_ends_identities_bytes_and_age() {
        let conns = serde_json::json!([{
            "pod_uid": "Kubernetes//v1/Pod/demo/a", "pod_namespace": "demo", "pod_name": "a",
            "direction": "outbound", "src": "10.244.1.2:40000", "dst": "10.244.2.2:8080",
            "src_identity": "spiffe://cluster.local/ns/demo/sa/a",
            "dst_identity": "spiffe://cluster.local/ns/demo/sa/b", "waypoint": null,
            "bytes_sent": 2048, "bytes_received": 5, "age_ms": 75000, "state": "open"
        }]);
        let what = ZtunnelConfig::Connections(args());
        let text = render(&what, &conns, Output::Table).unwrap();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0][0..3], ["NAMESPACE", "POD", "DIRECTION"]);
        assert_eq!(
            lines[1],
            [
                "demo",
                "a",
                "outbound",
                "10.244.1.2:40000",
                "10.244.2.2:8080",
                "spiffe://cluster.local/ns/demo/sa/a",
                "spiffe://cluster.local/ns/demo/sa/b",
                "-",
                "2.0KiB",
                "5B",
                "1m15s",
                "open"
            ]
        );
        let json = render(&what, &conns, Output::Json).unwrap();
        assert!(json.contains("\"bytes_sent\": 2048"), "{json}");
        assert!(render(&what, &serde_json::json!({}), Output::Table).is_err());
    }

    #[test]
    fn log_names_follow_the_components() {
        let a = |c: &str| LogsArgs {
            component: c.into(),
            node: "n2".into(),
            namespace: "shop".into(),
            name: "waypoint".into(),
            follow: false,
        };
        assert_eq!(log_key(&a("ztunnel")).unwrap(), "ztunnel-n2");
        assert_eq!(log_key(&a("cni")).unwrap(), "agent-n2");
        assert_eq!(log_key(&a("istiod-lite")).unwrap(), "istiod");
        assert_eq!(log_key(&a("waypoint")).unwrap(), "pod-shop-waypoint");
        assert!(log_key(&a("envoy"))
            .unwrap_err()
            .to_string()
            .contains("one of"));
    }
}
