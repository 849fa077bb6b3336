//! `meshctl proxy-status`: every proxy connected to istiod-lite and, per resource type, whether
//! it holds what istiod-lite serves (SYNCED), has a response or change outstanding (STALE),
//! refused the last one (NACK, with its error below the table) or never asked (-). Read from
//! istiod-lite's `/debug/syncz` on its monitoring port, as `istioctl proxy-status` reads
//! Istio's.

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use crate::cluster::state::StateDir;
use crate::debug::{age, format_output, Output};
use crate::kube_api::Target;
use crate::reach::Reach;

/// The types' columns, in `/debug/syncz` order.
const TYPES: [(&str, &str); 5] = [
    ("address", "ADDRESS"),
    ("authorization", "AUTHORIZATION"),
    ("l7_policy", "L7-POLICY"),
    ("request_authn", "REQUEST-AUTHN"),
    ("routes", "ROUTES"),
];

/// Flags of `proxy-status`.
#[derive(Debug, Args)]
pub struct ProxyStatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The local cluster, or Kubernetes with `--kubeconfig`.
    #[command(flatten)]
    pub target: Target,
}

/// `meshctl proxy-status`.
pub fn run(state: &StateDir, args: &ProxyStatusArgs) -> anyhow::Result<()> {
    let syncz = Reach::new(state, &args.target)?.istiod("/debug/syncz")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    out!("{}", render(&syncz, args.output, now)?.trim_end());
    Ok(())
}

/// `syncz` (istiod-lite's `/debug/syncz`) as a table (NAME TYPE NODE, a column per resource
/// type, AGE; then each NACK's error) or as JSON/YAML. `now` is unix seconds, for AGE.
pub fn render(syncz: &Value, output: Output, now: u64) -> anyhow::Result<String> {
    let proxies = syncz
        .as_array()
        .context("not an istiod-lite /debug/syncz answer of this mesh version")?;
    let mut header = vec!["NAME".to_string(), "TYPE".into(), "NODE".into()];
    header.extend(TYPES.iter().map(|(_, column)| column.to_string()));
    header.push("AGE".into());
    let mut rows = vec![header];
    let mut nacks = Vec::new();
    for p in proxies {
        let name = short_name(p["proxy"].as_str().unwrap_or("-"));
        let mut row = vec![
            name.clone(),
            p["kind"].as_str().unwrap_or("-").to_string(),
            p["node"].as_str().unwrap_or("-").to_string(),
        ];
        for (kind, _) in TYPES {
            let t = p["xds"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == kind);
            let status = t.and_then(|t| t["config_status"].as_str()).unwrap_or("-");
            if status == "NACK" {
                let error = t.and_then(|t| t["error"].as_str()).unwrap_or("?");
                nacks.push(format!("{name} {kind}: {error}"));
            }
            row.push(if status == "NOT_SENT" { "-" } else { status }.to_string());
        }
        let since = p["connected_since_unix"].as_u64().unwrap_or(now);
        row.push(age(now.saturating_sub(since) * 1000));
        rows.push(row);
    }
    let mut text = format_output(syncz, rows, output)?;
    if output == Output::Table && !nacks.is_empty() {
        text.push_str("\nNACKed (the proxy keeps its previous version):\n");
        for n in nacks {
            text.push_str(&format!("  {n}\n"));
        }
    }
    Ok(text)
}

/// A proxy id as istioctl shows it: `<pod>.<namespace>` out of Istio's
/// `<type>~<ip>~<pod>.<namespace>~<domain>`; any other id as it is.
fn short_name(id: &str) -> String {
    match id.split('~').collect::<Vec<_>>()[..] {
        [_, _, name, _] if !name.is_empty() => name.to_string(),
        _ => id.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn type_status(kind: &str, status: &str, error: Option<&str>) -> Value {
        serde_json::json!({"type": kind, "config_status": status, "error": error})
    }

    #[test]
    fn the_table_shows_each_type_s_state_and_lists_nack_errors() {
        let syncz = serde_json::json!([
            {"proxy": "ztunnel~n1", "kind": "ztunnel", "node": "n1", "connected_since_unix": 1000,
             "xds": [type_status("address", "SYNCED", None),
                     type_status("authorization", "NACK", Some("bad policy")),
                     type_status("l7_policy", "NOT_SENT", None),
                     type_status("request_authn", "NOT_SENT", None),
                     type_status("routes", "NOT_SENT", None)]},
            {"proxy": "waypoint~shop", "kind": "waypoint", "node": "n2", "connected_since_unix": 1100,
             "xds": [type_status("address", "STALE", None),
                     type_status("authorization", "SYNCED", None),
                     type_status("l7_policy", "SYNCED", None),
                     type_status("request_authn", "SYNCED", None),
                     type_status("routes", "SYNCED", None)]}
        ]);
        let text = render(&syncz, Output::Table, 1130).unwrap();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAME",
                "TYPE",
                "NODE",
                "ADDRESS",
                "AUTHORIZATION",
                "L7-POLICY",
                "REQUEST-AUTHN",
                "ROUTES",
                "AGE"
            ]
        );
        assert_eq!(
            lines[1],
            [
                "ztunnel~n1",
                "ztunnel",
                "n1",
                "SYNCED",
                "NACK",
                "-",
                "-",
                "-",
                "2m10s"
            ]
        );
        assert_eq!(
            lines[2][3..8],
            ["STALE", "SYNCED", "SYNCED", "SYNCED", "SYNCED"]
        );
        assert!(
            text.contains("ztunnel~n1 authorization: bad policy"),
            "{text}"
        );
        let json = render(&syncz, Output::Json, 1130).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), syncz);
        assert!(render(&serde_json::json!({}), Output::Table, 0).is_err());
    }

    #[test]
    fn istio_proxy_ids_show_as_pod_dot_namespace() {
        assert_eq!(
            short_name("ztunnel~127.0.0.1~ztunnel-n1.istio-system~istio-system.svc.cluster.local"),
            "ztunnel-n1.istio-system"
        );
        assert_eq!(short_name("ztunnel~n1"), "ztunnel~n1");
    }
}
