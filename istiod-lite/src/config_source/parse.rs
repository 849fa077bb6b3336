//! Reading one file's text into typed objects: sans-IO, so it is tested on strings.
//!
//! A file holds YAML documents separated by `---`. Each document is either empty (skipped), a
//! `kind: List` (its `items` are read one by one, as `kubectl get -o yaml` writes them), or
//! one object. Objects of the kinds in [`Kind`] are decoded into their types; other kinds are
//! ignored with a warning. Each document is read twice: first as a generic YAML value to
//! check the syntax and find `apiVersion`/`kind`, then straight from the text into its type,
//! so that an error names the field path and the line (`spec.rules[0].from[0].source: unknown
//! field `principal` ... at line 7 column 9`).
//!
//! A document is unusable (a problem) when: the YAML is broken (later documents of the file are
//! not read either); it is not a mapping; `apiVersion`, `kind` or `metadata.name` is missing or
//! not a string; a known kind comes with an API version we do not read; a field has the wrong
//! type or (for the Istio kinds) an unknown name; an AuthorizationPolicy fails
//! [`AuthorizationPolicy::validate`], a RequestAuthentication
//! [`RequestAuthentication::validate`]. Namespaced objects without a namespace get `default`.
//!
//! The routing kinds (HTTPRoute, GRPCRoute, VirtualService, DestinationRule) are judged per
//! object instead: one that fails to decode or its `validate()` is [`Refused`] (a warning naming
//! the field), and the snapshot keeps that object's last good version while the file's other
//! objects still apply.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

use super::{ConfigProblem, ObjectKey};
use crate::resources::{
    AuthorizationPolicy, DestinationRule, Gateway, GrpcRoute, HttpRoute, PeerAuthentication,
    RequestAuthentication, VirtualService, GATEWAY_API_GROUP, ISTIO_NETWORKING_GROUP,
    ISTIO_SECURITY_GROUP,
};

/// The kinds the control plane reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Namespace (cluster-scoped).
    Namespace,
    /// `v1` Pod.
    Pod,
    /// `v1` Service.
    Service,
    /// `v1` ServiceAccount.
    ServiceAccount,
    /// `security.istio.io/{v1,v1beta1}` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io/{v1,v1beta1}` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io/{v1,v1beta1}` RequestAuthentication.
    RequestAuthentication,
    /// `gateway.networking.k8s.io/{v1,v1beta1}` Gateway.
    Gateway,
    /// `gateway.networking.k8s.io/{v1,v1beta1}` HTTPRoute.
    HttpRoute,
    /// `gateway.networking.k8s.io/{v1,v1beta1}` GRPCRoute.
    GrpcRoute,
    /// `networking.istio.io/{v1,v1beta1,v1alpha3}` VirtualService.
    VirtualService,
    /// `networking.istio.io/{v1,v1beta1,v1alpha3}` DestinationRule.
    DestinationRule,
}

impl Kind {
    /// The kind of `kind` in API group `group`, if we read it.
    pub fn find(group: &str, kind: &str) -> Option<Kind> {
        Some(match (group, kind) {
            ("", "Namespace") => Kind::Namespace,
            ("", "Pod") => Kind::Pod,
            ("", "Service") => Kind::Service,
            ("", "ServiceAccount") => Kind::ServiceAccount,
            (ISTIO_SECURITY_GROUP, "AuthorizationPolicy") => Kind::AuthorizationPolicy,
            (ISTIO_SECURITY_GROUP, "PeerAuthentication") => Kind::PeerAuthentication,
            (ISTIO_SECURITY_GROUP, "RequestAuthentication") => Kind::RequestAuthentication,
            (GATEWAY_API_GROUP, "Gateway") => Kind::Gateway,
            (GATEWAY_API_GROUP, "HTTPRoute") => Kind::HttpRoute,
            (GATEWAY_API_GROUP, "GRPCRoute") => Kind::GrpcRoute,
            (ISTIO_NETWORKING_GROUP, "VirtualService") => Kind::VirtualService,
            (ISTIO_NETWORKING_GROUP, "DestinationRule") => Kind::DestinationRule,
            _ => return None,
        })
    }

