//! Gateway API `gateway.networking.k8s.io/v1` Gateway, typed where translation reads it (a
//! waypoint is a Gateway of class `istio-waypoint`) and loose elsewhere, and the
//! `ParentReference` routes attach with.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::null_as_default;

/// What a Gateway is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    plural = "gateways",
    namespaced,
    status = "crate::ObjectStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "A Gateway API Gateway (a waypoint when its class is `istio-waypoint`)."
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The class, e.g. `istio-waypoint`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default, deserialize_with = "null_as_default")]
    pub listeners: Vec<GatewayListener>,
    /// Requested addresses (kept, not read).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(schema_with = "crate::schema::opaque_list")]
    pub addresses: Vec<serde_json::Value>,
    /// Infrastructure settings (kept, not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub infrastructure: Option<serde_json::Value>,
}

/// What a GatewayClass is: the controller that implements Gateways of the class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GatewayClass",
    plural = "gatewayclasses",
    status = "crate::ObjectStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "A Gateway API GatewayClass (cluster-scoped); `istio-waypoint` is the waypoints' class."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayClassSpec {
    /// The controller, e.g. `istio.io/mesh-controller`.
    pub controller_name: String,
    /// Controller-specific parameters (kept, not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub parameters_ref: Option<serde_json::Value>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One listener of a Gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayListener {
    /// Listener name, e.g. `mesh`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Host name the listener serves, if restricted.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Port, e.g. 15008.
    #[serde(default)]
    pub port: u16,
    /// Protocol, e.g. `HBONE`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub protocol: String,
    /// TLS settings (kept, not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub tls: Option<serde_json::Value>,
    /// Which routes may attach (kept, not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub allowed_routes: Option<serde_json::Value>,
}

/// A route's parent: a Gateway, or a Service for mesh (waypoint) routing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// API group; `gateway.networking.k8s.io` when absent.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind; `Gateway` when absent.
    #[serde(default)]
    pub kind: Option<String>,
    /// Namespace; the route's own when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name of the parent.
    pub name: String,
    /// Listener (of a Gateway) or port name, if restricted.
    #[serde(default)]
    pub section_name: Option<String>,
    /// Port, if restricted.
    #[serde(default)]
    pub port: Option<u16>,
}

impl Gateway {
    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The object's namespace (the config source fills in `default` when absent).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_waypoint_keeping_unread_parts() {
        let gw: Gateway = crate::from_yaml(
            r#"
metadata: {name: waypoint, namespace: apps, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status: {addresses: [{value: 10.96.0.9}]}
"#,
        )
        .expect("gateway");
        assert_eq!(gw.spec.gateway_class_name, "istio-waypoint");
        assert_eq!(gw.spec.listeners[0].port, 15008);
        assert_eq!(gw.name(), "waypoint");
        assert!(gw.status.is_some());

        assert!(crate::from_yaml::<Gateway>("spec: {listeners: [{port: 99999}]}").is_err());
    }
}
