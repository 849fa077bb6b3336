//! Which waypoint a workload or service uses.
//!
//! The label `istio.io/use-waypoint: <gateway>` on the object itself, or else on its
//! namespace, names a Gateway in the object's namespace (or in the namespace named by
//! `istio.io/use-waypoint-namespace` next to it); the value `none` (on the object) means no
//! waypoint even if the namespace has one. The Gateway must exist and have class
//! `istio-waypoint`, and its `istio.io/waypoint-for` label (default `service`) must accept the
//! kind of traffic: `service` for services, `workload` for workloads, `all` for both, `none`
//! for neither. The result addresses the waypoint's Service by host name,
//! `<gateway>.<namespace>.svc.<suffix>`, on the HBONE listener's port (15008).
//!
//! A waypoint's own pods and Service (label `gateway.networking.k8s.io/gateway-name`) never
//! use a waypoint, so a namespace-wide label does not loop a waypoint onto itself.

use std::collections::BTreeMap;

use mesh::model::{GatewayAddress, GatewayDestination, NamespacedHostname};

use super::{service_hostname, TranslateOptions, Warnings};
use crate::config_source::{ClusterState, ObjectKey};

pub use resources::waypoint::{
    DEFAULT_HBONE_PORT, GATEWAY_NAME_LABEL, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL,
    WAYPOINT_CLASS, WAYPOINT_FOR_LABEL,
};

/// Who asks for a waypoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// A Service: traffic addressed to its VIP or host name.
    Service,
    /// A workload: traffic addressed to the pod.
    Workload,
}

impl Attachment {
    fn accepted_by(self, waypoint_for: &str) -> bool {
        matches!(
            (self, waypoint_for),
            (_, "all") | (Attachment::Service, "service") | (Attachment::Workload, "workload")
        )
    }
}

/// The waypoint of an object in `namespace` with `labels`, described as `object` in
/// warnings.
pub(crate) fn waypoint_for(
    state: &ClusterState,
    options: &TranslateOptions,
    attachment: Attachment,
    object: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    warnings: &mut Warnings,
) -> Option<GatewayAddress> {
    if labels.contains_key(GATEWAY_NAME_LABEL) {
        return None;
    }
    let ns_labels = state.namespace_labels(namespace);
    let (source, source_labels) = if labels.contains_key(USE_WAYPOINT_LABEL) {
        (object.to_string(), labels)
    } else if ns_labels.contains_key(USE_WAYPOINT_LABEL) {
        (format!("Namespace {namespace}"), ns_labels)
    } else {
        return None;
    };
    let name = source_labels.get(USE_WAYPOINT_LABEL)?.as_str();
    if name.is_empty() || name == "none" {
        return None;
    }
    let gw_namespace = source_labels
        .get(USE_WAYPOINT_NAMESPACE_LABEL)
        .map_or(namespace, String::as_str);
    let Some(gateway) = state.gateways.get(&ObjectKey::new(gw_namespace, name)) else {
        warnings.add(
            source,
            format!("{USE_WAYPOINT_LABEL}={name}: no Gateway {gw_namespace}/{name}; no waypoint is used"),
        );
        return None;
    };
    if gateway.spec.gateway_class_name != WAYPOINT_CLASS {
        warnings.add(
            source,
            format!(
                "{USE_WAYPOINT_LABEL}={name}: Gateway {gw_namespace}/{name} has class {:?}, not {WAYPOINT_CLASS:?}; no waypoint is used",
                gateway.spec.gateway_class_name
            ),
        );
        return None;
    }
    let waypoint_for = super::labels(&gateway.metadata)
        .get(WAYPOINT_FOR_LABEL)
        .map_or("service", String::as_str);
    if !attachment.accepted_by(waypoint_for) {
        // Expected for namespace-wide labels (a service waypoint is not for pods); worth
        // saying when the object itself asked.
        if source == object {
            warnings.add(
                source,
                format!(
                    "{USE_WAYPOINT_LABEL}={name}: Gateway {gw_namespace}/{name} is {WAYPOINT_FOR_LABEL}={waypoint_for}, which excludes {} traffic; no waypoint is used",
                    match attachment {
                        Attachment::Service => "service",
                        Attachment::Workload => "workload",
                    }
                ),
            );
        }
        return None;
    }
    let port = gateway
        .spec
        .listeners
        .iter()
        .find(|l| l.protocol == "HBONE" && l.port != 0)
        .map_or(DEFAULT_HBONE_PORT, |l| l.port);
    Some(GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname {
            namespace: gw_namespace.to_string(),
            hostname: service_hostname(name, gw_namespace, options),
        }),
        hbone_mtls_port: port,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{run, warnings_about};
    use super::*;

    const WAYPOINTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/use-waypoint: ns-wp}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ns-wp, namespace: apps, labels: {istio.io/waypoint-for: all}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: svc-wp, namespace: apps}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shared, namespace: infra, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15009, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: apps}
