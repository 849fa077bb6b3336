//! `security.istio.io/v1` PeerAuthentication: whether workloads accept plaintext.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::{null_as_default, WorkloadSelector};

/// Which workloads a PeerAuthentication applies to and what it requires.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, CustomResource, JsonSchema,
)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    namespaced,
    status = "crate::ObjectStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "An Istio PeerAuthentication."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Pods it applies to; absent: the namespace (the mesh, in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The mode for all ports; inherited from the parent scope when absent or UNSET.
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Per-port overrides, keyed by the workload's port number.
    #[serde(
        default,
        deserialize_with = "port_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub port_level_mtls: BTreeMap<u16, MutualTls>,
}

/// A mutual TLS setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// The mode.
    #[serde(default, deserialize_with = "null_as_default")]
    pub mode: MtlsMode,
}

/// Whether plaintext is accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope (PERMISSIVE at the top).
    #[default]
    Unset,
    /// Plaintext accepted, mutual TLS not used.
    Disable,
    /// Both plaintext and mutual TLS accepted.
    Permissive,
    /// Only mutual TLS accepted.
    Strict,
}

impl PeerAuthentication {
    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The object's namespace (the config source fills in `default` when absent).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The top-level mode (UNSET when absent).
    pub fn mode(&self) -> MtlsMode {
        self.spec.mtls.map(|m| m.mode).unwrap_or_default()
    }
}

/// `portLevelMtls` keys are port numbers (1-65535), written as YAML integers or (JSON-style)
/// strings.
fn port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, MutualTls>, D::Error> {
    let map: Option<BTreeMap<PortKey, MutualTls>> = Option::deserialize(d)?;
    Ok(map
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.0, v))
        .collect())
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PortKey(u16);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number (1-65535)")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortKey(p)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
                }
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                match v.parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_port_level_overrides() {
        let pa: PeerAuthentication = crate::from_yaml(
            "metadata: {name: p}\nspec:\n  selector: {matchLabels: {app: a}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n    \"9090\": {mode: PERMISSIVE}\n",
        )
        .expect("parses");
        assert_eq!(pa.mode(), MtlsMode::Strict);
        assert_eq!(pa.namespace(), "default");
        assert_eq!(
            pa.spec.port_level_mtls.get(&8080).map(|m| m.mode),
            Some(MtlsMode::Disable)
        );
        assert_eq!(
            pa.spec.port_level_mtls.get(&9090).map(|m| m.mode),
            Some(MtlsMode::Permissive)
        );
        let unset: PeerAuthentication = crate::from_yaml("spec: {}").expect("parses");
        assert_eq!(unset.mode(), MtlsMode::Unset);
    }

    #[test]
    fn refuses_bad_modes_and_ports() {
        for bad in [
            "spec: {mtls: {mode: SOMETIMES}}",
            "spec: {portLevelMtls: {70000: {mode: STRICT}}}",
            "spec: {portLevelMtls: {0: {mode: STRICT}}}",
            "spec: {portLevelMtls: {http: {mode: STRICT}}}",
            "spec: {mtls: {mode: STRICT, extra: 1}}",
        ] {
            assert!(
                crate::from_yaml::<PeerAuthentication>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
