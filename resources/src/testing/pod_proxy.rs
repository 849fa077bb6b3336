//! The pod proxy subresource of the fake API server: `GET
//! /api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{path}` goes to a responder the test
//! registered for that pod and port (standing in for the process in the pod).

use std::sync::Arc;

use hyper::{Method, Response, StatusCode, Uri};

use super::http::{status, Body};
use super::{FakeApiServer, Shared};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Answers a proxied `GET` of a path (with its query): status code and body.
pub type Handler = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

impl FakeApiServer {
    /// Serves `GET …/pods/{pod}:{port}/proxy/{path}` in `namespace` with `handler`, called
    /// with `/{path}` and its query (`/config_dump`, `/metrics?x=1`).
    pub fn set_pod_proxy(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
        handler: impl Fn(&str) -> (u16, String) + Send + Sync + 'static,
    ) {
        self.shared.store().pod_proxies.insert(
            (namespace.to_string(), pod.to_string(), port),
            Arc::new(handler),
        );
    }
}

/// `(namespace, pod, port, path with query)` of a pod proxy URL.
pub(super) fn parse(uri: &Uri) -> Option<(String, String, u16, String)> {
    let rest = uri.path().strip_prefix("/api/v1/namespaces/")?;
    let (namespace, rest) = rest.split_once("/pods/")?;
    let (pod, rest) = rest.split_once("/proxy")?;
    let (pod, port) = match pod.split_once(':') {
        Some((pod, port)) => (pod, port.parse().ok()?),
        None => (pod, 80),
    };
    let mut path = if rest.is_empty() {
        "/".to_string()
    } else {
        rest.to_string()
    };
    if let Some(q) = uri.query() {
        path.push('?');
        path.push_str(q);
    }
    Some((namespace.to_string(), pod.to_string(), port, path))
}

/// The answer to a pod proxy request; `None` when `uri` is not one.
pub(super) fn handle(shared: &Shared, method: &Method, uri: &Uri) -> Option<Response<Body>> {
    let (namespace, pod, port, path) = parse(uri)?;
    if method != Method::GET {
        return Some(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake proxies GET only",
        ));
    }
    let handler = shared
        .store()
        .pod_proxies
        .get(&(namespace.clone(), pod.clone(), port))
        .cloned();
    let Some(handler) = handler else {
        return Some(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!(
                "error trying to reach service: dial tcp {pod}:{port}: connect: connection refused"
            ),
        ));
    };
    // Called outside the store's lock: a responder may read the server.
    let (code, body) = handler(&path);
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    Some(resp)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pod_proxy_paths_name_the_pod_port_and_path() {
        let uri: Uri =
            "/api/v1/namespaces/istio-system/pods/ztunnel-abc:15000/proxy/config_dump?x=1"
                .parse()
                .unwrap();
        assert_eq!(
            parse(&uri),
            Some((
                "istio-system".into(),
                "ztunnel-abc".into(),
                15000,
                "/config_dump?x=1".into()
            ))
        );
        let uri: Uri = "/api/v1/namespaces/a/pods/b".parse().unwrap();
        assert_eq!(parse(&uri), None);
    }
}
