//! The local cluster's waypoint deployer: what Istio's deployer does on Kubernetes for each
//! Gateway of class `istio-waypoint`, done by meshctl after every change to the config
//! source (`waypoint apply|delete`, `apply -f`, `delete -f`).
//!
//! For each waypoint Gateway: a ServiceAccount named after it; a Service of the same name
//! (cluster IP from the service CIDR, port 15008 `mesh`, selector the gateway-name label);
//! one pod `<name>-<5 random>` on the node with the fewest pods, through the node's CNI chain
//! like `pod run`, labelled `gateway.networking.k8s.io/gateway-name=<name>`,
//! `istio.io/dataplane-mode=none` (ztunnel does not capture it) and
//! `networking.istio.io/tunnel=http` (istiod-lite tells ztunnels it terminates HBONE itself),
//! running the `waypoint` binary found next to meshctl. What the deployer made carries
//! `gateway.istio.io/managed=istio.io-mesh-controller`, and only such objects are removed when
//! their Gateway is gone; a user's ServiceAccount of the same name is used as it is, a
//! user's Service of the same name stops the deployment (reported).
//!
//! [`plan`] is pure (desired waypoints and what exists → actions, deletions first; the pod of
//! a removed waypoint goes once no ztunnel routes through it any more, see [`super::drain`]);
//! [`reconcile`] reads the state, plans and acts, under the state lock so two meshctl
//! commands never deploy one waypoint twice. Idempotent: a second run does nothing.
//!
//! The waypoint is configured through its environment, as a Kubernetes deployer does
//! (`POD_NAME`, `POD_NAMESPACE`, `SERVICE_ACCOUNT`, `NODE_NAME`, `INSTANCE_IP`,
//! `XDS_ADDRESS`, `CA_ADDRESS`, `CA_ROOT_CA`, `CA_TOKEN_FILE`: the names ztunnel and the
//! waypoint read). Its bearer token is its node's: istiod-lite's CA signs a certificate for
//! `ns/<namespace>/sa/<name>` to a node on which a pod with that identity is scheduled, which
//! the waypoint pod is.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;
use serde_json::Value;

use super::gateway::{
    as_waypoint, managed_for, Waypoint, GATEWAY_NAME_LABEL, HBONE_PORT, MANAGED_LABEL,
    MANAGED_VALUE,
};
use crate::cluster::components::find_binary;
use crate::cluster::state::{ClusterState, StateDir};
use crate::config_dir::{ConfigDir, Kind};
use crate::pod::{self, EnvValue, PodRuntime, PodSpec};

/// The waypoint binary, next to meshctl.
pub const WAYPOINT_BINARY: &str = "waypoint";
use resources::waypoint::{DATAPLANE_MODE_LABEL, TUNNEL_LABEL};

/// `<namespace>/<name>` of a waypoint.
pub type Key = (String, String);

/// What exists for waypoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// ServiceAccounts by (namespace, name): whether the deployer made it.
    pub service_accounts: BTreeMap<Key, bool>,
    /// Services by (namespace, name): the Gateway the deployer made it for, `None` for a
    /// user's.
    pub services: BTreeMap<Key, Option<String>>,
    /// Waypoint pods: (namespace, Gateway name) → pod names, sorted.
    pub pods: BTreeMap<Key, Vec<String>>,
}

/// One step of a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop and remove a waypoint pod (its Gateway is gone, or it is a surplus one).
    DeletePod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        pod: String,
        /// Its Gateway is gone: first wait until no ztunnel sends traffic through it.
        drain: Option<String>,
    },
    /// Remove the deployer's Service of a Gateway that is gone.
    DeleteService(Key),
    /// Remove the deployer's ServiceAccount of a Gateway that is gone.
    DeleteServiceAccount(Key),
    /// Create the waypoint's ServiceAccount.
    CreateServiceAccount(Key),
    /// Create the waypoint's Service.
    CreateService(Key),
    /// Start the waypoint's pod.
    CreatePod(Key),
    /// The waypoint cannot be deployed; why.
    Blocked(Key, String),
}

