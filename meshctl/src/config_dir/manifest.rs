//! Reading `apply`/`delete` input: YAML documents → checked objects, named and normalized.
//!
//! Each document is read twice, as istiod-lite reads it: first as a generic value for the
//! syntax and the header (`apiVersion`, `kind`, `metadata.name`/`namespace`), then straight
//! from the text into a typed form of its kind, so an error names the field path and line.
//! The typed form only checks; what is stored is the document itself, with its namespace
//! filled in (`default` when absent) — istiod-lite reads it again anyway.
//!
//! Every problem of every document is collected and reported together; one problem refuses
//! the whole input.

use std::fmt::Write as _;

use anyhow::bail;
use k8s_openapi::api::core::v1 as core;
use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

use super::security;

/// API group of the Gateway API kinds.
const GATEWAY_GROUP: &str = resources::GATEWAY_API_GROUP;
/// API group of Istio's networking kinds.
const NETWORKING_GROUP: &str = resources::ISTIO_NETWORKING_GROUP;

/// The kinds the local cluster stores (those istiod-lite reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    Gateway,
    HttpRoute,
    GrpcRoute,
    VirtualService,
    DestinationRule,
}

/// Every kind, for lookups and the "supported kinds" message.
const KINDS: [Kind; 12] = [
    Kind::Namespace,
    Kind::Pod,
    Kind::Service,
    Kind::ServiceAccount,
    Kind::AuthorizationPolicy,
    Kind::PeerAuthentication,
    Kind::RequestAuthentication,
    Kind::Gateway,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::VirtualService,
    Kind::DestinationRule,
];

impl Kind {
    fn name(self) -> &'static str {
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

    fn group(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::ServiceAccount => "",
            Kind::AuthorizationPolicy | Kind::PeerAuthentication | Kind::RequestAuthentication => {
                security::GROUP
            }
            Kind::Gateway | Kind::HttpRoute | Kind::GrpcRoute => GATEWAY_GROUP,
            Kind::VirtualService | Kind::DestinationRule => NETWORKING_GROUP,
        }
    }

    fn versions(self) -> &'static [&'static str] {
        match self.group() {
            "" => &["v1"],
            NETWORKING_GROUP => &["v1", "v1beta1", "v1alpha3"],
            _ => &["v1", "v1beta1"],
        }
    }

    fn find(group: &str, kind: &str) -> Option<Kind> {
        KINDS
            .into_iter()
            .find(|k| k.group() == group && k.name() == kind)
    }

    /// `<kind>` or `<kind>.<group>`, lower case, as kubectl names resources.
    pub(super) fn resource(self) -> String {
        let kind = self.name().to_ascii_lowercase();
        match self.group() {
            "" => kind,
            group => format!("{kind}.{group}"),
        }
    }

    /// Namespaces, Pods and Services become DNS names (host names, SPIFFE ids) and must be
    /// labels; other objects may use dots.
    fn name_rule(self) -> NameRule {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service => NameRule::Label,
            _ => NameRule::Subdomain,
        }
    }
}

/// One object of the input.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Object {
    pub(super) kind: Kind,
    /// `None` for a Namespace (cluster-scoped).
    pub(super) namespace: Option<String>,
    pub(super) name: String,
    /// The document, its namespace filled in (and removed from a Namespace).
    pub(super) value: Value,
}

impl Object {
    /// kubectl-style: `authorizationpolicy.security.istio.io/demo/allow-same`, `namespace/demo`.
    pub(super) fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind.resource(), self.name),
            None => format!("{}/{}", self.kind.resource(), self.name),
        }
    }
}

/// The checked objects of an input, in input order, and what to warn about.
#[derive(Debug)]
pub(super) struct Manifest {
    pub(super) objects: Vec<Object>,
    /// `<object>: <what ztunnel will do differently from what the object says>`.
    pub(super) warnings: Vec<String>,
}

