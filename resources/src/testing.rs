//! A fake Kubernetes API server for tests (feature `testing`): in-process, plain HTTP on
//! loopback, speaking the real JSON for what the mesh's Kubernetes code uses.
//!
//! - `GET` collections (`/api/v1/pods`, `/api/v1/namespaces/{ns}/pods`,
//!   `/apis/{group}/{version}/{plural}`, ...): a `…List` with `metadata.resourceVersion`,
//!   filtered by `labelSelector` and `fieldSelector` (equality terms: `k=v`, `k!=v`, `k`;
//!   fields `metadata.name`, `metadata.namespace`, `spec.nodeName`).
//! - `GET …?watch=1&resourceVersion=N`: a stream of `ADDED`/`MODIFIED`/`DELETED` events after
//!   `N`, `BOOKMARK`s when asked (`allowWatchBookmarks`), and an `ERROR` with status 410
//!   (`Expired`) when `N` is older than the history kept ([`FakeApiServer::compact`]).
//! - Objects get `metadata.resourceVersion` and `uid`; the store's resourceVersion is one counter
//!   across kinds, as etcd's is.
//!
//! - `GET` and `PATCH` of one object (JSON merge patch; server-side apply is merged the same
//!   way, creating the object if absent); `POST` of a TokenReview (tokens registered with
//!   [`FakeApiServer::add_token`]).
//!
//! Tests drive it with [`FakeApiServer::apply`] and [`FakeApiServer::delete`], cut every open
//! watch with [`FakeApiServer::drop_watches`], and read what clients wrote with
//! [`FakeApiServer::get`]. Requests it does not implement answer 404 with a `Status`, which
//! the test then sees fail.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::plural;
use tokio::sync::{broadcast, watch};

/// A resource collection: `(group, version, plural)`; group `""` for the core API.
pub type Resource = (String, String, String);

/// One change, as watch streams send it.
#[derive(Debug, Clone)]
struct Change {
    resource: Resource,
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// Objects by resource, then `(namespace, name)`.
    objects: BTreeMap<Resource, BTreeMap<(String, String), Value>>,
    /// The oldest resourceVersion a watch may start from.
    oldest: u64,
    history: Vec<Change>,
    requests: Vec<String>,
    /// TokenReview: token → (`status.user`, audiences the token was issued for).
    tokens: BTreeMap<String, (Value, Vec<String>)>,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped by `drop_watches`: every open watch ends when it changes.
    cut: watch::Sender<u64>,
}

/// The fake API server; stops when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The collection an object belongs to, from its `apiVersion` and `kind`.
pub fn resource_of(object: &Value) -> Resource {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or_default();
    (group.to_string(), version.to_string(), plural(kind))
}

