//! `meshctl waypoint list`: each waypoint's address, traffic type and readiness.
//!
//! READY is "yes" when the waypoint pod's `:15021/healthz/ready` answers 200 to a request
//! made inside the cluster (from the pod's node); otherwise "no: <why>" (no pod, the
//! process exited — with the last line of its log —, another status, no answer).

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;

use super::deploy::{waypoint_of, waypoints};
use super::gateway::{Waypoint, READINESS_PORT};
use crate::cluster::components::log_tail;
use crate::cluster::state::{ClusterState, StateDir};
use crate::config_dir::{ConfigDir, Kind};
use crate::pod::{self, PodRuntime};
use crate::{netns, sys, table};

/// How `list` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// An aligned table.
    Table,
    /// A JSON array.
    Json,
}

/// One waypoint as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Gateway name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The Service's cluster IP, if it has one.
    pub address: Option<String>,
    /// `istio.io/waypoint-for`.
    pub traffic_type: String,
    /// Whether `/healthz/ready` answered 200.
    pub ready: bool,
    /// Why not, when not ready.
    pub reason: Option<String>,
    /// The waypoint pod.
    pub pod: Option<String>,
    /// Its node.
    pub node: Option<String>,
    /// Its IP.
    pub pod_ip: Option<String>,
}

/// The rows of the waypoints in `namespace` (all when `None`).
pub fn rows(state: &StateDir, namespace: Option<&str>) -> anyhow::Result<Vec<Row>> {
    let cluster = state.load()?;
    let config = ConfigDir::new(state.config_dir());
    let records = pod::records(state)?;
    let can_probe = sys::require_root().is_ok();
    let mut rows = Vec::new();
    for w in waypoints(&config)? {
        if namespace.is_some_and(|ns| ns != w.namespace) {
            continue;
        }
        rows.push(row(&cluster, state, &config, &records, &w, can_probe)?);
    }
    Ok(rows)
}

fn row(
    cluster: &ClusterState,
    state: &StateDir,
    config: &ConfigDir,
    records: &[PodRuntime],
    w: &Waypoint,
    can_probe: bool,
) -> anyhow::Result<Row> {
    let address = config
        .object(Kind::Service, &w.namespace, &w.name)?
        .and_then(|svc| {
            svc.get("spec")
                .and_then(|s| s.get("clusterIP"))
                .and_then(Value::as_str)
                .map(String::from)
        });
    let pod = records
        .iter()
        .find(|p| p.namespace == w.namespace && waypoint_of(p) == Some(w.name.as_str()));
    let (ready, reason) = match pod {
        None => (false, Some("no waypoint pod".to_string())),
        Some(_) if !can_probe => (false, Some("not checked (needs root)".to_string())),
        Some(p) => match readiness(cluster, state, p) {
            Ok(()) => (true, None),
            Err(why) => (false, Some(why)),
        },
    };
    Ok(Row {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        address,
        traffic_type: w.traffic.clone(),
        ready,
        reason,
        pod: pod.map(|p| p.name.clone()),
        node: pod.map(|p| p.node.clone()),
        pod_ip: pod.and_then(|p| p.ip).map(|ip| ip.to_string()),
    })
}

/// Ok when the pod's `/healthz/ready` answers 200 from its node; else why not.
pub fn readiness(cluster: &ClusterState, state: &StateDir, pod: &PodRuntime) -> Result<(), String> {
    let Some(ip) = pod.ip else {
        return Err("the pod has no IP".into());
    };
    if !pod.main.is_some_and(|m| m.is_alive()) {
        let log = state.log(&pod.log_name());
        let last = log_tail(&log, 1);
        return Err(format!(
            "the waypoint process exited (log {}): {}",
            log.display(),
            if last.is_empty() { "-" } else { last.trim() }
        ));
    }
    let node = cluster.node(&pod.node).map_err(|e| format!("{e:#}"))?;
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, READINESS_PORT));
    match netns::http_get(&node.netns, addr, "/healthz/ready", Duration::from_secs(1)) {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("{addr}/healthz/ready answered {}", r.status)),
        Err(e) => Err(format!("{addr}/healthz/ready: {e:#}")),
    }
}

/// The rows as `list` prints them.
pub fn render(rows: &[Row], output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(rows)? + "\n",
        Output::Table => {
            let mut table = vec![["NAME", "NAMESPACE", "ADDRESS", "TRAFFIC-TYPE", "READY"]
                .map(String::from)
                .to_vec()];
            for r in rows {
                table.push(vec![
                    r.name.clone(),
                    r.namespace.clone(),
                    r.address.clone().unwrap_or_else(|| "<none>".into()),
                    r.traffic_type.clone(),
                    match &r.reason {
                        None if r.ready => "yes".into(),
                        None => "no".into(),
                        Some(why) => format!("no: {why}"),
                    },
                ]);
            }
            table::format(&table)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_istioctl_s_columns_and_says_why_a_waypoint_is_not_ready() {
        let rows = [
            Row {
                name: "waypoint".into(),
                namespace: "shop".into(),
                address: Some("10.96.3.4".into()),
                traffic_type: "service".into(),
                ready: true,
                reason: None,
                pod: Some("waypoint-abcde".into()),
                node: Some("n1".into()),
                pod_ip: Some("10.244.1.3".into()),
            },
            Row {
                name: "wp2".into(),
                namespace: "b".into(),
                address: None,
                traffic_type: "all".into(),
                ready: false,
                reason: Some("no waypoint pod".into()),
                pod: None,
                node: None,
                pod_ip: None,
            },
        ];
        assert_eq!(
            render(&rows, Output::Table).expect("table"),
            "NAME      NAMESPACE  ADDRESS    TRAFFIC-TYPE  READY\n\
             waypoint  shop       10.96.3.4  service       yes\n\
             wp2       b          <none>     all           no: no waypoint pod\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, Output::Json).expect("json")).expect("parses");
        assert_eq!(json[0]["address"], "10.96.3.4");
        assert_eq!(json[0]["ready"], true);
        assert_eq!(json[1]["reason"], "no waypoint pod");
        assert_eq!(json[1]["traffic_type"], "all");
    }
}
