//! Answers the waypoint makes itself: local replies for failed phases (HTTP status and
//! Envoy response flag, or for gRPC HTTP 200 with `grpc-status`), and the response flags of a
//! request as logged.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response};
use http_body_util::{BodyExt, Full};

use crate::ctx::{RequestCtx, RequestProtocol};
use crate::error::ProxyError;
use crate::route::RouteKind;
use crate::upstream::Body;

/// The reply the waypoint sends itself when a phase fails.
pub fn local_reply(ctx: &mut RequestCtx, err: ProxyError) -> Response<Body> {
    tracing::debug!(error = %err, blame = ?err.blame(), "local reply");
    ctx.flag = Some(err.flag());
    ctx.error = Some(err.to_string());
    let grpc_route = ctx
        .route
        .as_ref()
        .and_then(|r| r.rule.as_ref())
        .is_some_and(|r| r.kind == RouteKind::Grpc);
    let grpc_abort = matches!(
        err,
        ProxyError::FaultAbort(crate::fault::AbortError::Grpc(_))
    );
    let mut resp = if ctx.protocol == RequestProtocol::Grpc || grpc_route || grpc_abort {
        let grpc = err.grpc_status().to_string();
        ctx.grpc_status = Some(grpc.clone());
        let mut r = Response::new(Bytes::new());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        if let Ok(v) = HeaderValue::from_str(&grpc) {
            h.insert("grpc-status", v);
        }
        if let Ok(v) = HeaderValue::from_str(body_text(&err)) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        let mut r = Response::new(Bytes::from_static(body_text(&err).as_bytes()));
        *r.status_mut() = err.status();
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    };
    ctx.status = Some(resp.status());
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp.map(|b| Full::new(b).map_err(|never| match never {}).boxed())
}

fn body_text(err: &ProxyError) -> &'static str {
    match err {
        ProxyError::NoRoute(_) => "route not found",
        ProxyError::NoHealthyUpstream(_) => "no healthy upstream",
        ProxyError::NoCluster(_) => "cluster not found",
        ProxyError::UpstreamConnect { .. } | ProxyError::NoCertificate(_) => {
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
        }
        ProxyError::UpstreamReset { .. } => {
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
        }
        ProxyError::UpstreamTimeout(_) => "upstream request timeout",
        ProxyError::Denied(_) => mesh::l7authz::DENIED_BODY,
        ProxyError::Unauthenticated { body, .. } => body,
        ProxyError::FaultAbort(_) => "fault filter abort",
        ProxyError::Overflow(_) => "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ProxyError::DownstreamBody(_) => "bad request body",
    }
}

/// The response flags of a request, Envoy-style comma-joined: `DI` (delay injected), the
/// failure's own flag, `URX` (retries exhausted); `-` for none.
pub fn response_flags(ctx: &RequestCtx) -> String {
    let flags: Vec<&str> = [
        ctx.delay_injected.then_some("DI"),
        ctx.flag,
        ctx.retries_exhausted.then_some("URX"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if flags.is_empty() {
        "-".to_string()
    } else {
        flags.join(",")
    }
}