/// The actions that make `existing` match `desired`: deletions first (pods, Services,
/// ServiceAccounts), then per waypoint its ServiceAccount, Service and pod.
pub fn plan(desired: &[Waypoint], existing: &Existing) -> Vec<Action> {
    let wanted: BTreeSet<Key> = desired
        .iter()
        .map(|w| (w.namespace.clone(), w.name.clone()))
        .collect();
    let mut actions = Vec::new();
    for (key, pods) in &existing.pods {
        // A waypoint keeps its first pod; a gone one keeps none.
        let keep = usize::from(wanted.contains(key));
        for pod in pods.iter().skip(keep) {
            actions.push(Action::DeletePod {
                namespace: key.0.clone(),
                pod: pod.clone(),
                drain: (keep == 0).then(|| key.1.clone()),
            });
        }
    }
    for (key, owner) in &existing.services {
        if owner.is_some() && !wanted.contains(key) {
            actions.push(Action::DeleteService(key.clone()));
        }
    }
    for (key, managed) in &existing.service_accounts {
        if *managed && !wanted.contains(key) {
            actions.push(Action::DeleteServiceAccount(key.clone()));
        }
    }
    for key in &wanted {
        if let Some(None) = existing.services.get(key) {
            actions.push(Action::Blocked(
                key.clone(),
                format!(
                    "Service {}/{} exists and was not made for the waypoint: delete or rename \
                     it, or name the waypoint differently",
                    key.0, key.1
                ),
            ));
            continue;
        }
        if !existing.service_accounts.contains_key(key) {
            actions.push(Action::CreateServiceAccount(key.clone()));
        }
        if !existing.services.contains_key(key) {
            actions.push(Action::CreateService(key.clone()));
        }
        if existing.pods.get(key).is_none_or(Vec::is_empty) {
            actions.push(Action::CreatePod(key.clone()));
        }
    }
    actions
}

/// The waypoint Gateways of the config source, sorted.
pub fn waypoints(config: &ConfigDir) -> anyhow::Result<Vec<Waypoint>> {
    let mut out: Vec<Waypoint> = config
        .objects(Kind::Gateway)?
        .iter()
        .filter_map(|g| as_waypoint(&g.namespace, &g.name, &g.value))
        .collect();
    out.sort();
    Ok(out)
}

/// Whether a pod record is a waypoint pod the deployer made; its Gateway's name if so.
pub fn waypoint_of(pod: &PodRuntime) -> Option<&str> {
    (pod.labels.get(MANAGED_LABEL).map(String::as_str) == Some(MANAGED_VALUE))
        .then(|| pod.labels.get(GATEWAY_NAME_LABEL).map(String::as_str))
        .flatten()
}

/// What exists, read from the config source and the pod records.
fn existing(config: &ConfigDir, pods: &[PodRuntime]) -> anyhow::Result<Existing> {
    let mut found = Existing::default();
    for sa in config.objects(Kind::ServiceAccount)? {
        let managed = managed_for(&sa.value, &sa.name);
        found
            .service_accounts
            .insert((sa.namespace, sa.name), managed);
    }
    for svc in config.objects(Kind::Service)? {
        let owner = svc
            .value
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(|l| l.get(GATEWAY_NAME_LABEL))
            .and_then(Value::as_str)
            .filter(|gw| managed_for(&svc.value, gw))
            .map(String::from);
        found.services.insert((svc.namespace, svc.name), owner);
    }
    for p in pods {
        if let Some(gw) = waypoint_of(p) {
            found
                .pods
                .entry((p.namespace.clone(), gw.to_string()))
                .or_default()
                .push(p.name.clone());
        }
    }
    for names in found.pods.values_mut() {
        names.sort();
    }
    Ok(found)
}

/// What a reconcile could not do.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Waypoints that could not be deployed, and why.
    pub failures: Vec<(Key, anyhow::Error)>,
}

impl Outcome {
    /// Ok, or an error naming every waypoint that could not be deployed.
    pub fn into_result(self) -> anyhow::Result<()> {
        if self.failures.is_empty() {
            return Ok(());
        }
        let mut message = String::from("the config was stored, but deploying failed for:");
        for ((ns, name), e) in &self.failures {
            message.push_str(&format!("\n  waypoint {ns}/{name}: {e:#}"));
        }
        bail!(message)
    }
}