impl FakeApiServer {
    /// Starts serving on `127.0.0.1` (a free port). Must be called inside a tokio runtime.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(4096);
        let (cut, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changes,
            cut,
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FakeApiServer { shared, addr, task })
    }

    /// `http://127.0.0.1:<port>`, for a client's cluster URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces `object` (with `apiVersion`, `kind`, `metadata.name`, and
    /// `metadata.namespace` when namespaced); watchers see `ADDED` or `MODIFIED`. Returns the
    /// object as stored.
    pub fn apply(&self, object: Value) -> Value {
        let resource = resource_of(&object);
        Self::store_object(&self.shared, resource, object)
    }

    fn store_object(shared: &Shared, resource: Resource, mut object: Value) -> Value {
        let key = key_of(&object);
        let mut store = shared.store();
        store.rv += 1;
        let rv = store.rv;
        let objects = store.objects.entry(resource.clone()).or_default();
        let kind = if objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let uid = objects
            .get(&key)
            .and_then(|o| o["metadata"]["uid"].as_str().map(String::from))
            .unwrap_or_else(|| format!("uid-{rv}"));
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["uid"] = json!(uid);
        objects.insert(key, object.clone());
        let change = Change {
            resource,
            rv,
            kind,
            object: object.clone(),
        };
        store.history.push(change.clone());
        drop(store);
        let _ = shared.changes.send(change);
        object
    }

    /// Deletes the object of `apiVersion`/`kind` at `namespace/name`; watchers see `DELETED`.
    /// Returns whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        Self::delete_in(&self.shared, api_version, kind, namespace, name)
    }

    fn delete_in(
        shared: &Shared,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> bool {
        let resource = resource_of(&json!({"apiVersion": api_version, "kind": kind}));
        let mut store = shared.store();
        store.rv += 1;
        let rv = store.rv;
        let Some(mut object) = store
            .objects
            .get_mut(&resource)
            .and_then(|o| o.remove(&(namespace.to_string(), name.to_string())))
        else {
            return false;
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            resource,
            rv,
            kind: "DELETED",
            object,
        };
        store.history.push(change.clone());
        drop(store);
        let _ = shared.changes.send(change);
        true
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resource_of(&json!({"apiVersion": api_version, "kind": kind}));
        self.shared
            .store()
            .objects
            .get(&resource)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Forgets the history: a watch that resumes from any resourceVersion handed out so far
    /// gets 410 and must list again (the version moves on, as another write would move it).
    pub fn compact(&self) {
        let mut store = self.shared.store();
        store.rv += 1;
        store.oldest = store.rv;
        store.history.clear();
    }

    /// Ends every open watch stream (as an API server restart or a load balancer would).
    pub fn drop_watches(&self) {
        self.shared.cut.send_modify(|n| *n += 1);
    }

    /// Makes `token` a ServiceAccount token of `namespace/service_account` for `audiences`,
    /// bound to `pod` (when given, with `node`) as a projected token is: TokenReview answers
    /// with that user.
    pub fn add_token(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        pod: Option<(&str, &str)>,
        audiences: &[&str],
    ) {
        let mut extra = serde_json::Map::new();
        if let Some((pod, node)) = pod {
            extra.insert("authentication.kubernetes.io/pod-name".into(), json!([pod]));
            extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                json!([format!("uid-{pod}")]),
            );
            extra.insert(
                "authentication.kubernetes.io/node-name".into(),
                json!([node]),
            );
        }
        let user = json!({
            "username": format!("system:serviceaccount:{namespace}:{service_account}"),
            "uid": format!("uid-sa-{service_account}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
            "extra": extra,
        });
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        self.shared
            .store()
            .tokens
            .insert(token.to_string(), (user, audiences));
    }

    /// `METHOD path?query` of every request served so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.store().requests.clone()
    }
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// What a path names: the resource, the namespace (if namespaced) and one object's name.
fn parse_path(path: &str) -> Option<(Resource, Option<String>, Option<String>)> {
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

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect()
}

fn decode(v: &str) -> String {
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
fn selects(selector: Option<&String>, get: impl Fn(&str) -> Option<String>) -> bool {
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

fn matches(object: &Value, namespace: Option<&str>, q: &BTreeMap<String, String>) -> bool {
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

async fn handle(shared: &Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let q = query(&req);
    let line = format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    shared.store().requests.push(line);
    let Some((resource, namespace, name)) = parse_path(req.uri().path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if req.method() == hyper::Method::POST && resource.2 == "tokenreviews" {
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let review: Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        return full(StatusCode::CREATED, &token_review(shared, review));
    }
    if let Some(name) = name {
        let key = (namespace.clone().unwrap_or_default(), name);
        return object_request(shared, req, resource, key).await;
    }
    if req.method() != hyper::Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not implemented by the fake",
        );
    }
    let watching = matches!(q.get("watch").map(String::as_str), Some("1" | "true"));
    if watching {
        return watch_stream(shared, resource, namespace, q);
    }
    let store = shared.store();
    let items: Vec<Value> = store
        .objects
        .get(&resource)
        .map(|objects| {
            objects
                .values()
                .filter(|o| matches(o, namespace.as_deref(), &q))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let kind = items
        .first()
        .and_then(|o| o["kind"].as_str())
        .map(|k| format!("{k}List"))
        .unwrap_or_else(|| "List".into());
    let api_version = if resource.0.is_empty() {
        resource.1.clone()
    } else {
        format!("{}/{}", resource.0, resource.1)
    };
    full(
        StatusCode::OK,
        &json!({"apiVersion": api_version, "kind": kind,
                "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
    )
}

/// GET or PATCH (JSON merge patch; server-side apply is merged the same way) of one object.
async fn object_request(
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
fn merge(target: &mut Value, patch: &Value) {
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
fn token_review(shared: &Shared, mut review: Value) -> Value {
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

fn watch_stream(
    shared: &Arc<Shared>,
    resource: Resource,
    namespace: Option<String>,
    q: BTreeMap<String, String>,
) -> Response<Body> {
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(300));
    // Subscribe before reading the history, so no change falls between the two.
    let mut live = shared.changes.subscribe();
    let mut cut = shared.cut.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
    let (backlog, expired, current) = {
        let store = shared.store();
        let expired = since != 0 && since < store.oldest;
        let backlog: Vec<Change> = store
            .history
            .iter()
            .filter(|c| c.rv > since && c.resource == resource)
            .cloned()
            .collect();
        (backlog, expired, store.rv)
    };
    let selected =
        move |c: &Change| c.resource == resource && matches(&c.object, namespace.as_deref(), &q);
    tokio::spawn(async move {
        if expired {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("too old resource version: {since}"),
                "reason": "Expired", "code": 410});
            let _ = tx
                .send(line(json!({"type": "ERROR", "object": status})))
                .await;
            return;
        }
        let mut last = since;
        for c in backlog.iter().filter(|c| selected(c)) {
            last = c.rv;
            if tx
                .send(line(json!({"type": c.kind, "object": c.object})))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut bookmark_rv = current.max(last);
        loop {
            // Biased: a cut (drop_watches) wins over changes made after it, so those changes
            // are seen only by the client's next watch or list, as after a real disconnect.
            tokio::select! {
                biased;
                _ = cut.changed() => return,
                () = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let event = json!({"type": "BOOKMARK", "object": {"kind": "Bookmark",
                        "apiVersion": "v1", "metadata": {"resourceVersion": bookmark_rv.to_string()}}});
                    if tx.send(line(event)).await.is_err() {
                        return;
                    }
                }
                change = live.recv() => match change {
                    Ok(c) if c.rv > last => {
                        last = c.rv;
                        bookmark_rv = c.rv;
                        if selected(&c) && tx.send(line(json!({"type": c.kind, "object": c.object}))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Lagged or closed: end the stream; the client resumes from its last version.
                    Err(_) => return,
                },
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = Response::new(BodyExt::boxed(body));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_api() {
        assert_eq!(
            parse_path("/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies"),
            Some((
                (
                    "security.istio.io".into(),
                    "v1".into(),
                    "authorizationpolicies".into()
                ),
                Some("shop".into()),
                None
            ))
        );
        assert_eq!(
            parse_path("/api/v1/pods"),
            Some((("".into(), "v1".into(), "pods".into()), None, None))
        );
        assert_eq!(
            parse_path("/api/v1/namespaces/shop/pods/web"),
            Some((
                ("".into(), "v1".into(), "pods".into()),
                Some("shop".into()),
                Some("web".into())
            ))
        );
    }

    #[test]
    fn selectors_match_equality_terms() {
        let get = |k: &str| match k {
            "app" => Some("web".to_string()),
            _ => None,
        };
        assert!(selects(Some(&"app=web".to_string()), get));
        assert!(selects(Some(&"app==web,!tier".to_string()), get));
        assert!(!selects(Some(&"app!=web".to_string()), get));
        assert!(!selects(Some(&"tier".to_string()), get));
        assert_eq!(decode("spec.nodeName%3Dn1"), "spec.nodeName=n1");
    }
}
