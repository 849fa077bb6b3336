//! Read-only views of a running cluster: `meshctl get pods` (with whether each pod is really
//! captured) and `meshctl authz check` (a policy decision from the destination's ztunnel).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::authz;
use crate::cluster::plan::{NodePlan, ZTUNNEL_ADMIN};
use crate::cluster::state::StateDir;
use crate::config_dir::ConfigDir;
use crate::pod::{self, PodRuntime};
use crate::{netns, sys, table};

/// How long a ztunnel admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Flags of `meshctl get pods`.
#[derive(Debug, Args)]
pub struct GetPodsArgs {
    /// Only this Kubernetes namespace (default: all).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Flags of `meshctl authz check`.
#[derive(Debug, Args)]
pub struct AuthzCheckArgs {
    /// The client pod, `POD` or `NAMESPACE/POD`.
    #[arg(long)]
    pub from: String,
    /// The server pod and port, `POD:PORT` or `NAMESPACE/POD:PORT`.
    #[arg(long)]
    pub to: String,
    /// Namespace of a pod given without one.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

/// ztunnel's `/config_dump` on `node`.
pub fn config_dump(node: &NodePlan) -> anyhow::Result<serde_json::Value> {
    let resp = netns::http_get(
        &node.netns,
        SocketAddr::V4(ZTUNNEL_ADMIN),
        "/config_dump",
        ADMIN_TIMEOUT,
    )
    .with_context(|| format!("asking ztunnel on {} (is it running?)", node.name))?;
    if resp.status != 200 {
        bail!(
            "ztunnel on {} answered /config_dump with {}",
            node.name,
            resp.status
        );
    }
    serde_json::from_str(&resp.body)
        .with_context(|| format!("ztunnel on {}: /config_dump is not JSON", node.name))
}

/// Whether a config dump lists `uid` among the pods ztunnel serves.
fn dump_serves(dump: &serde_json::Value, uid: &str) -> bool {
    dump["pods"]
        .as_array()
        .is_some_and(|pods| pods.iter().any(|p| p["uid"] == uid))
}

/// Whether the pod's namespace has the mesh's iptables jumps.
fn has_capture_rules(pod: &PodRuntime) -> anyhow::Result<bool> {
    let rules = sys::exec_in(&pod.netns, "iptables-save", &[])?;
    Ok(mesh::capture::installed_jumps(&rules))
}

/// `meshctl get pods`.
pub fn get_pods(state: &StateDir, args: &GetPodsArgs) -> anyhow::Result<()> {
    sys::require_root()?;
    let cluster = state.load()?;
    let pods: Vec<PodRuntime> = pod::records(state)?
        .into_iter()
        .filter(|p| args.namespace.as_ref().is_none_or(|ns| *ns == p.namespace))
        .collect();
    if pods.is_empty() {
        progress!("no pods");
        return Ok(());
    }
    // One dump per node; a node whose ztunnel does not answer captures nothing.
    let mut dumps: BTreeMap<&str, Option<serde_json::Value>> = BTreeMap::new();
    let mut rows = vec![[
        "NAME",
        "NAMESPACE",
        "NODE",
        "IP",
        "SERVICE-ACCOUNT",
        "CAPTURED",
    ]
    .map(String::from)
    .to_vec()];
    for p in &pods {
        let dump = dumps
            .entry(p.node.as_str())
            .or_insert_with(|| cluster.node(&p.node).ok().and_then(|n| config_dump(n).ok()));
        let served = dump
            .as_ref()
            .is_some_and(|d| dump_serves(d, &p.workload_uid()));
        let rules = has_capture_rules(p).unwrap_or_else(|e| {
            progress!("warning: pod {}/{}: {e:#}", p.namespace, p.name);
            false
        });
        rows.push(vec![
            p.name.clone(),
            p.namespace.clone(),
            p.node.clone(),
            p.ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
            p.service_account.clone(),
            if served && rules { "yes" } else { "no" }.into(),
        ]);
    }
    out!("{}", table::format(&rows).trim_end());
    Ok(())
}

/// `POD` (in namespace `default_ns`) or `NS/POD` into its parts.
fn parse_pod(s: &str, default_ns: &str) -> anyhow::Result<(String, String)> {
    let (ns, name) = s.split_once('/').unwrap_or((default_ns, s));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        bail!("{s:?}: expected POD or NAMESPACE/POD");
    }
    Ok((ns.to_string(), name.to_string()))
}

/// `POD:PORT` or `NS/POD:PORT` into its parts.
fn parse_pod_port(s: &str, default_ns: &str) -> anyhow::Result<(String, String, u16)> {
    let (pod, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{s:?}: expected POD:PORT or NAMESPACE/POD:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("{s:?}: {port:?} is not a port"))?;
    let (ns, name) = parse_pod(pod, default_ns)?;
    Ok((ns, name, port))
}

/// A pod for the check, with its node: from its runtime record, else (a pod applied as YAML)
/// from the config source.
fn pod_ref(state: &StateDir, ns: &str, name: &str) -> anyhow::Result<(authz::PodRef, String)> {
    let (ip, node) = match pod::load(state, ns, name) {
        Ok(p) => (p.ip, p.node),
        Err(not_run) => {
            let applied = ConfigDir::new(state.config_dir())
                .pods()?
                .into_iter()
                .find(|p| p.namespace == ns && p.name == name)
                .ok_or(not_run)?;
            (applied.ip, applied.node)
        }
    };
    let ip = ip.with_context(|| format!("pod {ns}/{name} has no IP"))?;
    let pod = authz::PodRef {
        namespace: ns.to_string(),
        name: name.to_string(),
        ip: IpAddr::V4(ip),
    };
    Ok((pod, node))
}

/// `meshctl authz check`: exit status 0 when allowed, 1 when denied.
pub fn authz_check(state: &StateDir, args: &AuthzCheckArgs) -> anyhow::Result<ExitCode> {
    sys::require_root()?;
    let cluster = state.load()?;
    let (from_ns, from_name) = parse_pod(&args.from, &args.namespace)?;
    let (to_ns, to_name, port) = parse_pod_port(&args.to, &args.namespace)?;
    let (from, _) = pod_ref(state, &from_ns, &from_name)?;
    let (to, to_node) = pod_ref(state, &to_ns, &to_name)?;
    let dump = config_dump(cluster.node(&to_node)?)?;
    let report = authz::check(&dump, &from, &to, port)?;
    out!("{report}");
    Ok(if report.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_references_parse() {
        assert_eq!(
            parse_pod("demo/web", "default").expect("pod"),
            ("demo".into(), "web".into())
        );
        assert_eq!(
            parse_pod("web", "shop").expect("pod in -n's namespace"),
            ("shop".into(), "web".into())
        );
        assert!(parse_pod("a/b/c", "default").is_err());
        assert!(parse_pod("/web", "default").is_err());
        assert_eq!(
            parse_pod_port("demo/web:8080", "default").expect("pod"),
            ("demo".into(), "web".into(), 8080)
        );
        assert_eq!(
            parse_pod_port("web:8080", "shop").expect("pod"),
            ("shop".into(), "web".into(), 8080)
        );
        assert!(parse_pod_port("demo/web", "default").is_err());
        assert!(parse_pod_port("demo/web:http", "default").is_err());
    }

    #[test]
    fn served_pods_are_found_by_uid() {
        let dump =
            serde_json::json!({"pods": [{"uid": "Kubernetes//v1/Pod/demo/web", "identity": "x"}]});
        assert!(dump_serves(&dump, "Kubernetes//v1/Pod/demo/web"));
        assert!(!dump_serves(&dump, "Kubernetes//v1/Pod/demo/db"));
        assert!(!dump_serves(&serde_json::json!({}), "x"));
    }
}
