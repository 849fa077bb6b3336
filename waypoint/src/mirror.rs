//! Request mirroring (HTTPRoute `RequestMirror`, VirtualService `mirror`): a copy of a share
//! of requests goes to another backend service, fire and forget.
//!
//! Runs in the upstream request phase, once the request body is kept (a body larger than
//! [`crate::retry::MAX_BUFFERED_BODY`], or of unknown size, is not mirrored): the copy is
//! the request as forwarded (after filters), its `Host` suffixed `-shadow` as Envoy does, sent
//! on its own task to an endpoint of the mirror backend; its response is read and discarded
//! and never delays or changes the client's.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HOST;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Uri};
use http_body_util::BodyExt;
use mesh::hbone::ConnectMeta;

use crate::backend::WeightedBackend;
use crate::select::pick_service_endpoint;
use crate::Shared;

/// Sends a copy of requests to another backend.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RequestMirror {
    /// Where copies go (the weight is ignored; `port` `None`: the request's port).
    pub backend: WeightedBackend,
    /// Share of requests mirrored, 0 to 100.
    pub percent: f64,
}

/// What one mirrored copy needs.
#[derive(Debug)]
pub struct MirrorRequest {
    /// The head as forwarded to the primary backend.
    pub parts: Parts,
    /// The whole body.
    pub body: Bytes,
    /// Its trailers.
    pub trailers: Option<HeaderMap>,
    /// The port the client addressed (for a mirror without a port).
    pub port: u16,
    /// The original destination (address family of the endpoint chosen).
    pub target: SocketAddr,
    /// Whether the copy goes as HTTP/2.
    pub http2: bool,
    /// CONNECT metadata.
    pub meta: ConnectMeta,
}

fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => format!("{h}-shadow:{p}"),
        _ => format!("{host}-shadow"),
    }
}

/// Spawns the copy of `req` to `mirror`'s backend; errors are logged at debug and dropped.
pub fn spawn(shared: Arc<Shared>, mirror: &RequestMirror, mut req: MirrorRequest) {
    let service = mirror.backend.service.clone();
    let port = mirror.backend.port.unwrap_or(req.port);
    tokio::spawn(async move {
        let policy = shared.routes().backend_policy(&service);
        let up = match pick_service_endpoint(
            &shared.store,
            &shared.balancer,
            policy.lb_policy,
            &service,
            port,
            req.target,
            shared.config.endpoint_hbone_port,
            &|_| false,
        ) {
            Ok(up) => up,
            Err(e) => {
                tracing::debug!(service, error = %e, "mirror: no endpoint");
                return;
            }
        };
        if let Some(host) = req.parts.headers.get(HOST).and_then(|h| h.to_str().ok()) {
            if let Ok(v) = HeaderValue::from_str(&shadow_host(host)) {
                req.parts.headers.insert(HOST, v);
            }
        }
        if let Some(authority) = req.parts.uri.authority() {
            let mut parts = req.parts.uri.clone().into_parts();
            parts.authority = shadow_host(authority.as_str()).parse().ok();
            if let Ok(u) = Uri::from_parts(parts) {
                req.parts.uri = u;
            }
        }
        let body = crate::retry::replay(req.body, req.trailers);
        let request = Request::from_parts(req.parts, body);
        match shared
            .upstreams
            .send(&up, &req.meta, req.http2, request)
            .await
        {
            Ok(resp) => {
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                tracing::debug!(service, upstream = %up.addr, %status, "mirrored");
            }
            Err(e) => tracing::debug!(service, error = %e, "mirror failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_keeps_the_port() {
        assert_eq!(shadow_host("a.ns:80"), "a.ns-shadow:80");
        assert_eq!(shadow_host("a.ns"), "a.ns-shadow");
    }
}
