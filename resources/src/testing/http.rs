//! Responses, paths, query strings and selectors of the fake API server.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::*;

pub(super) type Body = BoxBody<Bytes, Infallible>;

pub(super) fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub(super) fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// What a path names: the resource, the namespace (if namespaced) and one object's name.
pub(super) fn parse_path(path: &str) -> Option<(Resource, Option<String>, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural, None),
        ["namespaces", ns, plural, name] | ["namespaces", ns, plural, name, "status"] => {
            (Some(ns.to_string()), *plural, Some(name.to_string()))
        }
        // A cluster-scoped object, e.g. /api/v1/namespaces/shop.
        [plural, name] => (None, *plural, Some(name.to_string())),
        _ => return None,
    };
    Some((
        (group.to_string(), version.to_string(), plural.to_string()),
        namespace,
        name,
    ))
}

pub(super) fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

pub(super) fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A label or field selector: comma-separated `k=v`, `k==v`, `k!=v`, `k`, `!k` terms.
pub(super) fn selects(selector: Option<&String>, get: impl Fn(&str) -> Option<String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            get(k.trim()).as_deref() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            get(k.trim()).as_deref() == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else {
            get(term.trim()).is_some()
        }
    })
}

pub(super) fn matches(
    object: &Value,
    namespace: Option<&str>,
    q: &BTreeMap<String, String>,
) -> bool {
    let meta = &object["metadata"];
    if namespace.is_some_and(|ns| meta["namespace"].as_str() != Some(ns)) {
        return false;
    }
    let labels = |k: &str| meta["labels"][k].as_str().map(String::from);
    let fields = |k: &str| {
        let v = match k {
            "metadata.name" => &meta["name"],
            "metadata.namespace" => &meta["namespace"],
            "spec.nodeName" => &object["spec"]["nodeName"],
            _ => return None,
        };
        Some(v.as_str().unwrap_or_default().to_string())
    };
    selects(q.get("labelSelector"), labels) && selects(q.get("fieldSelector"), fields)
}
