//! Waypoint Gateways (pure): the Gateway `waypoint apply` writes, and which stored Gateways
//! are waypoints. The names and labels are those istiod-lite reads
//! (`istiod-lite/src/translate/waypoint.rs`) and Istio users know.

use std::fmt;

use clap::ValueEnum;
use serde_json::Value;

pub use resources::waypoint::{
    GATEWAY_NAME_LABEL, MANAGED_LABEL, MANAGED_VALUE, USE_WAYPOINT_LABEL, WAYPOINT_CLASS,
    WAYPOINT_FOR_LABEL,
};
/// The HBONE port of a waypoint.
pub const HBONE_PORT: u16 = 15008;
/// The waypoint's readiness port (`/healthz/ready`).
pub const READINESS_PORT: u16 = 15021;

/// Which traffic a waypoint handles (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrafficType {
    /// Traffic addressed to a Service (the default).
    Service,
    /// Traffic addressed to a pod.
    Workload,
    /// Both.
    All,
    /// Neither (the waypoint is deployed but used by nothing).
    None,
}

impl TrafficType {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Service => "service",
            TrafficType::Workload => "workload",
            TrafficType::All => "all",
            TrafficType::None => "none",
        }
    }
}

impl fmt::Display for TrafficType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Gateway of waypoint `namespace/name`, as `waypoint apply` stores it.
pub fn render(namespace: &str, name: &str, traffic: TrafficType) -> Value {
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    {WAYPOINT_FOR_LABEL}: {traffic}
spec:
  gatewayClassName: {WAYPOINT_CLASS}
  listeners:
  - name: mesh
    port: {HBONE_PORT}
    protocol: HBONE
"
    );
    // Names were checked by the caller; a YAML error here is a bug, and the test says so.
    resources::yaml_parse(&yaml).unwrap_or(Value::Null)
}

/// A waypoint Gateway found in the config source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Waypoint {
    /// Namespace.
    pub namespace: String,
    /// Name (also its service account's, its Service's and its pods' label).
    pub name: String,
    /// `istio.io/waypoint-for`, as written (`service` when absent).
    pub traffic: String,
}

/// The Gateway `namespace/name` as a waypoint, if it has class `istio-waypoint`.
pub fn as_waypoint(namespace: &str, name: &str, gateway: &Value) -> Option<Waypoint> {
    let class = gateway
        .get("spec")
        .and_then(|s| s.get("gatewayClassName"))
        .and_then(Value::as_str);
    if class != Some(WAYPOINT_CLASS) {
        return None;
    }
    let traffic = gateway
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.get(WAYPOINT_FOR_LABEL))
        .and_then(Value::as_str)
        .unwrap_or("service");
    Some(Waypoint {
        namespace: namespace.to_string(),
        name: name.to_string(),
        traffic: traffic.to_string(),
    })
}

/// Whether an object's labels say the deployer made it for Gateway `name`.
pub fn managed_for(object: &Value, name: &str) -> bool {
    let labels = object.get("metadata").and_then(|m| m.get("labels"));
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    label(MANAGED_LABEL) == Some(MANAGED_VALUE) && label(GATEWAY_NAME_LABEL) == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_an_istio_waypoint_with_one_hbone_listener_and_its_traffic_label() {
        let gw = render("shop", "waypoint", TrafficType::Workload);
        let text = serde_saphyr::to_string(&gw).expect("yaml");
        assert_eq!(
            text,
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  labels:
    istio.io/waypoint-for: workload
  name: waypoint
  namespace: shop
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
"
        );
        assert_eq!(
            as_waypoint("shop", "waypoint", &gw),
            Some(Waypoint {
                namespace: "shop".into(),
                name: "waypoint".into(),
                traffic: "workload".into()
            })
        );
    }

    #[test]
    fn only_istio_waypoint_gateways_are_waypoints_and_service_is_the_default_traffic() {
        let other: Value = resources::yaml_parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: in}\nspec: {gatewayClassName: istio}\n",
        )
        .expect("yaml");
        assert_eq!(as_waypoint("a", "in", &other), None);
        let unlabelled: Value = resources::yaml_parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp}\nspec: {gatewayClassName: istio-waypoint}\n",
        )
        .expect("yaml");
        assert_eq!(
            as_waypoint("a", "wp", &unlabelled).map(|w| w.traffic),
            Some("service".to_string())
        );
    }

    #[test]
    fn managed_objects_carry_both_labels() {
        let mine: Value = resources::yaml_parse(&format!(
            "metadata: {{labels: {{{GATEWAY_NAME_LABEL}: wp, {MANAGED_LABEL}: {MANAGED_VALUE}}}}}"
        ))
        .expect("yaml");
        assert!(managed_for(&mine, "wp"));
        assert!(!managed_for(&mine, "other"));
        let users: Value = resources::yaml_parse(&format!(
            "metadata: {{labels: {{{GATEWAY_NAME_LABEL}: wp}}}}"
        ))
        .expect("yaml");
        assert!(!managed_for(&users, "wp"));
    }
}
