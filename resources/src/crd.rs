//! The CustomResourceDefinitions of the kinds in this crate, generated from their types (so
//! that the schema Kubernetes checks and the one the mesh decodes cannot drift apart), as
//! `manifests/crds/` ships them.
//!
//! kube derives each schema from the serde types; [`structural`] then brings it into the form
//! the API server demands of a CRD (a structural schema): no `additionalProperties: false` beside
//! `properties` (Kubernetes prunes unknown fields itself), no `nullable: false` noise, and every
//! node typed or marked `x-kubernetes-preserve-unknown-fields`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use kube::CustomResourceExt;

use crate::{
    AuthorizationPolicy, DestinationRule, Gateway, GatewayClass, GrpcRoute, HttpRoute, Kind,
    PeerAuthentication, RequestAuthentication, VirtualService,
};

/// Every CRD the mesh reads, in a stable order (by group, then kind).
pub fn all() -> Vec<CustomResourceDefinition> {
    [
        Gateway::crd(),
        GatewayClass::crd(),
        GrpcRoute::crd(),
        HttpRoute::crd(),
        DestinationRule::crd(),
        VirtualService::crd(),
        AuthorizationPolicy::crd(),
        PeerAuthentication::crd(),
        RequestAuthentication::crd(),
    ]
    .into_iter()
    .map(structural)
    .collect()
}

/// The file name of `crd` in `manifests/crds/`: `<group>_<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// Rewrites the schemas of `crd` into structural form (see the module doc), lets an object
/// omit `spec` (Istio's allow-nothing policy), and serves every version the mesh reads (the
/// schemas are the same for what it reads; `v1` is stored), so that users' `v1beta1` YAML is
/// taken as Istio's own CRDs take it.
pub fn structural(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*schema).unwrap_or_default();
            clean(&mut value);
            if let Some(map) = value.as_object_mut() {
                map.remove("required");
            }
            if let Ok(cleaned) = serde_json::from_value(value) {
                *schema = cleaned;
            }
        }
    }
    let versions: &[&str] = match Kind::find(&crd.spec.group, &crd.spec.names.kind) {
        Some(kind) => kind.versions(),
        None => &["v1", "v1beta1"],
    };
    if let Some(v1) = crd.spec.versions.first().cloned() {
        crd.spec.versions = versions
            .iter()
            .map(|name| CustomResourceDefinitionVersion {
                name: (*name).to_string(),
                storage: *name == "v1",
                ..v1.clone()
            })
            .collect();
    }
    crd
}

fn clean(node: &mut serde_json::Value) {
    match node {
        serde_json::Value::Object(map) => {
            if map.contains_key("properties")
                && map.get("additionalProperties") == Some(&serde_json::Value::Bool(false))
            {
                map.remove("additionalProperties");
            }
            if map.get("nullable") == Some(&serde_json::Value::Bool(false)) {
                map.remove("nullable");
            }
            for child in map.values_mut() {
                clean(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
        _ => {}
    }
}

/// What in `schema` Kubernetes would refuse in a CRD's structural schema, each as a JSON path.
pub fn structural_errors(schema: &serde_json::Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, "$", &mut errors);
    errors
}

fn check(node: &serde_json::Value, at: &str, errors: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        return;
    };
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&true.into());
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&true.into());
    let combinator = ["anyOf", "oneOf", "allOf", "not"]
        .iter()
        .any(|k| map.contains_key(*k));
    if !map.contains_key("type") && !preserve && !int_or_string && !combinator {
        errors.push(format!("{at}: no type"));
    }
    for forbidden in ["$ref", "definitions", "$defs", "$schema"] {
        if map.contains_key(forbidden) {
            errors.push(format!("{at}: {forbidden}"));
        }
    }
    if map.contains_key("properties") && map.contains_key("additionalProperties") {
        errors.push(format!("{at}: properties and additionalProperties"));
    }
    if let Some(props) = map.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            check(child, &format!("{at}.{name}"), errors);
        }
    }
    if let Some(items) = map.get("items") {
        check(items, &format!("{at}[]"), errors);
    }
    if let Some(extra) = map.get("additionalProperties") {
        check(extra, &format!("{at}.*"), errors);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_schema_is_structural() {
        for crd in all() {
            for version in &crd.spec.versions {
                let schema = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .expect("a schema");
                let value = serde_json::to_value(schema).expect("json");
                let errors = structural_errors(&value);
                assert!(
                    errors.is_empty(),
                    "{} {}: {errors:#?}",
                    crd.spec.names.kind,
                    version.name
                );
            }
        }
    }

    #[test]
    fn crd_names_follow_the_upstream_ones() {
        let names: Vec<String> = all().iter().map(file_name).collect();
        assert_eq!(
            names,
            [
                "gateway.networking.k8s.io_gateways.yaml",
                "gateway.networking.k8s.io_gatewayclasses.yaml",
                "gateway.networking.k8s.io_grpcroutes.yaml",
                "gateway.networking.k8s.io_httproutes.yaml",
                "networking.istio.io_destinationrules.yaml",
                "networking.istio.io_virtualservices.yaml",
                "security.istio.io_authorizationpolicies.yaml",
                "security.istio.io_peerauthentications.yaml",
                "security.istio.io_requestauthentications.yaml",
            ]
        );
        let crds = all();
        assert_eq!(
            crds[3].metadata.name.as_deref(),
            Some("httproutes.gateway.networking.k8s.io")
        );
        let versions: Vec<(&str, bool)> = crds[5]
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.storage))
            .collect();
        assert_eq!(
            versions,
            [("v1", true), ("v1beta1", false), ("v1alpha3", false)],
            "VirtualService serves Istio's versions, v1 stored"
        );
    }
}