/// Reads and checks every document of `text` for `apply`.
pub(super) fn parse(text: &str) -> anyhow::Result<Manifest> {
    let values = documents(text)?;
    let total = values.len();
    let mut problems = Vec::new();
    let mut manifest = Manifest {
        objects: Vec::new(),
        warnings: Vec::new(),
    };
    let typed = serde_yaml::Deserializer::from_str(text);
    for ((index, value), document) in values.iter().enumerate().zip(typed) {
        let at = format!("document {} of {total}", index + 1);
        match header(value) {
            Ok(None) => {}
            Err(reason) => problems.push(format!("{at}: {reason}")),
            Ok(Some(object)) => match check_contents(object.kind, document) {
                Ok(warnings) => {
                    let id = object.id();
                    manifest
                        .warnings
                        .extend(warnings.into_iter().map(|w| format!("{id}: {w}")));
                    manifest.objects.push(object);
                }
                Err(reason) => problems.push(format!("{at} ({}): {reason}", object.id())),
            },
        }
    }
    refuse(problems, "applied")?;
    if manifest.objects.is_empty() {
        bail!("no objects in the input");
    }
    Ok(manifest)
}

/// Reads only the headers of the documents of `text`, for `delete`.
pub(super) fn parse_names(text: &str) -> anyhow::Result<Vec<Object>> {
    let values = documents(text)?;
    let total = values.len();
    let mut problems = Vec::new();
    let mut objects = Vec::new();
    for (index, value) in values.iter().enumerate() {
        match header(value) {
            Ok(None) => {}
            Ok(Some(object)) => objects.push(object),
            Err(reason) => problems.push(format!("document {} of {total}: {reason}", index + 1)),
        }
    }
    refuse(problems, "deleted")?;
    if objects.is_empty() {
        bail!("no objects in the input");
    }
    Ok(objects)
}

fn refuse(problems: Vec<String>, done: &str) -> anyhow::Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "{} unusable document(s); nothing was {done}:",
        problems.len()
    );
    for p in problems {
        let _ = write!(message, "\n  {p}");
    }
    bail!(message)
}

/// Pass one: every document as a generic value. Broken syntax stops the reading, since the
/// documents after it cannot be told apart.
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut values = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            Ok(value) => values.push(value),
            Err(e) => bail!("document {}: not YAML: {e}; nothing was done", index + 1),
        }
    }
    Ok(values)
}

/// The object a document describes (`None` for an empty document), from its header only.
fn header(value: &Value) -> Result<Option<Object>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let Some(map) = value.as_mapping() else {
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
        return Err("kind List is not supported: give each object as its own document".into());
    }
    let Some(kind) = Kind::find(group, kind_name) else {
        return Err(format!(
            "kind {kind_name} of {api_version} is not supported by the mesh (supported: {})",
            supported()
        ));
    };
    if !kind.versions().contains(&version) {
        return Err(format!(
            "apiVersion {api_version} is not read for {kind_name}; use {}",
            api_versions(kind).join(" or ")
        ));
    }
    let meta = match map.get("metadata") {
        Some(Value::Mapping(meta)) => meta,
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
    kind.name_rule()
        .check(&name)
        .map_err(|e| format!("metadata.name: {e}"))?;
    let namespace = match meta.get("namespace") {
        _ if kind == Kind::Namespace => None,
        None | Some(Value::Null) => Some("default".to_string()),
        Some(Value::String(ns)) if ns.is_empty() => Some("default".to_string()),
        Some(Value::String(ns)) => {
            NameRule::Label
                .check(ns)
                .map_err(|e| format!("metadata.namespace: {e}"))?;
            Some(ns.clone())
        }
        Some(_) => return Err("metadata.namespace must be a string".into()),
    };
    let mut value = value.clone();
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_mapping_mut) {
        match &namespace {
            Some(ns) => meta.insert("namespace".into(), ns.as_str().into()),
            None => meta.remove("namespace"),
        };
    }
    Ok(Some(Object {
        kind,
        namespace,
        name,
        value,
    }))
}

fn api_versions(kind: Kind) -> Vec<String> {
    kind.versions()
        .iter()
        .map(|v| match kind.group() {
            "" => v.to_string(),
            group => format!("{group}/{v}"),
        })
        .collect()
}

