//! Schemas for the fields the mesh keeps without reading them ([`serde_json::Value`]): in a
//! CRD they must say "anything goes here" in the form Kubernetes' structural schemas allow.

use schemars::{json_schema, Schema, SchemaGenerator};

/// Any value, kept as it is (`x-kubernetes-preserve-unknown-fields`).
pub fn opaque(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// A list of any values, kept as they are.
pub fn opaque_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "x-kubernetes-preserve-unknown-fields": true }
    })
}