/// Makes the local cluster's waypoint pods, Services and ServiceAccounts match the waypoint
/// Gateways of its config source (see the module doc). Each thing done is given to `report`
/// as it is done (`pod/shop/waypoint-x1y2z started on n1 (10.244.1.3)`). One waypoint's
/// failure does not stop the others'.
pub fn reconcile(state: &StateDir, report: &mut dyn FnMut(&str)) -> anyhow::Result<Outcome> {
    let _lock = state.lock()?;
    let cluster = state.load()?;
    let config = ConfigDir::new(state.config_dir());
    let desired = waypoints(&config)?;
    let records = pod::records(state)?;
    let actions = plan(&desired, &existing(&config, &records)?);
    let mut outcome = Outcome::default();
    let mut failed: BTreeSet<Key> = BTreeSet::new();
    for action in actions {
        let key = match &action {
            Action::DeletePod { .. }
            | Action::DeleteService(_)
            | Action::DeleteServiceAccount(_) => None,
            Action::CreateServiceAccount(k)
            | Action::CreateService(k)
            | Action::CreatePod(k)
            | Action::Blocked(k, _) => Some(k.clone()),
        };
        if key.as_ref().is_some_and(|k| failed.contains(k)) {
            continue;
        }
        match act(state, &cluster, &config, &records, &action) {
            Ok(Some(line)) => report(&line),
            Ok(None) => {}
            Err(e) => match key {
                Some(k) => {
                    failed.insert(k.clone());
                    outcome.failures.push((k, e));
                }
                // A removal that failed: said, and tried again next time.
                None => progress!("warning: {e:#}"),
            },
        }
    }
    Ok(outcome)
}

fn act(
    state: &StateDir,
    cluster: &ClusterState,
    config: &ConfigDir,
    records: &[PodRuntime],
    action: &Action,
) -> anyhow::Result<Option<String>> {
    let applied = |yaml: String| -> anyhow::Result<Option<String>> {
        Ok(config.apply(&yaml)?.into_iter().next())
    };
    match action {
        Action::Blocked(_, why) => bail!("{why}"),
        Action::CreateServiceAccount((ns, name)) => applied(service_account_yaml(ns, name)),
        Action::CreateService((ns, name)) => applied(service_yaml(ns, name)),
        Action::CreatePod((ns, name)) => {
            let binary = find_binary(WAYPOINT_BINARY)?;
            let node = pod::pick_node(cluster, records, None)?;
            let spec = pod_spec(
                state,
                cluster,
                ns,
                name,
                &node,
                &binary.display().to_string(),
            );
            let created = pod::create(state, cluster, &spec)?;
            Ok(Some(format!(
                "pod/{ns}/{} started on {} ({})",
                created.name,
                created.node,
                created.ip.map(|ip| ip.to_string()).unwrap_or_default()
            )))
        }
        Action::DeletePod {
            namespace,
            pod,
            drain,
        } => {
            let record = pod::load(state, namespace, pod)?;
            if let Some(gateway) = drain {
                if !super::drain::wait_unbound(cluster, namespace, gateway) {
                    progress!(
                        "warning: a ztunnel still sends traffic through waypoint \
                         {namespace}/{gateway} after {:?}; removing its pod anyway",
                        super::drain::DRAIN_TIMEOUT
                    );
                }
            }
            let warnings = pod::teardown(state, cluster, &record);
            if let Some(w) = warnings.first() {
                bail!("removing pod {namespace}/{pod}: {w}");
            }
            Ok(Some(format!("pod/{namespace}/{pod} deleted")))
        }
        Action::DeleteService((ns, name)) => {
            config.remove_object(Kind::Service, ns, name)?;
            Ok(Some(format!("service/{ns}/{name} deleted")))
        }
        Action::DeleteServiceAccount((ns, name)) => {
            config.remove_object(Kind::ServiceAccount, ns, name)?;
            Ok(Some(format!("serviceaccount/{ns}/{name} deleted")))
        }
    }
}

fn managed_labels(name: &str) -> String {
    format!("{{{GATEWAY_NAME_LABEL}: {name}, {MANAGED_LABEL}: {MANAGED_VALUE}}}")
}

/// The waypoint's ServiceAccount.
pub fn service_account_yaml(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {namespace}, \
         labels: {}}}\n",
        managed_labels(name)
    )
}

/// The waypoint's Service (its cluster IP is allocated when it is stored).
pub fn service_yaml(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}, \
         labels: {}}}\nspec:\n  selector: {{{GATEWAY_NAME_LABEL}: {name}}}\n  ports:\n  - \
         {{name: mesh, port: {HBONE_PORT}, protocol: TCP}}\n",
        managed_labels(name)
    )
}