fn supported() -> String {
    KINDS
        .iter()
        .map(|k| format!("{} ({})", k.name(), api_versions(*k).join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Pass two: decodes the document into its kind's type; returns warnings or why it is
/// unusable. The core kinds use the same `k8s-openapi` types as istiod-lite.
fn check_contents<'de, D>(kind: Kind, document: D) -> Result<Vec<String>, String>
where
    D: Deserializer<'de, Error = serde_yaml::Error>,
{
    let invalid = |e: serde_yaml::Error| format!("not a valid {}: {e}", kind.name());
    match kind {
        Kind::Namespace => core::Namespace::deserialize(document).map(drop),
        Kind::Pod => core::Pod::deserialize(document).map(drop),
        Kind::Service => core::Service::deserialize(document).map(drop),
        Kind::ServiceAccount => core::ServiceAccount::deserialize(document).map(drop),
        Kind::Gateway => resources::Gateway::deserialize(document).map(drop),
        Kind::HttpRoute => {
            return checked(
                kind,
                resources::HttpRoute::deserialize(document),
                resources::HttpRoute::validate,
            )
        }
        Kind::GrpcRoute => {
            return checked(
                kind,
                resources::GrpcRoute::deserialize(document),
                resources::GrpcRoute::validate,
            )
        }
        Kind::VirtualService => {
            return checked(
                kind,
                resources::VirtualService::deserialize(document),
                resources::VirtualService::validate,
            )
        }
        Kind::DestinationRule => {
            return checked(
                kind,
                resources::DestinationRule::deserialize(document),
                resources::DestinationRule::validate,
            )
        }
        Kind::AuthorizationPolicy => return security::check_authorization_policy(document),
        Kind::PeerAuthentication => return security::check_peer_authentication(document),
        Kind::RequestAuthentication => {
            return super::request_authn::check_request_authentication(document)
        }
    }
    .map(|()| Vec::new())
    .map_err(invalid)
}

/// A routing kind: decoded with the shared `resources` types (the ones istiod-lite reads), then
/// its `validate()`, whose message names each bad field (`spec.rules[0]...`).
fn checked<T>(
    kind: Kind,
    decoded: Result<T, serde_yaml::Error>,
    validate: impl Fn(&T) -> Result<(), resources::ValidationError>,
) -> Result<Vec<String>, String> {
    let object = decoded.map_err(|e| format!("not a valid {}: {e}", kind.name()))?;
    validate(&object).map_err(|e| format!("invalid {}: {e}", kind.name()))?;
    Ok(Vec::new())
}

/// How an object name is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NameRule {
    /// DNS-1123 label: at most 63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric.
    Label,
    /// DNS-1123 subdomain: at most 253, labels joined by dots.
    Subdomain,
}

impl NameRule {
    /// Whether `name` follows the rule; the error says how it does not.
    pub(super) fn check(self, name: &str) -> anyhow::Result<()> {
        let (max, what) = match self {
            NameRule::Label => (63, "a DNS-1123 label"),
            NameRule::Subdomain => (253, "a DNS-1123 subdomain"),
        };
        let labels_ok = match self {
            NameRule::Label => is_label(name),
            NameRule::Subdomain => name.split('.').all(is_label),
        };
        if name.is_empty() || name.len() > max || !labels_ok {
            bail!(
                "{name:?} is not {what} (at most {max} characters: lower-case letters, digits{}, \
                 starting and ending with a letter or digit)",
                if self == NameRule::Label {
                    " and '-'"
                } else {
                    ", '-' and '.'"
                }
            );
        }
        Ok(())
    }
}

fn is_label(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok(c) || c == '-')
        && s.starts_with(ok)
        && s.ends_with(ok)
}

/// A label value or the name part of a key: at most 63 of `A-Za-z0-9-_.`, starting and
/// ending alphanumeric (values may also be empty).
fn is_label_name(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric();
    s.len() <= 63
        && s.chars().all(|c| ok(c) || "-_.".contains(c))
        && s.starts_with(ok)
        && s.ends_with(ok)
}

/// A Kubernetes label key: `[<DNS-1123 subdomain>/]<name>`.
pub(super) fn check_label_key(key: &str) -> anyhow::Result<()> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        NameRule::Subdomain.check(prefix)?;
    }
    if !is_label_name(name) {
        bail!("{name:?} is not a label name (at most 63 of A-Z, a-z, 0-9, '-', '_', '.', starting and ending alphanumeric)");
    }
    Ok(())
}

/// A Kubernetes label value: empty, or like a label name.
pub(super) fn check_label_value(value: &str) -> anyhow::Result<()> {
    if !value.is_empty() && !is_label_name(value) {
        bail!("{value:?} is not a label value (at most 63 of A-Z, a-z, 0-9, '-', '_', '.', starting and ending alphanumeric)");
    }
    Ok(())
}
