//! The tries of one request: the body of the upstream request phase.
//!
//! The request body is kept when a retry or a mirror may need it again ([`RequestBody`]);
//! mirrors are spawned ([`crate::mirror`]); then each try picks an endpoint of the backend
//! service (ejected outliers skipped), takes a connection pool permit (`UO` when full), is
//! sent within the per-try timeout, reports its outcome to outlier detection, and is judged by
//! the retry policy ([`crate::retry`]). The caller bounds the whole loop with the route's
//! request timeout.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::request::Parts;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mesh::hbone::ConnectMeta;

use crate::body::CountingBody;
use crate::ctx::{Downstream, RequestCtx};
use crate::error::{Blame, ProxyError};
use crate::fault::roll;
use crate::filters::Filter;
use crate::mirror::{self, MirrorRequest, RequestMirror};
use crate::outlier::TryOutcome;
use crate::retry::RequestBody;
use crate::select::{pick_service_endpoint, pick_workload, Destination, Upstream};
use crate::upstream::Body;
use crate::Shared;

/// A request ready to go upstream: its head (hop-by-hop headers out, URI in the upstream
/// form) and how it goes.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Shared state.
    pub shared: &'a Arc<Shared>,
    /// The tunnel it came on.
    pub down: &'a Downstream,
    /// The head for the upstream.
    pub parts: Parts,
    /// HTTP/2 upstream.
    pub http2: bool,
    /// CONNECT metadata.
    pub meta: ConnectMeta,
}

/// Picks an endpoint for one try.
pub fn pick(out: &Outgoing<'_>, ctx: &RequestCtx) -> Result<Upstream, ProxyError> {
    let s = out.shared;
    let hbone_port = s.config.endpoint_hbone_port;
    let target = out.down.target;
    match (&out.down.destination, &ctx.route) {
        (Destination::Service(_), Some(route)) => pick_service_endpoint(
            &s.store,
            &s.balancer,
            route.lb_policy,
            &route.service,
            route.port,
            target,
            hbone_port,
            &|uid| {
                route.policy.outlier_detection.is_some()
                    && s.outliers.is_ejected(&route.service, uid)
            },
        ),
        (Destination::Workload(w), _) => pick_workload(&s.balancer, w, target, hbone_port),
        (Destination::Service(s), None) => Err(ProxyError::NoRoute(s.key())),
    }
}

/// Sends the request, retrying as the route's policy says; the last try's endpoint and
/// permit are left in `ctx`.
pub async fn forward(
    out: Outgoing<'_>,
    ctx: &mut RequestCtx,
    body: Incoming,
) -> Result<Response<Body>, ProxyError> {
    let rule = ctx.route.as_ref().and_then(|r| r.rule.clone());
    let policy = ctx
        .route
        .as_ref()
        .map(|r| r.policy.clone())
        .unwrap_or_default();
    let service = ctx.route.as_ref().map(|r| r.service.clone());
    let retry = rule
        .as_ref()
        .and_then(|r| r.retry.clone())
        .filter(|r| r.attempts > 0);
    let mirrors: Vec<RequestMirror> = rule
        .iter()
        .flat_map(|r| r.filters.iter())
        .filter_map(|f| match f {
            Filter::Mirror(m) if roll(m.percent) => Some(m.clone()),
            _ => None,
        })
        .collect();
    let keep = retry.is_some() || !mirrors.is_empty();
    let mut body = RequestBody::new(body, keep, ctx.request_body_bytes.clone())
        .await
        .map_err(|e| ProxyError::DownstreamBody(e.to_string()))?;
    if let RequestBody::Buffered(data, trailers) = &body {
        ctx.request_body_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        for m in &mirrors {
            let copy = MirrorRequest {
                parts: out.parts.clone(),
                body: data.clone(),
                trailers: trailers.clone(),
                port: out.down.target.port(),
                target: out.down.target,
                http2: out.http2,
                meta: out.meta.clone(),
            };
            mirror::spawn(out.shared.clone(), m, copy);
        }
    }
    let per_try = retry
        .as_ref()
        .and_then(|r| r.per_try_timeout)
        .or_else(|| rule.as_ref().and_then(|r| r.backend_timeout));
    let attempts = retry.as_ref().map_or(0, |r| r.attempts);
    let mut retried = 0;
    loop {
        let up = pick(&out, ctx)?;
        let permit = match (&policy.connection_pool, &service) {
            (Some(pool), Some(svc)) => Some(
                out.shared
                    .pool_limits
                    .request(svc, pool, out.http2)
                    .ok_or_else(|| ProxyError::Overflow(svc.clone()))?,
            ),
            _ => None,
        };
        let req_body = match &body {
            RequestBody::Buffered(..) | RequestBody::Recorded(_) => body.take(),
            RequestBody::Streaming(_) => body
                .take()
                .map(|b| CountingBody::new(b, ctx.request_body_bytes.clone()).boxed()),
        };
        let Some(req_body) = req_body else {
            return Err(ProxyError::DownstreamBody("body already sent".into()));
        };
        let req = Request::from_parts(out.parts.clone(), req_body);
        let send = out.shared.upstreams.send(&up, &out.meta, out.http2, req);
        let result = match per_try {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .unwrap_or(Err(ProxyError::UpstreamTimeout(up.addr))),
            None => send.await,
        };
        if let (Some(od), Some(svc)) = (&policy.outlier_detection, &service) {
            let outcome = match &result {
                Ok(r) if r.status().is_server_error() => Some(TryOutcome::Error),
                Ok(_) => Some(TryOutcome::Success),
                Err(e) if e.blame() == Blame::Upstream => Some(TryOutcome::Error),
                Err(_) => None,
            };
            if let Some(outcome) = outcome {
                out.shared
                    .outliers
                    .record(svc, &up.workload.uid, up.candidates, od, outcome);
            }
        }
        let retriable = match (&retry, &result) {
            (Some(p), Ok(r)) => p.retries_response(
                r.status(),
                r.headers().get("grpc-status").and_then(|v| v.to_str().ok()),
            ),
            (Some(p), Err(e)) => p.retries_error(e),
            (None, _) => false,
        };
        ctx.upstream = Some(up);
        ctx.pool_permit = permit;
        ctx.tries = retried + 1;
        if !retriable || !body.replayable() {
            return result.map(boxed);
        }
        let budget = match (&policy.connection_pool, &service) {
            (Some(pool), Some(svc)) => out.shared.pool_limits.retry(svc, pool).map(Some),
            _ => Some(None),
        };
        let (Some(p), true, Some(_retry_permit)) = (&retry, retried < attempts, budget) else {
            ctx.retries_exhausted = true;
            return result.map(boxed);
        };
        retried += 1;
        let wait = p.backoff(retried);
        tracing::debug!(
            retry = retried,
            wait_ms = wait.as_millis() as u64,
            outcome = ?result.as_ref().map(|r| r.status()).map_err(|e| e.flag()),
            "retrying"
        );
        drop(result);
        tokio::time::sleep(wait).await;
    }
}

fn boxed(resp: Response<Incoming>) -> Response<Body> {
    resp.map(|b| b.map_err(Into::into).boxed())
}