spec: {gatewayClassName: istio}
"#;

    fn pod(name: &str, labels: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: apps, labels: {{{labels}}}}}\nspec: {{containers: []}}\nstatus: {{phase: Running, podIP: 10.0.0.{}}}\n",
            name.len()
        )
    }

    fn svc(name: &str, labels: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: apps, labels: {{{labels}}}}}\nspec: {{clusterIP: 10.96.0.{}}}\n",
            name.len()
        )
    }

    fn hostname(wp: &Option<GatewayAddress>) -> Option<(String, u16)> {
        wp.as_ref().map(|g| match &g.destination {
            GatewayDestination::Hostname(h) => (h.hostname.clone(), g.hbone_mtls_port),
            GatewayDestination::Address(a) => (a.ip.to_string(), g.hbone_mtls_port),
        })
    }

    #[test]
    fn workloads_take_their_own_label_else_the_namespace_label() {
        let yaml = [
            WAYPOINTS.to_string(),
            pod("inherits", "app: a"),
            pod("own", "istio.io/use-waypoint: svc-wp"),
            pod("optout", "istio.io/use-waypoint: none"),
            pod(
                "other-ns",
                "istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra",
            ),
            pod(
                "the-waypoint",
                "gateway.networking.k8s.io/gateway-name: ns-wp",
            ),
            pod("missing", "istio.io/use-waypoint: nope"),
            pod("wrong-class", "istio.io/use-waypoint: ingress"),
        ]
        .concat();
        let t = run(&yaml);
        let by_name = |n: &str| {
            t.workloads
                .iter()
                .find(|w| w.name == n)
                .map(|w| hostname(&w.waypoint))
                .expect("workload")
        };
        let ns_wp = Some(("ns-wp.apps.svc.cluster.local".to_string(), 15008));
        assert_eq!(by_name("inherits"), ns_wp);
        // svc-wp is for services only (the default): the pod that asked gets none, and a warning.
        assert_eq!(by_name("own"), None);
        assert_eq!(
            warnings_about(&t, "Pod apps/own"),
            ["istio.io/use-waypoint=svc-wp: Gateway apps/svc-wp is istio.io/waypoint-for=service, which excludes workload traffic; no waypoint is used"]
        );
        assert_eq!(by_name("optout"), None);
        assert_eq!(
            by_name("other-ns"),
            Some(("shared.infra.svc.cluster.local".to_string(), 15009))
        );
        assert_eq!(by_name("the-waypoint"), None);
        assert_eq!(by_name("missing"), None);
        assert_eq!(
            warnings_about(&t, "Pod apps/missing"),
            ["istio.io/use-waypoint=nope: no Gateway apps/nope; no waypoint is used"]
        );
        assert_eq!(by_name("wrong-class"), None);
        assert!(warnings_about(&t, "Pod apps/wrong-class")[0].contains("has class \"istio\""));
    }

    #[test]
    fn services_take_their_own_label_else_the_namespace_label() {
        let yaml = [
            WAYPOINTS.to_string(),
            svc("inherits", ""),
            svc("own", "istio.io/use-waypoint: svc-wp"),
            svc("optout", "istio.io/use-waypoint: none"),
            svc(
                "workload-only",
                "istio.io/use-waypoint: shared, istio.io/use-waypoint-namespace: infra",
            ),
            svc("ns-wp", "gateway.networking.k8s.io/gateway-name: ns-wp"),
        ]
        .concat();
        let t = run(&yaml);
        let by_name = |n: &str| {
            t.services
                .iter()
                .find(|s| s.name == n)
                .map(|s| hostname(&s.waypoint))
                .expect("service")
        };
        assert_eq!(
            by_name("inherits"),
            Some(("ns-wp.apps.svc.cluster.local".to_string(), 15008))
        );
        assert_eq!(
            by_name("own"),
            Some(("svc-wp.apps.svc.cluster.local".to_string(), 15008))
        );
        assert_eq!(by_name("optout"), None);
        assert_eq!(by_name("workload-only"), None);
        assert_eq!(warnings_about(&t, "Service apps/workload-only").len(), 1);
        assert_eq!(by_name("ns-wp"), None, "a waypoint's own service");
    }

    #[test]
    fn a_namespace_label_naming_a_missing_gateway_warns_once_about_the_namespace() {
        let t = run(
            &[
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps, labels: {istio.io/use-waypoint: gone}}\n".to_string(),
                pod("a", "x: y"),
                pod("bb", "x: y"),
            ]
            .concat(),
        );
        assert!(t.workloads.iter().all(|w| w.waypoint.is_none()));
        assert_eq!(
            t.warnings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["Namespace apps: istio.io/use-waypoint=gone: no Gateway apps/gone; no waypoint is used"]
        );
    }
}