/// The waypoint pod of Gateway `namespace/name` on `node`, running `binary`.
pub fn pod_spec(
    state: &StateDir,
    cluster: &ClusterState,
    namespace: &str,
    name: &str,
    node: &str,
    binary: &str,
) -> PodSpec {
    // Like a Deployment's pods: the name and a random suffix, within 63 characters.
    let suffix: String = (0..5)
        .map(|_| {
            let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
            char::from(alphabet[rand::random_range(0..alphabet.len())])
        })
        .collect();
    let stem: String = name.chars().take(63 - 6).collect();
    let pod_name = format!("{}-{suffix}", stem.trim_end_matches('-'));
    let labels = BTreeMap::from([
        (GATEWAY_NAME_LABEL.to_string(), name.to_string()),
        (MANAGED_LABEL.to_string(), MANAGED_VALUE.to_string()),
        (DATAPLANE_MODE_LABEL.to_string(), "none".to_string()),
        (TUNNEL_LABEL.to_string(), "http".to_string()),
    ]);
    let xds = format!("https://{}", cluster.istiod_addr);
    let v = |s: &str| EnvValue::Value(s.to_string());
    let path = |p: std::path::PathBuf| EnvValue::Value(p.display().to_string());
    let env = vec![
        ("POD_NAME".to_string(), v(&pod_name)),
        ("POD_NAMESPACE".to_string(), v(namespace)),
        ("SERVICE_ACCOUNT".to_string(), v(name)),
        ("NODE_NAME".to_string(), v(node)),
        ("INSTANCE_IP".to_string(), EnvValue::PodIp),
        ("XDS_ADDRESS".to_string(), v(&xds)),
        ("CA_ADDRESS".to_string(), v(&xds)),
        ("CA_ROOT_CA".to_string(), path(state.root_cert())),
        ("CA_TOKEN_FILE".to_string(), path(state.node_token(node))),
        ("RUST_LOG".to_string(), v("info,access=info")),
    ];
    PodSpec {
        name: pod_name,
        namespace: namespace.to_string(),
        service_account: name.to_string(),
        labels,
        node: Some(node.to_string()),
        command: vec![binary.to_string()],
        env,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wp(ns: &str, name: &str) -> Waypoint {
        Waypoint {
            namespace: ns.into(),
            name: name.into(),
            traffic: "service".into(),
        }
    }

    fn key(ns: &str, name: &str) -> Key {
        (ns.into(), name.into())
    }

    #[test]
    fn a_new_waypoint_gets_its_service_account_service_and_pod_in_that_order() {
        let actions = plan(&[wp("shop", "waypoint")], &Existing::default());
        let k = key("shop", "waypoint");
        assert_eq!(
            actions,
            [
                Action::CreateServiceAccount(k.clone()),
                Action::CreateService(k.clone()),
                Action::CreatePod(k),
            ]
        );
    }

    #[test]
    fn a_deployed_waypoint_needs_nothing() {
        let k = key("shop", "waypoint");
        let existing = Existing {
            service_accounts: BTreeMap::from([(k.clone(), true)]),
            services: BTreeMap::from([(k.clone(), Some("waypoint".into()))]),
            pods: BTreeMap::from([(k, vec!["waypoint-abcde".into()])]),
        };
        assert_eq!(plan(&[wp("shop", "waypoint")], &existing), []);
    }

    #[test]
    fn a_gone_gateway_loses_only_what_the_deployer_made_pods_first() {
        let k = key("shop", "old");
        let existing = Existing {
            service_accounts: BTreeMap::from([(k.clone(), true), (key("shop", "users"), false)]),
            services: BTreeMap::from([(k.clone(), Some("old".into())), (key("shop", "web"), None)]),
            pods: BTreeMap::from([(k.clone(), vec!["old-aaaaa".into()])]),
        };
        assert_eq!(
            plan(&[], &existing),
            [
                Action::DeletePod {
                    namespace: "shop".into(),
                    pod: "old-aaaaa".into(),
                    drain: Some("old".into()),
                },
                Action::DeleteService(k.clone()),
                Action::DeleteServiceAccount(k),
            ]
        );
    }

    #[test]
    fn surplus_pods_go_and_missing_parts_come_back() {
        let k = key("shop", "waypoint");
        let existing = Existing {
            service_accounts: BTreeMap::new(),
            services: BTreeMap::from([(k.clone(), Some("waypoint".into()))]),
            pods: BTreeMap::from([(k.clone(), vec!["waypoint-a".into(), "waypoint-b".into()])]),
        };
        assert_eq!(
            plan(&[wp("shop", "waypoint")], &existing),
            [
                Action::DeletePod {
                    namespace: "shop".into(),
                    pod: "waypoint-b".into(),
                    drain: None,
                },
                Action::CreateServiceAccount(k),
            ]
        );
    }

    #[test]
    fn a_users_service_account_is_used_and_a_users_service_blocks_the_waypoint() {
        let k = key("shop", "waypoint");
        let with_sa = Existing {
            service_accounts: BTreeMap::from([(k.clone(), false)]),
            ..Existing::default()
        };
        assert_eq!(
            plan(&[wp("shop", "waypoint")], &with_sa),
            [
                Action::CreateService(k.clone()),
                Action::CreatePod(k.clone())
            ]
        );
        let with_svc = Existing {
            services: BTreeMap::from([(k.clone(), None)]),
            ..Existing::default()
        };
        let actions = plan(&[wp("shop", "waypoint")], &with_svc);
        assert!(
            matches!(&actions[..], [Action::Blocked(b, why)] if b == &k && why.contains("was not made for the waypoint")),
            "{actions:?}"
        );
    }

    #[test]
    fn the_pod_runs_the_waypoint_as_its_gateway_outside_ztunnels_capture() {
        let state = StateDir::new("/s");
        let cluster = ClusterState::example();
        let spec = pod_spec(&state, &cluster, "shop", "waypoint", "n2", "/bin/waypoint");
        assert!(
            spec.name.starts_with("waypoint-") && spec.name.len() == 14,
            "{}",
            spec.name
        );
        assert_eq!(spec.service_account, "waypoint");
        assert_eq!(spec.node.as_deref(), Some("n2"));
        assert_eq!(spec.labels[GATEWAY_NAME_LABEL], "waypoint");
        assert_eq!(spec.labels["istio.io/dataplane-mode"], "none");
        assert_eq!(spec.labels["networking.istio.io/tunnel"], "http");
        assert_eq!(spec.command, ["/bin/waypoint"]);
        let env: BTreeMap<_, _> = spec.env.iter().cloned().collect();
        let v = |s: &str| EnvValue::Value(s.into());
        assert_eq!(env["POD_NAMESPACE"], v("shop"));
        assert_eq!(env["SERVICE_ACCOUNT"], v("waypoint"));
        assert_eq!(env["INSTANCE_IP"], EnvValue::PodIp);
        assert_eq!(env["XDS_ADDRESS"], v("https://10.250.0.1:15012"));
        assert_eq!(env["CA_TOKEN_FILE"], v("/s/nodes/n2/token"));
        assert_eq!(env["CA_ROOT_CA"], v("/s/istiod/root-cert.pem"));
        // A long Gateway name still makes a valid pod name.
        let long = "a".repeat(63);
        let spec = pod_spec(&state, &cluster, "shop", &long, "n1", "/bin/waypoint");
        assert!(spec.name.len() <= 63);
    }

    #[test]
    fn the_service_selects_the_waypoint_pods_on_15008_and_gets_a_cluster_ip_when_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ConfigDir::new(dir.path());
        config
            .apply(&service_yaml("shop", "waypoint"))
            .expect("stored");
        config
            .apply(&service_account_yaml("shop", "waypoint"))
            .expect("stored");
        let svc = config
            .object(Kind::Service, "shop", "waypoint")
            .expect("read")
            .expect("there");
        assert_eq!(
            svc["spec"]["selector"][GATEWAY_NAME_LABEL].as_str(),
            Some("waypoint")
        );
        assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(15008));
        let ip = svc["spec"]["clusterIP"].as_str().expect("allocated");
        assert!(ip.starts_with("10.96."), "{ip}");
        assert!(managed_for(&svc, "waypoint"));
        let found = existing(&config, &[]).expect("existing");
        assert_eq!(
            found.services.get(&key("shop", "waypoint")),
            Some(&Some("waypoint".to_string()))
        );
        assert_eq!(
            found.service_accounts.get(&key("shop", "waypoint")),
            Some(&true)
        );
        assert_eq!(
            plan(&[wp("shop", "waypoint")], &found),
            [Action::CreatePod(key("shop", "waypoint"))]
        );
    }
}
