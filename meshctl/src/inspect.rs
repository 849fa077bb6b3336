//! Read-only views of a running cluster: `meshctl get pods` (with whether each pod is really
//! captured) and `meshctl authz check` (a policy decision from the destination's ztunnel, and
//! from the waypoint on the way if there is one).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::admin::{admin_config_dump, config_dump, WAYPOINT_ADMIN};
use crate::authz::service::{self, ServiceRoute};
use crate::authz::waypoint::{self as l7, Hop, HttpRequest};
use crate::authz::{self, PodRef, SourcePeer};
use crate::cluster::state::StateDir;
use crate::config_dir::ConfigDir;
use crate::pod::{self, PodRuntime};
use crate::waypoint::deploy::waypoint_of;
use crate::{sys, table};

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
    /// The server and port: a pod, `POD:PORT` or `NAMESPACE/POD:PORT`, or a Service,
    /// `svc/NAME:PORT` or `svc/NAMESPACE/NAME:PORT`.
    #[arg(long)]
    pub to: String,
    /// Namespace of a pod or Service given without one.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The request's method, for a waypoint's L7 policies.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The request's path (with a query if any), for a waypoint's L7 policies.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The request's Host (default: the Service's host name, or the pod's address).
    #[arg(long)]
    pub host: Option<String>,
    /// A request header, `NAME: VALUE`; repeatable.
    #[arg(long = "header", short = 'H', value_parser = HttpRequest::parse_header)]
    pub headers: Vec<(String, String)>,
}

impl AuthzCheckArgs {
    fn request(&self) -> HttpRequest {
        HttpRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            host: self.host.clone(),
            headers: self.headers.clone(),
        }
    }
}

/// What `--to` names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// `(namespace, pod, port)`.
    Pod(String, String, u16),
    /// `(namespace, service, port)`.
    Service(String, String, u16),
}

impl Target {
    fn parse(s: &str, default_ns: &str) -> anyhow::Result<Target> {
        match s
            .strip_prefix("svc/")
            .or_else(|| s.strip_prefix("service/"))
        {
            Some(rest) => {
                let (ns, name, port) = parse_pod_port(rest, default_ns).with_context(|| {
                    format!("{s:?}: expected svc/NAME:PORT or svc/NAMESPACE/NAME:PORT")
                })?;
                Ok(Target::Service(ns, name, port))
            }
            None => {
                let (ns, name, port) = parse_pod_port(s, default_ns)?;
                Ok(Target::Pod(ns, name, port))
            }
        }
    }
}

/// The `/config_dump` of waypoint `hop`, from one of its pods.
fn waypoint_dump(state: &StateDir, hop: &Hop) -> anyhow::Result<serde_json::Value> {
    let pod = pod::records(state)?
        .into_iter()
        .find(|p| p.namespace == hop.namespace && waypoint_of(p) == Some(hop.name.as_str()))
        .with_context(|| format!("no pod of waypoint {hop} (see `meshctl waypoint list`)"))?;
    let who = format!("waypoint {hop} (pod {})", pod.name);
    admin_config_dump(&pod.netns, WAYPOINT_ADMIN, &who)
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
///
/// To a pod: the waypoint's L7 verdict first if the pod has one, then the L4 verdict of the
/// pod's node's ztunnel. To a Service: the route as the client's ztunnel sees it, the
/// Service's waypoint if any, then each endpoint's ztunnel.
pub fn authz_check(state: &StateDir, args: &AuthzCheckArgs) -> anyhow::Result<ExitCode> {
    sys::require_root()?;
    let cluster = state.load()?;
    let (from_ns, from_name) = parse_pod(&args.from, &args.namespace)?;
    let (from, from_node) = pod_ref(state, &from_ns, &from_name)?;
    let request = args.request();
    let allowed = match Target::parse(&args.to, &args.namespace)? {
        Target::Pod(ns, name, port) => {
            let (to, to_node) = pod_ref(state, &ns, &name)?;
            let store = authz::store_of(&config_dump(cluster.node(&to_node)?)?)?;
            let hop = authz::pod_hop(&store, &from, &to)?;
            let mut allowed = true;
            if let Some(hop) = &hop {
                let dst = SocketAddr::new(to.ip, port);
                let report = waypoint_stage(state, &store, hop, None, &from, dst, &request)?;
                out!("{report}");
                allowed = report.allowed();
            }
            if allowed {
                let report = authz::check(&store, &from, &to, port, hop.as_ref())?;
                out!("{report}");
                allowed = report.allowed;
            }
            allowed
        }
        Target::Service(ns, name, port) => {
            let client_store = authz::store_of(&config_dump(cluster.node(&from_node)?)?)?;
            let route = service::route(&client_store, &from, &ns, &name, port)?;
            service_stages(state, &cluster, &client_store, &from, &route, &request)?
        }
    };
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The waypoint's verdict on `request` from `from` to `dst`.
fn waypoint_stage(
    state: &StateDir,
    store: &mesh::store::Store,
    hop: &Hop,
    service: Option<(&str, &str)>,
    from: &PodRef,
    dst: SocketAddr,
    request: &HttpRequest,
) -> anyhow::Result<l7::L7Report> {
    let client = match authz::source_peer(store, from) {
        SourcePeer::Mesh(id) => Some(id),
        SourcePeer::NotEnrolled | SourcePeer::Unknown => None,
    };
    let dump = waypoint_dump(state, hop)?;
    l7::check(&dump, hop, service, client.as_ref(), from.ip, dst, request)
}

/// Prints the way to a Service and each stage's verdict; whether every endpoint would take
/// the request.
fn service_stages(
    state: &StateDir,
    cluster: &crate::cluster::state::ClusterState,
    client_store: &mesh::store::Store,
    from: &PodRef,
    route: &ServiceRoute,
    request: &HttpRequest,
) -> anyhow::Result<bool> {
    let vip = route
        .vip
        .map_or_else(|| "no VIP".into(), |ip| ip.to_string());
    out!(
        "service {} ({vip}) port {}: {} endpoint(s){}",
        route.key,
        route.port,
        route.endpoints.len(),
        route
            .waypoint
            .as_ref()
            .map_or_else(String::new, |h| format!(", through waypoint {h}"))
    );
    if let Some(hop) = &route.waypoint {
        let dst = SocketAddr::new(route.vip.unwrap_or(from.ip), route.port);
        let service = Some((route.key.as_str(), route.hostname.as_str()));
        let report = waypoint_stage(state, client_store, hop, service, from, dst, request)?;
        out!("{report}");
        if !report.allowed() {
            return Ok(false);
        }
    }
    if route.endpoints.is_empty() {
        out!("DENIED: the Service has no endpoint");
        return Ok(false);
    }
    let mut all = true;
    for ep in &route.endpoints {
        let store = authz::store_of(&config_dump(cluster.node(&ep.node)?)?)?;
        let report = authz::check(&store, from, &ep.pod, ep.port, route.waypoint.as_ref())?;
        out!("{report}");
        all &= report.allowed;
    }
    Ok(all)
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
        assert_eq!(
            Target::parse("svc/web:80", "shop").expect("service"),
            Target::Service("shop".into(), "web".into(), 80)
        );
        assert_eq!(
            Target::parse("service/demo/web:80", "shop").expect("service"),
            Target::Service("demo".into(), "web".into(), 80)
        );
        assert_eq!(
            Target::parse("demo/web:8080", "shop").expect("pod"),
            Target::Pod("demo".into(), "web".into(), 8080)
        );
        assert!(Target::parse("svc/web", "shop").is_err());
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
