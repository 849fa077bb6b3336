//! HTTP inside a tunnel: serve HTTP/1.1 or HTTP/2 with hyper, and proxy each request through
//! named phases that share one [`RequestCtx`]:
//!
//! 1. **request filter** ([`HttpProxy::request_filter`]): trace context, request id, and the
//!    authorization hook ([`crate::authz::authorize`], called from here only);
//! 2. **route** ([`HttpProxy::route`]): the [`crate::route::RouteTable`] picks a rule and a
//!    backend service; the rule's request filters run ([`crate::filters`]: header modifier,
//!    URL rewrite, redirect answered here) and its faults ([`crate::fault`]);
//! 3. **upstream request** ([`HttpProxy::upstream_request`]): hop-by-hop headers out, then
//!    [`crate::forward`]: mirrors, and tries (endpoint from the balancer skipping ejected
//!    outliers, connection pool limits, per-try timeout, retries) over reused upstream
//!    connections over HBONE, all within the route's request timeout;
//! 4. **upstream response** ([`HttpProxy::upstream_response`]): status and gRPC status noted,
//!    hop-by-hop headers out, response header modifiers, body streamed back;
//! 5. **logging** ([`logging`]): when the response body has ended, metrics and one access-log
//!    line.
//!
//! A phase that fails returns a [`ProxyError`]; the client then gets a local reply with the
//! error's status and response flag (for gRPC: HTTP 200 with `grpc-status`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh::copy::NoAbort;
use mesh::hbone::{ConnectMeta, H2Stream};
use mesh::l7authz::{Authenticated, TokenLocation};
use mesh::model::AppProtocol;

use crate::authz::{authorize, Decision};
use crate::body::{BodyEnd, CountingBody, ReportingBody};
use crate::detect::{Prefixed, Protocol};
use crate::error::ProxyError;
use crate::filters::Filter;
use crate::forward::{forward, pick, Outgoing};
use crate::reply::{local_reply, response_flags};
use crate::select::{pick_workload, Destination};
use crate::telemetry::{HttpLabels, PeerInfo, RequestRecord};
use crate::trace::new_request_id;
use crate::upstream::Body;
use crate::Shared;

pub use crate::ctx::{Downstream, RequestCtx, RequestProtocol};

/// Serves HTTP on a tunnel whose first bytes said `protocol` (HTTP/1.1 or HTTP/2) until the
/// client closes it.
pub async fn serve(
    shared: Arc<Shared>,
    down: Arc<Downstream>,
    io: Prefixed<H2Stream>,
) -> Result<(), hyper::Error> {
    let protocol = down.protocol;
    let config = shared.config.clone();
    let proxy = Arc::new(HttpProxy { shared, down });
    let for_service = proxy.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let proxy = for_service.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req).await) }
    });
    let io = TokioIo::new(io);
    let drained = shared_drained(&proxy);
    tokio::pin!(drained);
    if protocol == Protocol::Http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(config.max_header_bytes as u32)
            .initial_stream_window_size(mesh::hbone::STREAM_WINDOW)
            .initial_connection_window_size(mesh::hbone::CONNECTION_WINDOW)
            .serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => return res,
            () = &mut drained => conn.as_mut().graceful_shutdown(),
        }
        conn.await
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_header_bytes.max(8192))
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => return res,
            () = &mut drained => conn.as_mut().graceful_shutdown(),
        }
        conn.await
    }
}

async fn shared_drained(proxy: &HttpProxy) {
    proxy.shared.drained().await;
}

/// Proxies the requests of one tunnel.
#[derive(Debug)]
pub struct HttpProxy {
    shared: Arc<Shared>,
    down: Arc<Downstream>,
}

