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
//! - `GET /api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{path}` (the pod proxy
//!   subresource): answered by what the test registered with [`FakeApiServer::set_pod_proxy`],
//!   else 503 as when nothing listens there.
//! - `GET /api/v1/namespaces/{ns}/pods/{pod}/portforward?ports=P` (the portforward
//!   subresource, a WebSocket with the `v4.channel.k8s.io` protocol): each port's stream is
//!   connected to the address registered with [`FakeApiServer::set_port_forward`] (or to the
//!   HTTP responder of [`FakeApiServer::set_port_forward_http`]), else its error channel says
//!   the connection was refused; 404 when the pod does not exist.
//! - `GET` and `PATCH` of one object (JSON merge patch; server-side apply is merged the same
//!   way, creating the object if absent); `POST` of a TokenReview (tokens registered with
//!   [`FakeApiServer::add_token`]).
//!
//! Tests drive it with [`FakeApiServer::apply`] and [`FakeApiServer::delete`], cut every open
//! watch with [`FakeApiServer::drop_watches`], and read what clients wrote with
//! [`FakeApiServer::get`]. Requests it does not implement answer 404 with a `Status`, which
//! the test then sees fail.

mod http;
mod objects;
mod pod_proxy;
mod port_forward;
mod watches;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::plural;
use tokio::sync::{broadcast, watch};

use http::{full, matches, parse_path, query, status, Body};
use objects::{object_request, token_review};
use watches::watch_stream;

/// A resource collection: `(group, version, plural)`; group `""` for the core API.
pub type Resource = (String, String, String);

/// One change, as watch streams send it.
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub(super) resource: Resource,
    pub(super) rv: u64,
    pub(super) kind: &'static str,
    pub(super) object: Value,
}

#[derive(Default)]
pub(super) struct Store {
    pub(super) rv: u64,
    /// Objects by resource, then `(namespace, name)`.
    pub(super) objects: BTreeMap<Resource, BTreeMap<(String, String), Value>>,
    /// The oldest resourceVersion a watch may start from.
    pub(super) oldest: u64,
    pub(super) history: Vec<Change>,
    pub(super) requests: Vec<String>,
    /// TokenReview: token → (`status.user`, audiences the token was issued for).
    pub(super) tokens: BTreeMap<String, (Value, Vec<String>)>,
    /// Pod proxy responders by (namespace, pod, port).
    pub(super) pod_proxies: BTreeMap<(String, String, u16), pod_proxy::Handler>,
    /// Port-forward targets by (namespace, pod, port).
    pub(super) port_forwards: BTreeMap<(String, String, u16), SocketAddr>,
    /// Servers the fake runs for tests (port-forward targets), stopped with it.
    pub(super) servers: Vec<tokio::task::AbortHandle>,
}

pub(super) struct Shared {
    pub(super) store: Mutex<Store>,
    pub(super) changes: broadcast::Sender<Change>,
    /// Bumped by `drop_watches`: every open watch ends when it changes.
    pub(super) cut: watch::Sender<u64>,
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
        for server in &self.shared.store().servers {
            server.abort();
        }
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
                        // The portforward subresource upgrades to a WebSocket.
                        .with_upgrades()
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

    pub(super) fn store_object(shared: &Shared, resource: Resource, mut object: Value) -> Value {
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
    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
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
    let req = match port_forward::handle(shared, req) {
        Ok(resp) => return resp,
        Err(req) => req,
    };
    if let Some(resp) = pod_proxy::handle(shared, req.method(), req.uri()) {
        return resp;
    }
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

#[cfg(test)]
mod tests;
