//! Decoding an object of one of this crate's kinds from YAML or JSON, as the API server reads
//! it: an absent or null `metadata` or `spec` is an empty one (`kind: AuthorizationPolicy`
//! with no spec is Istio's allow-nothing policy), and unknown fields are refused by the types.

use serde::de::DeserializeOwned;

/// Why a document could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not YAML: the parser's message, with the line.
    #[error("not YAML: {0}")]
    Yaml(String),
    /// YAML, but not an object of the kind (unknown field, wrong type, ...), at this path.
    #[error("{path}: {error}")]
    Object {
        /// Where, e.g. `spec.rules[0].to`.
        path: String,
        /// What.
        error: serde_json::Error,
    },
}

/// Decodes `value` as a `K`, with empty `metadata` and `spec` where they are absent or null.
pub fn from_value<K: DeserializeOwned>(mut value: serde_json::Value) -> Result<K, DecodeError> {
    if let Some(map) = value.as_object_mut() {
        for key in ["metadata", "spec"] {
            let entry = map.entry(key).or_insert(serde_json::Value::Null);
            if entry.is_null() {
                *entry = serde_json::json!({});
            }
        }
    }
    exact(value)
}

/// Decodes `value` as a `K` as it is (the core kinds: an absent `spec` stays absent).
pub fn exact<K: DeserializeOwned>(value: serde_json::Value) -> Result<K, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| DecodeError::Object {
        path: e.path().to_string(),
        error: e.into_inner(),
    })
}

/// Parses one YAML document into a JSON value (what the decoders and the validators read).
pub fn yaml_value(text: &str) -> Result<serde_json::Value, DecodeError> {
    serde_saphyr::from_str_with_options::<Option<serde_json::Value>>(text, yaml_options())
        .map(Option::unwrap_or_default)
        .map_err(|e| DecodeError::Yaml(first_line(&e.to_string())))
}

/// Parses every document of a YAML stream (`---`-separated) into a JSON value each (`Null`
/// for an empty one), in order, stopping after the first that is not YAML (the documents
/// after broken syntax cannot be told apart); its error gives the line in the whole stream.
pub fn yaml_documents(text: &str) -> Vec<Result<serde_json::Value, DecodeError>> {
    let mut out = Vec::new();
    for (start, chunk) in split_documents(text) {
        // Blank lines in front keep the parser's line numbers those of the whole stream.
        let padded = format!("{}{chunk}", "\n".repeat(start));
        let parsed = if chunk.trim().is_empty() {
            Ok(serde_json::Value::Null)
        } else {
            serde_saphyr::from_str_with_options::<Option<serde_json::Value>>(
                &padded,
                yaml_options(),
            )
            .map(Option::unwrap_or_default)
            .map_err(|e| DecodeError::Yaml(first_line(&e.to_string())))
        };
        let broken = parsed.is_err();
        out.push(parsed);
        if broken {
            break;
        }
    }
    out
}

/// `(first line index, text)` of each document: split at `---` lines, with a leading `---`
/// (or `%YAML` directives before it) starting the first document rather than an empty one.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker {
            if seen_content {
                docs.push((start, std::mem::take(&mut current)));
            }
            current.clear();
            start = i;
            seen_content = true;
            current.push_str(line);
            current.push('\n');
            continue;
        }
        if line == "..." {
            continue;
        }
        if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            seen_content = true;
        }
        current.push_str(line);
        current.push('\n');
    }
    if seen_content {
        docs.push((start, current));
    }
    docs
}

/// YAML 1.2 core, as Kubernetes' own tools read manifests today: only `true`/`false` are
/// booleans, so `namespace: n` or `value: yes` stay strings.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Parses one YAML document straight into a `T` (any serde type, no defaulting).
pub fn yaml_parse<T: DeserializeOwned>(text: &str) -> Result<T, DecodeError> {
    serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| DecodeError::Yaml(first_line(&e.to_string())))
}

/// Parses one YAML document as a `K` (see [`from_value`]).
pub fn from_yaml<K: DeserializeOwned>(text: &str) -> Result<K, DecodeError> {
    from_value(yaml_value(text)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{AuthorizationPolicy, PeerAuthentication};

    #[test]
    fn an_object_without_spec_or_metadata_is_an_empty_one() {
        let ap: AuthorizationPolicy = from_yaml("metadata: {name: allow-nothing}\n").unwrap();
        assert!(ap.spec.rules.is_empty());
        let ap: AuthorizationPolicy = from_yaml("spec:\n").unwrap();
        assert_eq!(ap.metadata.name, None);
    }

    #[test]
    fn integer_map_keys_and_several_documents_read() {
        let pa: PeerAuthentication =
            from_yaml("spec: {portLevelMtls: {8080: {mode: DISABLE}}}").unwrap();
        assert_eq!(pa.spec.port_level_mtls.len(), 1);
        assert_eq!(
            yaml_value("namespace: n\nok: yes\non: true").unwrap()["namespace"],
            "n"
        );
        let docs = yaml_documents("a: 1\n---\n---\nb: 2\n");
        assert_eq!(docs.len(), 3);
        assert!(docs[1].as_ref().unwrap().is_null());
        let docs = yaml_documents("---\na: 1\n---\nb: [\n---\nc: 3\n");
        assert_eq!(docs.len(), 2, "stops after the broken one");
        assert_eq!(docs[0].as_ref().unwrap()["a"], 1);
        let err = docs[1].as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("not YAML:") && err.contains("line 4"),
            "{err}"
        );
        assert!(matches!(yaml_value("a: [1"), Err(DecodeError::Yaml(_))));
        assert!(matches!(
            from_yaml::<AuthorizationPolicy>("spec: {rulez: []}"),
            Err(DecodeError::Object { .. })
        ));
        let err =
            from_yaml::<AuthorizationPolicy>("spec: {rules: [{to: [{operation: {pathz: []}}]}]}")
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with("spec.rules[0].to[0].operation.pathz: unknown field `pathz`"),
            "{err}"
        );
    }
}
