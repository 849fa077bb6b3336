//! `meshctl waypoint apply|list|delete --kubeconfig`: the same commands against a Kubernetes
//! cluster. `apply` writes the Gateway (server-side apply) and, with `--enroll-namespace`, the
//! namespace label; istiod-lite's deployer does the rest and reports in the Gateway's status,
//! which `--wait` and `list` read.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use kube::api::{Api, DeleteParams, ListParams};
use resources::Gateway;

use super::gateway::{self, USE_WAYPOINT_LABEL, WAYPOINT_CLASS, WAYPOINT_FOR_LABEL};
use super::list::{self, Row};
use super::{ApplyArgs, DeleteArgs, ListArgs};
use crate::kube_api::{apply as apply_object, client, label_namespace, runtime};

/// How long `--wait` waits for the deployer.
const WAIT: Duration = Duration::from_secs(120);

/// `apply` on a cluster.
pub fn apply(kubeconfig: Option<&std::path::Path>, args: &ApplyArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = client(kubeconfig).await?;
        let gateway = gateway::render(&args.namespace, &args.name, args.traffic_type);
        apply_object(&client, &gateway).await?;
        out!(
            "gateway.gateway.networking.k8s.io/{}/{} applied",
            args.namespace,
            args.name
        );
        if args.enroll_namespace {
            let label = [(USE_WAYPOINT_LABEL.to_string(), Some(args.name.clone()))];
            label_namespace(&client, &args.namespace, &label).await?;
            out!(
                "namespace/{} labeled {USE_WAYPOINT_LABEL}={}",
                args.namespace,
                args.name
            );
        }
        if args.wait {
            let api: Api<Gateway> = Api::namespaced(client.clone(), &args.namespace);
            let start = Instant::now();
            loop {
                let gw = api.get(&args.name).await?;
                if programmed(&gw) == Some(true) {
                    out!("waypoint {}/{} is programmed", args.namespace, args.name);
                    break;
                }
                if start.elapsed() > WAIT {
                    bail!(
                        "waypoint {}/{} not programmed after {WAIT:?} (is istiod-lite running? \
                         `kubectl describe gateway {} -n {}`)",
                        args.namespace,
                        args.name,
                        args.name,
                        args.namespace
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    })
}

/// The `Programmed` condition of a Gateway, if it has one.
fn programmed(gw: &Gateway) -> Option<bool> {
    let status = &gw.status.as_ref()?.0;
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Programmed")
        .map(|c| c["status"] == "True")
}

/// `list` on a cluster: every Gateway of the waypoint class.
pub fn list(kubeconfig: Option<&std::path::Path>, args: &ListArgs) -> anyhow::Result<Vec<Row>> {
    runtime()?.block_on(async {
        let client = client(kubeconfig).await?;
        let api: Api<Gateway> = match &args.namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let gateways = api
            .list(&ListParams::default())
            .await
            .context("listing Gateways")?;
        Ok(gateways
            .items
            .iter()
            .filter(|gw| gw.spec.gateway_class_name == WAYPOINT_CLASS)
            .map(row)
            .collect())
    })
}

fn row(gw: &Gateway) -> Row {
    let status = gw.status.as_ref().map(|s| s.0.clone()).unwrap_or_default();
    let address = status["addresses"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|a| a["value"].as_str())
        .map(String::from);
    let reason = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Programmed"))
        .filter(|c| c["status"] != "True")
        .and_then(|c| c["message"].as_str().map(String::from))
        .or_else(|| {
            gw.status
                .is_none()
                .then(|| "no status yet (is istiod-lite running?)".into())
        });
    Row {
        name: gw.metadata.name.clone().unwrap_or_default(),
        namespace: gw.metadata.namespace.clone().unwrap_or_default(),
        address,
        traffic_type: gw
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(WAYPOINT_FOR_LABEL).cloned())
            .unwrap_or_else(|| "service".into()),
        ready: programmed(gw) == Some(true),
        reason,
        pod: None,
        node: None,
        pod_ip: None,
    }
}

/// `delete` on a cluster: the Gateway (its objects follow, owned by it), and the namespace
/// label when it names this waypoint.
pub fn delete(kubeconfig: Option<&std::path::Path>, args: &DeleteArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = client(kubeconfig).await?;
        let (ns, name) = (&args.namespace, &args.name);
        let api: Api<Gateway> = Api::namespaced(client.clone(), ns);
        match api.get_opt(name).await? {
            Some(gw) if gw.spec.gateway_class_name == WAYPOINT_CLASS => {}
            _ => bail!("no waypoint {ns}/{name} (see `meshctl waypoint list --kubeconfig`)"),
        }
        api.delete(name, &DeleteParams::background()).await?;
        out!("gateway.gateway.networking.k8s.io/{ns}/{name} deleted");
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let labelled = namespaces
            .get_opt(ns)
            .await?
            .and_then(|n| n.metadata.labels)
            .and_then(|l| l.get(USE_WAYPOINT_LABEL).cloned());
        if labelled.as_deref() == Some(name.as_str()) {
            label_namespace(&client, ns, &[(USE_WAYPOINT_LABEL.to_string(), None)]).await?;
            out!("namespace/{ns} unlabeled {USE_WAYPOINT_LABEL}");
        }
        Ok(())
    })
}

/// Rows as `list` prints them (the cluster's have no pod columns).
pub fn render(rows: &[Row], output: list::Output) -> anyhow::Result<String> {
    list::render(rows, output)
}
