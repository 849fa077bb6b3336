//! Reading one file's text into typed objects: sans-IO, so it is tested on strings.
//!
//! A file holds YAML documents separated by `---`. Each document is either empty (skipped), a
//! `kind: List` (its `items` are read one by one, as `kubectl get -o yaml` writes them), or
//! one object. Objects of the kinds in [`Kind`] are decoded into their types; other kinds are
//! ignored with a warning. Each document is read as a generic value (YAML by `serde-saphyr`)
//! to check the syntax and find its header ([`resources::classify`]), then into its type
//! ([`resources::read`]), so that an error names the field path
//! (`spec.rules[0].from[0].source.principal: unknown field ...`).
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

use serde_json::Value;

use super::{ConfigProblem, ObjectKey};
use crate::resources::{classify, read, yaml_documents, Document};
pub use crate::resources::{Kind, Object};

/// `(namespace, name)` of an object; the namespace is empty for a Namespace.
pub fn key(object: &Object) -> ObjectKey {
    let meta = object.metadata();
    ObjectKey {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
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

/// What a document (or a List item) is to this reader.
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
    // A broken document ends the list: the ones after it cannot be told apart.
    for (index, document) in yaml_documents(text).into_iter().enumerate() {
        let document = match document {
            Ok(document) => document,
            Err(e) => {
                out.problems.push(note(index, None, e.to_string()));
                break;
            }
        };
        match plan(&document, true) {
            Plan::Empty => {}
            Plan::Bad(reason) => out.problems.push(note(index, None, reason)),
            Plan::Unknown(what) => out.warnings.push(note(index, None, what)),
            Plan::Decode(kind, key) => match read(kind, document) {
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
                            read(kind, item)
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

/// Classifies a document (or a List item) from its header.
fn plan(value: &Value, top_level: bool) -> Plan {
    match classify(value) {
        Err(reason) => Plan::Bad(reason),
        Ok(Document::Empty) => Plan::Empty,
        Ok(Document::List(_)) if !top_level => Plan::Bad("a List inside a List is not read".into()),
        Ok(Document::List(items)) => Plan::List(items),
        Ok(Document::Unknown { kind, api_version }) => {
            Plan::Unknown(format!("kind {kind} of {api_version} is not used; ignored"))
        }
        Ok(Document::Object(header)) => Plan::Decode(
            header.kind,
            ObjectKey::new(header.namespace.unwrap_or_default(), header.name),
        ),
    }
}

/// The placeholder file name of text that did not come from a file.
pub(crate) fn inline_file() -> PathBuf {
    PathBuf::from("<inline>")
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