impl HttpProxy {
    /// Runs one request through every phase; always answers (a local reply on error).
    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let upgrade = (self.down.protocol == Protocol::Http1 && wants_upgrade(req.headers()))
            .then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let mut ctx = RequestCtx::new(self.down.clone(), &parts);
        ctx.upgrade = upgrade;
        let resp = match self.proxy(&mut ctx, &mut parts, body).await {
            Ok(Reply::Upstream(resp)) => self.upstream_response(&mut ctx, resp),
            Ok(Reply::Local(resp)) => {
                ctx.status = Some(resp.status());
                resp
            }
            Err(e) => local_reply(&mut ctx, e),
        };
        let (parts, body) = resp.into_parts();
        let head = parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>() as u64
            + 16;
        let shared = self.shared.clone();
        let body = ReportingBody::new(body, Box::new(move |end| logging(&shared, ctx, head, end)));
        Response::from_parts(parts, body.boxed())
    }

    async fn proxy(
        &self,
        ctx: &mut RequestCtx,
        parts: &mut Parts,
        body: Incoming,
    ) -> Result<Reply, ProxyError> {
        self.request_filter(ctx, parts)?;
        if let Some(local) = self.route(ctx, parts)? {
            return Ok(Reply::Local(local));
        }
        if let Some(delay) = ctx
            .route
            .as_ref()
            .and_then(|r| r.rule.as_ref())
            .and_then(|r| r.fault.as_ref())
            .and_then(|f| f.draw_delay())
        {
            tokio::time::sleep(delay).await;
            ctx.delay_injected = true;
        }
        self.upstream_request(ctx, parts, body)
            .await
            .map(Reply::Upstream)
    }

    /// Phase 1: trace context and request id on the request, then authorization.
    pub fn request_filter(
        &self,
        ctx: &mut RequestCtx,
        parts: &mut Parts,
    ) -> Result<(), ProxyError> {
        ctx.request_id = match parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                let id = new_request_id();
                if let Ok(v) = HeaderValue::from_str(&id) {
                    parts.headers.insert("x-request-id", v);
                }
                id
            }
        };
        if let Ok(v) = HeaderValue::from_str(&ctx.trace.traceparent()) {
            parts.headers.insert("traceparent", v);
        }
        match authorize(&self.shared, ctx, parts) {
            Decision::Allow(authenticated) => {
                apply_authentication(parts, authenticated);
                Ok(())
            }
            Decision::Deny(reason) => Err(ProxyError::Denied(reason)),
            Decision::Unauthenticated { body, reason } => {
                Err(ProxyError::Unauthenticated { body, reason })
            }
        }
    }

    /// Phase 2: the rule and backend service (route table), the rule's request filters and
    /// faults. Returns a response when the request is answered here (a redirect); an abort is
    /// an error (`FI`). Workload-addressed traffic goes to that workload.
    pub fn route(
        &self,
        ctx: &mut RequestCtx,
        parts: &mut Parts,
    ) -> Result<Option<Response<Body>>, ProxyError> {
        let s = &self.shared;
        let target = self.down.target;
        let service = match &self.down.destination {
            Destination::Workload(w) => {
                let up = pick_workload(&s.balancer, w, target, s.config.endpoint_hbone_port)?;
                ctx.upstream_http2 = upstream_speaks_h2(None, self.down.protocol);
                ctx.upstream = Some(up);
                return Ok(None);
            }
            Destination::Service(service) => service,
        };
        let decision = s.routes().route(&service.key(), target.port(), parts)?;
        let backend = s
            .store
            .service(&decision.service)
            .ok_or_else(|| ProxyError::NoCluster(decision.service.clone()))?;
        let declared = backend
            .ports
            .iter()
            .find(|p| p.service_port == decision.port)
            .map(|p| p.app_protocol);
        ctx.upstream_http2 = upstream_speaks_h2(declared, self.down.protocol);
        let rule = decision.rule.clone();
        let prefix = decision.matched_prefix.clone();
        ctx.route = Some(decision);
        let Some(rule) = rule else { return Ok(None) };
        for filter in &rule.filters {
            match filter {
                Filter::RequestHeaders(m) => m.apply(&mut parts.headers),
                Filter::UrlRewrite(r) => {
                    if let Some(host) =
                        r.apply(&mut parts.uri, &mut parts.headers, prefix.as_deref())
                    {
                        ctx.forward_authority = host;
                    }
                }
                Filter::Redirect(r) => {
                    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let scheme = parts.uri.scheme_str().unwrap_or("http");
                    let location = r.location(scheme, &ctx.authority, pq, prefix.as_deref());
                    let mut resp = Response::new(empty());
                    *resp.status_mut() = r.status();
                    if let Ok(v) = HeaderValue::from_str(&location) {
                        resp.headers_mut().insert(http::header::LOCATION, v);
                    }
                    return Ok(Some(resp));
                }
                Filter::ResponseHeaders(_) | Filter::Mirror(_) => {}
            }
        }
        if let Some(abort) = rule.fault.as_ref().and_then(|f| f.draw_abort()) {
            return Err(ProxyError::FaultAbort(abort));
        }
        Ok(None)
    }

    /// Phase 3: sends the request to the chosen endpoint and waits for its response head.
    pub async fn upstream_request(
        &self,
        ctx: &mut RequestCtx,
        parts: &mut Parts,
        body: Incoming,
    ) -> Result<Response<Body>, ProxyError> {
        let upgrade = ctx
            .upgrade
            .as_ref()
            .and_then(|_| parts.headers.get(UPGRADE).cloned());
        // An upgrade needs an HTTP/1.1 connection of its own.
        let http2 = ctx.upstream_http2 && upgrade.is_none();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, protocol.clone());
        }
        let mut req_parts = parts.clone();
        if http2 {
            req_parts.version = Version::HTTP_2;
            req_parts.uri = absolute_uri(&parts.uri, &ctx.forward_authority, self.down.target);
        } else {
            req_parts.version = Version::HTTP_11;
            if parts.uri.authority().is_some() && !parts.headers.contains_key(HOST) {
                if let Ok(v) = HeaderValue::from_str(&ctx.forward_authority) {
                    req_parts.headers.insert(HOST, v);
                }
            }
            req_parts.uri = parts
                .uri
                .path_and_query()
                .map(|p| Uri::from(p.clone()))
                .unwrap_or_else(|| Uri::from_static("/"));
        }
        let meta = ConnectMeta {
            baggage: self.down.baggage.clone(),
            forwarded_for: Some(self.down.client_addr),
            traceparent: Some(ctx.trace.traceparent()),
            // The destination's ztunnel believes this only from us, the waypoint in front of it.
            origin: Some(self.down.peer.clone()),
        };
        let timeout = ctx.route.as_ref().and_then(|r| r.timeout);
        let target = self.down.target;
        let send = async {
            let out = Outgoing {
                shared: &self.shared,
                down: &self.down,
                parts: req_parts,
                http2,
                meta,
            };
            if upgrade.is_none() {
                return forward(out, ctx, body).await;
            }
            // An upgrade is sent once, on a connection of its own.
            if ctx.upstream.is_none() {
                ctx.upstream = Some(pick(&out, ctx)?);
            }
            let Some(up) = ctx.upstream.as_ref() else {
                return Err(ProxyError::NoHealthyUpstream(self.down.destination.name()));
            };
            let body = CountingBody::new(body, ctx.request_body_bytes.clone()).boxed();
            let req = Request::from_parts(out.parts, body);
            self.shared
                .upstreams
                .send_upgrade(up, &out.meta, req)
                .await
                .map(|r| r.map(|b| b.map_err(Into::into).boxed()))
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, send).await.map_err(|_| {
                ProxyError::UpstreamTimeout(ctx.upstream.as_ref().map_or(target, |u| u.addr))
            })?,
            None => send.await,
        }
    }

    /// Phase 4: notes what the upstream answered and prepares the response for the client.
    pub fn upstream_response(
        &self,
        ctx: &mut RequestCtx,
        mut resp: Response<Body>,
    ) -> Response<Body> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let downstream_upgrade = ctx.upgrade.take();
        if let (true, Some(downstream)) = (switching, downstream_upgrade) {
            let upstream = hyper::upgrade::on(&mut resp);
            let target = ctx.upstream.as_ref().map(|u| u.addr);
            tokio::spawn(async move {
                match tokio::try_join!(downstream, upstream) {
                    Ok((down, up)) => {
                        let mut down = NoAbort(TokioIo::new(down));
                        let mut up = NoAbort(TokioIo::new(up));
                        let moved = mesh::copy::copy_bidirectional(&mut down, &mut up).await;
                        tracing::debug!(upstream = ?target, ?moved, "upgraded connection closed");
                    }
                    Err(e) => tracing::debug!(upstream = ?target, error = %e, "upgrade failed"),
                }
            });
        }
        let (mut parts, body) = resp.into_parts();
        let upgrade_headers = switching.then(|| {
            (
                parts.headers.get(CONNECTION).cloned(),
                parts.headers.get(UPGRADE).cloned(),
            )
        });
        strip_hop_by_hop(&mut parts.headers);
        if let Some((connection, upgrade)) = upgrade_headers {
            for (name, value) in [(CONNECTION, connection), (UPGRADE, upgrade)] {
                if let Some(v) = value {
                    parts.headers.insert(name, v);
                }
            }
        }
        ctx.status = Some(parts.status);
        if let Some(s) = parts
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
        {
            ctx.grpc_status = Some(s.to_string());
        }
        if let Some(rule) = ctx.route.as_ref().and_then(|r| r.rule.as_ref()) {
            for f in &rule.filters {
                if let Filter::ResponseHeaders(m) = f {
                    m.apply(&mut parts.headers);
                }
            }
        }
        Response::from_parts(parts, body)
    }
}

