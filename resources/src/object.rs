//! One object of a kind the mesh reads, from a YAML document (or a JSON object): its header
//! first ([`classify`]: `apiVersion`, `kind`, `metadata.name`/`namespace`), then its typed form
//! ([`read`]: decoded into its kind's type, namespace defaulted, validated), with errors that
//! name the field by its path. The control plane's directory source and `meshctl apply` read
//! documents with these; the watch source gets typed objects from the API server.

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::decode::exact;
use crate::{
    from_value, AuthorizationPolicy, DestinationRule, Gateway, GrpcRoute, HttpRoute, Kind,
    PeerAuthentication, RequestAuthentication, VirtualService,
};

/// What a document is, from its header.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// An empty document (`---` with nothing after it).
    Empty,
    /// An object of a kind the mesh reads.
    Object(Header),
    /// A `v1` `List`: its items, each a document of its own.
    List(Vec<Value>),
    /// A kind the mesh does not read.
    Unknown {
        /// The `kind`.
        kind: String,
        /// The `apiVersion`.
        api_version: String,
    },
}

/// Which object a document describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (`default` when absent); `None` for a cluster-scoped kind.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

/// Reads the header of `value`; the error says what is missing or malformed.
pub fn classify(value: &Value) -> Result<Document, String> {
    if value.is_null() {
        return Ok(Document::Empty);
    }
    let Some(map) = value.as_object() else {
        return Err("expected a mapping with apiVersion, kind and metadata".into());
    };
    let text = |field: &str| match map.get(field) {
        None | Some(Value::Null) => Err(format!("{field} is missing")),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        Some(_) => Err(format!("{field} must be a non-empty string")),
    };
    let (api_version, kind_name) = (text("apiVersion")?, text("kind")?);
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if group.is_empty() && kind_name == "List" {
        return match map.get("items") {
            None | Some(Value::Null) => Ok(Document::List(Vec::new())),
            Some(Value::Array(items)) => Ok(Document::List(items.clone())),
            Some(_) => Err("items of a List must be a sequence".into()),
        };
    }
    let Some(kind) = Kind::find(group, kind_name) else {
        return Ok(Document::Unknown {
            kind: kind_name.to_string(),
            api_version: api_version.to_string(),
        });
    };
    if !kind.versions().contains(&version) {
        return Err(format!(
            "apiVersion {api_version} is not read for {kind_name}; use {}",
            kind.api_versions().join(" or ")
        ));
    }
    let meta = match map.get("metadata") {
        Some(Value::Object(meta)) => meta,
        None | Some(Value::Null) => return Err("metadata.name is missing".into()),
        Some(_) => return Err("metadata must be a mapping".into()),
    };
    let name = match meta.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err("metadata.name is missing".into())
        }
        Some(_) => return Err("metadata.name must be a string".into()),
    };
    let namespace = match meta.get("namespace") {
        _ if !kind.namespaced() => None,
        None | Some(Value::Null) => Some("default".to_string()),
        Some(Value::String(ns)) if ns.is_empty() => Some("default".to_string()),
        Some(Value::String(ns)) => Some(ns.clone()),
        Some(_) => return Err("metadata.namespace must be a string".into()),
    };
    Ok(Document::Object(Header {
        kind,
        namespace,
        name,
    }))
}

/// An object of a kind the mesh reads, typed.
// Transient: built while reading, then moved into the reader's maps.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A Namespace.
    Namespace(Namespace),
    /// A Pod.
    Pod(Pod),
    /// A Service.
    Service(Service),
    /// A ServiceAccount.
    ServiceAccount(ServiceAccount),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// A RequestAuthentication.
    RequestAuthentication(RequestAuthentication),
    /// A Gateway.
    Gateway(Gateway),
    /// An HTTPRoute.
    HttpRoute(HttpRoute),
    /// A GRPCRoute.
    GrpcRoute(GrpcRoute),
    /// A VirtualService.
    VirtualService(VirtualService),
    /// A DestinationRule.
    DestinationRule(DestinationRule),
}

/// Applies `$f` to the typed object inside any variant.
macro_rules! each {
    ($object:expr, $o:ident => $f:expr) => {
        match $object {
            Object::Namespace($o) => $f,
            Object::Pod($o) => $f,
            Object::Service($o) => $f,
            Object::ServiceAccount($o) => $f,
            Object::EndpointSlice($o) => $f,
            Object::AuthorizationPolicy($o) => $f,
            Object::PeerAuthentication($o) => $f,
            Object::RequestAuthentication($o) => $f,
            Object::Gateway($o) => $f,
            Object::HttpRoute($o) => $f,
            Object::GrpcRoute($o) => $f,
            Object::VirtualService($o) => $f,
            Object::DestinationRule($o) => $f,
        }
    };
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::RequestAuthentication(_) => Kind::RequestAuthentication,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        each!(self, o => &o.metadata)
    }

    /// The object's metadata, to change.
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => &mut o.metadata)
    }

    /// The checks beyond types, as Istio's and Gateway API's admission webhooks make them;
    /// the error names the field by its path.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Object::AuthorizationPolicy(o) => o.validate(),
            Object::RequestAuthentication(o) => o.validate().map_err(|e| e.to_string()),
            Object::HttpRoute(o) => o.validate().map_err(|e| e.to_string()),
            Object::GrpcRoute(o) => o.validate().map_err(|e| e.to_string()),
            Object::VirtualService(o) => o.validate().map_err(|e| e.to_string()),
            Object::DestinationRule(o) => o.validate().map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }
}

