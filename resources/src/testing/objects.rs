//! One object's GET and PATCH, and TokenReview, in the fake API server.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::*;

/// GET or PATCH (JSON merge patch; server-side apply is merged the same way) of one object.
pub(super) async fn object_request(
    shared: &Arc<Shared>,
    req: Request<hyper::body::Incoming>,
    resource: Resource,
    key: (String, String),
) -> Response<Body> {
    let method = req.method().clone();
    let current = shared
        .store()
        .objects
        .get(&resource)
        .and_then(|o| o.get(&key))
        .cloned();
    match method {
        hyper::Method::GET => match current {
            Some(object) => full(StatusCode::OK, &object),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} {:?} not found", resource.2, key.1),
            ),
        },
        hyper::Method::DELETE => {
            let resource_kind = current.as_ref().and_then(|o| {
                Some((
                    o["apiVersion"].as_str()?.to_string(),
                    o["kind"].as_str()?.to_string(),
                ))
            });
            match (current, resource_kind) {
                (Some(object), Some((api_version, kind))) => {
                    FakeApiServer::delete_in(shared, &api_version, &kind, &key.0, &key.1);
                    full(StatusCode::OK, &object)
                }
                _ => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} {:?} not found", resource.2, key.1),
                ),
            }
        }
        hyper::Method::PATCH => {
            let apply = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let Some(patch) = body
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the patch is not JSON",
                );
            };
            let mut object = match (current, apply) {
                (Some(object), _) => object,
                (None, true) => json!({"metadata": {"name": key.1, "namespace": key.0}}),
                (None, false) => {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{} {:?} not found", resource.2, key.1),
                    )
                }
            };
            merge(&mut object, &patch);
            if key.0.is_empty() {
                if let Some(meta) = object["metadata"].as_object_mut() {
                    meta.remove("namespace");
                }
            }
            let stored = FakeApiServer::store_object(shared, resource, object);
            full(StatusCode::OK, &stored)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not implemented by the fake",
        ),
    }
}

/// RFC 7386 JSON merge patch: `null` removes, objects merge, anything else replaces.
pub(super) fn merge(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(map) = target.as_object_mut() {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The answer to a TokenReview: the review with its `status`.
pub(super) fn token_review(shared: &Shared, mut review: Value) -> Value {
    let token = review["spec"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let wanted: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let known = shared.store().tokens.get(&token).cloned();
    review["status"] = match known {
        Some((user, audiences))
            if wanted.is_empty() || wanted.iter().any(|w| audiences.contains(w)) =>
        {
            let matched: Vec<&String> = if wanted.is_empty() {
                audiences.iter().collect()
            } else {
                wanted.iter().filter(|w| audiences.contains(w)).collect()
            };
            json!({"authenticated": true, "user": user, "audiences": matched})
        }
        Some(_) => json!({"authenticated": false, "error": "token audiences are invalid"}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    review
}