/// What the proxy phases produced: the upstream's response, or one the waypoint made.
enum Reply {
    Upstream(Response<Body>),
    Local(Response<Body>),
}

pub(crate) fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// The upstream protocol: what the backend service's port declares (`appProtocol`), else
/// what the client spoke (Istio's choice for ports whose protocol is detected).
fn upstream_speaks_h2(declared: Option<AppProtocol>, downstream: Protocol) -> bool {
    match declared {
        Some(AppProtocol::Http11) => false,
        Some(AppProtocol::Http2 | AppProtocol::Grpc) => true,
        _ => downstream == Protocol::Http2,
    }
}

/// What a valid token asks of the request before it goes on: claims copied into headers, and
/// the token itself removed unless its rule forwards it.
fn apply_authentication(parts: &mut Parts, authenticated: Authenticated) {
    for (name, value) in authenticated.add_headers {
        parts.headers.insert(name, value);
    }
    for location in authenticated.remove {
        match location {
            TokenLocation::Header(name) => {
                parts.headers.remove(name);
            }
            TokenLocation::Param(param) => {
                let Some(query) = parts.uri.query() else {
                    continue;
                };
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| kv.split('=').next() != Some(param.as_str()))
                    .collect();
                let path = parts.uri.path();
                let pq = if kept.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}?{}", kept.join("&"))
                };
                let mut uri = parts.uri.clone().into_parts();
                if let Ok(pq) = pq.parse() {
                    uri.path_and_query = Some(pq);
                    if let Ok(new) = Uri::from_parts(uri) {
                        parts.uri = new;
                    }
                }
            }
        }
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols (`Connection: upgrade` and an
/// `Upgrade` header).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes connection-scoped headers (and those `Connection` names); keeps `te: trailers`,
/// which gRPC needs end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if name != TE {
            headers.remove(name);
        }
    }
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    let trailers_only = headers
        .get_all(TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(TE);
    if trailers_only {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

fn absolute_uri(uri: &Uri, authority: &str, target: SocketAddr) -> Uri {
    if uri.scheme().is_some() && uri.authority().is_some() {
        return uri.clone();
    }
    let authority = if authority.is_empty() {
        target.to_string()
    } else {
        authority.to_string()
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| uri.clone())
}

/// Phase 5: metrics and the access-log line, once the response body has ended.
pub fn logging(shared: &Shared, mut ctx: RequestCtx, response_head_bytes: u64, end: BodyEnd) {
    if let Some(g) = end.grpc_status {
        ctx.grpc_status = Some(g);
    }
    if ctx.flag.is_none() && !end.complete {
        // Cut short mid-body: by the upstream when it reported an error, else by the client.
        ctx.flag = Some(if end.error.is_some() { "UPE" } else { "DC" });
        ctx.error = end.error.or(ctx.error);
    }
    let duration = ctx.start.elapsed();
    let src = PeerInfo {
        workload: ctx.down.source.clone(),
        identity: Some(ctx.down.peer.clone()),
    };
    let dst = PeerInfo {
        workload: ctx.upstream.as_ref().map(|u| u.workload.clone()),
        identity: ctx.upstream.as_ref().map(|u| u.workload.identity.clone()),
    };
    let service = ctx
        .upstream
        .as_ref()
        .and_then(|u| u.service.clone())
        .or_else(|| ctx.down.destination.service().cloned());
    let mut labels = HttpLabels::new(&src, &dst, &service);
    labels.request_protocol = match ctx.protocol {
        RequestProtocol::Http => "http",
        RequestProtocol::Grpc => "grpc",
    }
    .to_string();
    let status = ctx.status.map_or(0, |s| s.as_u16());
    labels.response_code = status.to_string();
    if let Some(g) = &ctx.grpc_status {
        labels.grpc_response_status.clone_from(g);
    }
    let flags = response_flags(&ctx);
    labels.response_flags.clone_from(&flags);
    let request_bytes = ctx.request_head_bytes + ctx.request_body_bytes.load(Ordering::Relaxed);
    shared.telemetry.record_request(&RequestRecord {
        labels,
        duration_ms: duration.as_secs_f64() * 1000.0,
        request_bytes,
        response_bytes: response_head_bytes + end.bytes,
    });
    let upstream = ctx
        .upstream
        .as_ref()
        .map_or_else(|| "-".to_string(), |u| u.addr.to_string());
    let dst_identity = ctx
        .upstream
        .as_ref()
        .map_or_else(|| "-".to_string(), |u| u.workload.identity.to_string());
    tracing::info!(
        target: "access",
        method = %ctx.method,
        authority = %ctx.authority,
        path = %ctx.path,
        protocol = %ctx.down.protocol,
        status,
        grpc_status = ctx.grpc_status.as_deref().unwrap_or("-"),
        duration_ms = duration.as_millis() as u64,
        request_bytes,
        response_bytes = end.bytes,
        upstream = %upstream,
        destination = %ctx.down.destination.name(),
        src_identity = %ctx.down.peer,
        dst_identity = %dst_identity,
        response_flags = %flags,
        tries = ctx.tries,
        trace_id = %ctx.trace.trace_id_hex(),
        request_id = %ctx.request_id,
        error = ctx.error.as_deref().unwrap_or("-"),
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_but_te_trailers_kept() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-keep"], "1");
    }

    #[test]
    fn h2_upstream_uris_are_absolute() {
        let target: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let u = absolute_uri(&Uri::from_static("/a?b=1"), "svc.ns:80", target);
        assert_eq!(u.to_string(), "http://svc.ns:80/a?b=1");
        let u = absolute_uri(&Uri::from_static("/"), "", target);
        assert_eq!(u.to_string(), "http://10.0.0.1:80/");
    }
}