/// Decodes `value` as an object of `kind`; the error names the field path.
pub fn decode(kind: Kind, value: Value) -> Result<Object, String> {
    let object = match kind {
        Kind::Namespace => exact(value).map(Object::Namespace),
        Kind::Pod => exact(value).map(Object::Pod),
        Kind::Service => exact(value).map(Object::Service),
        Kind::ServiceAccount => exact(value).map(Object::ServiceAccount),
        Kind::EndpointSlice => exact(value).map(Object::EndpointSlice),
        Kind::AuthorizationPolicy => from_value(value).map(Object::AuthorizationPolicy),
        Kind::PeerAuthentication => from_value(value).map(Object::PeerAuthentication),
        Kind::RequestAuthentication => from_value(value).map(Object::RequestAuthentication),
        Kind::Gateway => from_value(value).map(Object::Gateway),
        Kind::HttpRoute => from_value(value).map(Object::HttpRoute),
        Kind::GrpcRoute => from_value(value).map(Object::GrpcRoute),
        Kind::VirtualService => from_value(value).map(Object::VirtualService),
        Kind::DestinationRule => from_value(value).map(Object::DestinationRule),
    };
    object.map_err(|e| format!("not a valid {kind}: {e}"))
}

/// Decodes, defaults the namespace (`default`; none for a cluster-scoped kind) and validates.
pub fn read(kind: Kind, value: Value) -> Result<Object, String> {
    let mut object = decode(kind, value)?;
    let meta = object.metadata_mut();
    if kind.namespaced() {
        if meta.namespace.as_deref().unwrap_or_default().is_empty() {
            meta.namespace = Some("default".into());
        }
    } else {
        meta.namespace = None;
    }
    object
        .validate()
        .map_err(|e| format!("invalid {kind}: {e}"))?;
    Ok(object)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Value {
        crate::yaml_value(yaml).unwrap()
    }

    #[test]
    fn headers_name_the_object_and_default_the_namespace() {
        let d = classify(&doc(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: a}",
        ))
        .unwrap();
        assert_eq!(
            d,
            Document::Object(Header {
                kind: Kind::AuthorizationPolicy,
                namespace: Some("default".into()),
                name: "a".into()
            })
        );
        let ns = classify(&doc(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, namespace: x}",
        ))
        .unwrap();
        assert!(matches!(
            ns,
            Document::Object(Header {
                namespace: None,
                ..
            })
        ));
        assert!(matches!(
            classify(&doc("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}")).unwrap(),
            Document::Unknown { .. }
        ));
        assert!(matches!(
            classify(&doc("apiVersion: v1\nkind: List\nitems: [{}, {}]")).unwrap(),
            Document::List(items) if items.len() == 2
        ));
        assert_eq!(classify(&Value::Null).unwrap(), Document::Empty);
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let err = |yaml: &str| classify(&doc(yaml)).unwrap_err();
        assert_eq!(
            err("kind: Pod\nmetadata: {name: a}"),
            "apiVersion is missing"
        );
        assert_eq!(
            err("apiVersion: v2\nkind: Pod\nmetadata: {name: a}"),
            "apiVersion v2 is not read for Pod; use v1"
        );
        assert_eq!(
            err("apiVersion: v1\nkind: Pod\nmetadata: {}"),
            "metadata.name is missing"
        );
        assert_eq!(
            err("[1]"),
            "expected a mapping with apiVersion, kind and metadata"
        );
    }

    #[test]
    fn read_decodes_defaults_and_validates_naming_the_field() {
        let ok = read(
            Kind::AuthorizationPolicy,
            doc("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}"),
        )
        .unwrap();
        assert_eq!(ok.metadata().namespace.as_deref(), Some("default"));
        let pod = read(
            Kind::Pod,
            doc("apiVersion: v1\nkind: Pod\nmetadata: {name: p}"),
        )
        .unwrap();
        assert!(matches!(pod, Object::Pod(p) if p.spec.is_none()));
        let typo = read(
            Kind::AuthorizationPolicy,
            doc("metadata: {name: a}\nspec: {rules: [{form: []}]}"),
        )
        .unwrap_err();
        assert!(
            typo.starts_with("not a valid AuthorizationPolicy: spec.rules[0].form: unknown field"),
            "{typo}"
        );
        let invalid = read(
            Kind::AuthorizationPolicy,
            doc("metadata: {name: a}\nspec: {rules: [{from: [{source: {ipBlocks: [nope]}}]}]}"),
        )
        .unwrap_err();
        assert!(
            invalid.starts_with(
                "invalid AuthorizationPolicy: spec.rules[0].from[0].source.ipBlocks[0]"
            ),
            "{invalid}"
        );
    }
}
