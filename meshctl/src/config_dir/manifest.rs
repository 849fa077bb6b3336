//! Reading `apply`/`delete` input: YAML documents → checked objects, named and normalized.
//!
//! Each document is read as istiod-lite reads it, with the shared `resources` crate: its header
//! ([`resources::classify`]), then its typed form ([`resources::decode`] and
//! [`resources::Object::validate`]), so an error names the field path. On top, `apply` refuses
//! and warns about what the mesh enforces differently ([`super::admission`]), checks names
//! as the API server does, and refuses `List`s and kinds the mesh does not read. The typed form
//! only checks; what is stored is the document itself, with its namespace filled in
//! (`default` when absent) — istiod-lite reads it again anyway.
//!
//! Every problem of every document is collected and reported together; one problem refuses
//! the whole input.

use std::fmt::Write as _;

use anyhow::bail;
use resources::{classify, Document, NameRule};
use serde_json::Value;

use super::admission;

pub(crate) use resources::Kind;

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
    for (index, value) in values.iter().enumerate() {
        let at = format!("document {} of {total}", index + 1);
        match header(value) {
            Ok(None) => {}
            Err(reason) => problems.push(format!("{at}: {reason}")),
            Ok(Some(object)) => match check_contents(object.kind, &object.value) {
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

/// Every document as a generic value. Broken syntax stops the reading, since the documents
/// after it cannot be told apart.
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut values = Vec::new();
    for (index, document) in resources::yaml_documents(text).into_iter().enumerate() {
        match document {
            Ok(value) => values.push(value),
            Err(e) => bail!("document {}: {e}; nothing was done", index + 1),
        }
    }
    Ok(values)
}

/// The object a document describes (`None` for an empty document), from its header only.
fn header(value: &Value) -> Result<Option<Object>, String> {
    let header = match classify(value)? {
        Document::Empty => return Ok(None),
        Document::Object(header) => header,
        Document::List(_) => {
            return Err("kind List is not supported: give each object as its own document".into())
        }
        Document::Unknown { kind, api_version } => {
            return Err(format!(
                "kind {kind} of {api_version} is not supported by the mesh (supported: {})",
                Kind::supported()
            ))
        }
    };
    let kind = header.kind;
    kind.name_rule()
        .check(&header.name)
        .map_err(|e| format!("metadata.name: {e}"))?;
    if let Some(ns) = &header.namespace {
        NameRule::Label
            .check(ns)
            .map_err(|e| format!("metadata.namespace: {e}"))?;
    }
    let mut value = value.clone();
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        match &header.namespace {
            Some(ns) => meta.insert("namespace".into(), ns.as_str().into()),
            None => meta.remove("namespace"),
        };
    }
    Ok(Some(Object {
        kind,
        namespace: header.namespace,
        name: header.name,
        value,
    }))
}

/// Decodes the document into its kind's type (the types istiod-lite reads), refuses what the
/// mesh does not do, validates; returns warnings or why it is unusable.
fn check_contents(kind: Kind, value: &Value) -> Result<Vec<String>, String> {
    let object = resources::decode(kind, value.clone())?;
    admission::refuse(&object)?;
    object
        .validate()
        .map_err(|e| format!("invalid {kind}: {e}"))?;
    admission::check_and_warn(&object)
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