    /// The `kind` field's value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
        }
    }

    /// Whether an invalid object of this kind is refused alone, keeping its last good version,
    /// instead of making the whole new snapshot unusable.
    pub fn keeps_last_good(self) -> bool {
        matches!(
            self,
            Kind::HttpRoute | Kind::GrpcRoute | Kind::VirtualService | Kind::DestinationRule
        )
    }

    /// The API versions read (schemas equal for what we use).
    fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::ServiceAccount => &["v1"],
            Kind::VirtualService | Kind::DestinationRule => &["v1", "v1beta1", "v1alpha3"],
            _ => &["v1", "v1beta1"],
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One object read from a file.
// Transient: built while reading, then moved into the snapshot's maps.
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

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
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
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::RequestAuthentication(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.metadata,
            Object::VirtualService(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::ServiceAccount(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::PeerAuthentication(o) => &mut o.metadata,
            Object::RequestAuthentication(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::GrpcRoute(o) => &mut o.metadata,
            Object::VirtualService(o) => &mut o.metadata,
            Object::DestinationRule(o) => &mut o.metadata,
        }
    }

    /// `(namespace, name)`; the namespace is empty for a Namespace.
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        ObjectKey {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// An object and where in its file it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// Zero-based document index.
    pub document: usize,
    /// Zero-based index in a `kind: List`'s items.
    pub item: Option<usize>,
    /// The object.
    pub object: Object,
}

/// What one file holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedFile {
    /// The usable objects, in file order.
    pub objects: Vec<Located>,
    /// Unusable documents.
    pub problems: Vec<ConfigProblem>,
    /// Ignored documents (unknown kinds).
    pub warnings: Vec<ConfigProblem>,
    /// Invalid objects of kinds that keep their last good version ([`Kind::keeps_last_good`]).
    pub refused: Vec<Refused>,
}

/// An invalid object that is refused alone: the snapshot keeps its last good version.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (`default` when none was given) and name.
    pub key: ObjectKey,
    /// Where it is and what is wrong.
    pub problem: ConfigProblem,
}

/// What pass one makes of a document.
enum Plan {
    Empty,
    Decode(Kind, ObjectKey),
    List(Vec<Value>),
    Unknown(String),
    Bad(String),
}

/// Reads every document of `text` (the contents of `file`, used in messages only).
pub fn parse_file(text: &str, file: &Path) -> ParsedFile {
    let mut out = ParsedFile::default();
    let note = |document, item, reason| ConfigProblem {
        file: file.to_path_buf(),
        document: Some(document),
        item,
        reason,
    };
    // Pass one: syntax and type headers.
    let mut plans = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            Ok(value) => plans.push(plan(&value, true)),
            Err(e) => {
                // The stream itself is broken: later documents cannot be trusted either.
                out.problems
                    .push(note(index, None, format!("not YAML: {e}")));
                break;
            }
        }
    }
    // Pass two: typed decoding, straight from the text for paths and line numbers.
    let documents = serde_yaml::Deserializer::from_str(text).enumerate();
    for ((index, document), planned) in documents.zip(plans) {
        match planned {
            Plan::Empty => {}
            Plan::Bad(reason) => out.problems.push(note(index, None, reason)),
            Plan::Unknown(what) => out.warnings.push(note(index, None, what)),
            Plan::Decode(kind, key) => match decode(kind, document).and_then(finish) {
                Ok(object) => out.objects.push(Located {
                    document: index,
                    item: None,
                    object,
                }),
                Err(reason) if kind.keeps_last_good() => out.refused.push(Refused {
                    kind,
                    key,
                    problem: note(index, None, reason),
                }),
                Err(reason) => out.problems.push(note(index, None, reason)),
            },
            Plan::List(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let mut refusable = None;
                    let result = match plan(&item, false) {
                        Plan::Empty => continue,
                        Plan::Decode(kind, key) => {
                            refusable = kind.keeps_last_good().then_some((kind, key));
                            decode(kind, item).and_then(finish)
                        }
                        Plan::Unknown(what) => {
                            out.warnings.push(note(index, Some(i), what));
                            continue;
                        }
                        Plan::Bad(reason) => Err(reason),
                        Plan::List(_) => continue, // `plan` refuses nested Lists
                    };
                    match result {
                        Ok(object) => out.objects.push(Located {
                            document: index,
                            item: Some(i),
                            object,
                        }),
                        Err(reason) => match refusable {
                            Some((kind, key)) => out.refused.push(Refused {
                                kind,
                                key,
                                problem: note(index, Some(i), reason),
                            }),
                            None => out.problems.push(note(index, Some(i), reason)),
                        },
                    }
                }
            }
        }
    }
    out
}

/// Classifies a document (or a List item) from its generic value.
fn plan(value: &Value, top_level: bool) -> Plan {
    let Value::Mapping(map) = value else {
        return if value.is_null() {
            Plan::Empty
        } else {
            Plan::Bad("expected a mapping with apiVersion, kind and metadata".into())
        };
    };
    let text = |field: &str| match map.get(field) {
        None | Some(Value::Null) => Err(format!("{field} is missing")),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(format!("{field} must be a non-empty string")),
    };
    let (api_version, kind) = match (text("apiVersion"), text("kind")) {
        (Ok(a), Ok(k)) => (a, k),
        (Err(e), _) | (_, Err(e)) => return Plan::Bad(e),
    };
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("", api_version.as_str()));
    if group.is_empty() && kind == "List" {
        if !top_level {
            return Plan::Bad("a List inside a List is not read".into());
        }
        return match map.get("items") {
            None | Some(Value::Null) => Plan::List(Vec::new()),
            Some(Value::Sequence(items)) => Plan::List(items.clone()),
            Some(_) => Plan::Bad("items of a List must be a sequence".into()),
        };
    }
    let Some(known) = Kind::find(group, &kind) else {
        return Plan::Unknown(format!("kind {kind} of {api_version} is not used; ignored"));
    };
    if !known.versions().contains(&version) {
        return Plan::Bad(format!(
            "apiVersion {api_version} is not read for {kind}; use {}",
            known
                .versions()
                .iter()
                .map(|v| if group.is_empty() {
                    v.to_string()
                } else {
                    format!("{group}/{v}")
                })
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    match map.get("metadata").and_then(|m| m.get("name")) {
        Some(Value::String(name)) if !name.is_empty() => {
            let namespace = match map.get("metadata").and_then(|m| m.get("namespace")) {
                Some(Value::String(ns)) if !ns.is_empty() && known.namespaced() => ns.clone(),
                _ if known.namespaced() => "default".to_string(),
                _ => String::new(),
            };
            Plan::Decode(known, ObjectKey::new(namespace, name.clone()))
        }
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Plan::Bad("metadata.name is missing".into())
        }
        Some(_) => Plan::Bad("metadata.name must be a string".into()),
    }
}

/// Decodes a document or item into the type of `kind`; errors name the field path.
fn decode<'de, D>(kind: Kind, d: D) -> Result<Object, String>
where
    D: Deserializer<'de, Error = serde_yaml::Error>,
{
    let object = match kind {
        Kind::Namespace => Namespace::deserialize(d).map(Object::Namespace),
        Kind::Pod => Pod::deserialize(d).map(Object::Pod),
        Kind::Service => Service::deserialize(d).map(Object::Service),
        Kind::ServiceAccount => ServiceAccount::deserialize(d).map(Object::ServiceAccount),
        Kind::AuthorizationPolicy => {
            AuthorizationPolicy::deserialize(d).map(Object::AuthorizationPolicy)
        }
        Kind::PeerAuthentication => {
            PeerAuthentication::deserialize(d).map(Object::PeerAuthentication)
        }
        Kind::RequestAuthentication => {
            RequestAuthentication::deserialize(d).map(Object::RequestAuthentication)
        }
        Kind::Gateway => Gateway::deserialize(d).map(Object::Gateway),
        Kind::HttpRoute => HttpRoute::deserialize(d).map(Object::HttpRoute),
        Kind::GrpcRoute => GrpcRoute::deserialize(d).map(Object::GrpcRoute),
        Kind::VirtualService => VirtualService::deserialize(d).map(Object::VirtualService),
        Kind::DestinationRule => DestinationRule::deserialize(d).map(Object::DestinationRule),
    };
    object.map_err(|e| format!("not a valid {kind}: {e}"))
}

/// Defaults the namespace and applies the checks beyond types.
fn finish(mut object: Object) -> Result<Object, String> {
    let kind = object.kind();
    let meta = object.metadata_mut();
    if kind.namespaced() {
        if meta.namespace.as_deref().unwrap_or_default().is_empty() {
            meta.namespace = Some("default".into());
        }
    } else {
        meta.namespace = None;
    }
    let checked = match &object {
        Object::AuthorizationPolicy(o) => o.validate().map_err(|e| e.to_string()),
        Object::RequestAuthentication(o) => o.validate().map_err(|e| e.to_string()),
        Object::HttpRoute(o) => o.validate().map_err(|e| e.to_string()),
        Object::GrpcRoute(o) => o.validate().map_err(|e| e.to_string()),
        Object::VirtualService(o) => o.validate().map_err(|e| e.to_string()),
        Object::DestinationRule(o) => o.validate().map_err(|e| e.to_string()),
        _ => Ok(()),
    };
    checked.map_err(|e| format!("invalid {kind}: {e}"))?;
    Ok(object)
}

/// The placeholder file name of text that did not come from a file.
pub(crate) fn inline_file() -> PathBuf {
    PathBuf::from("<inline>")
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
