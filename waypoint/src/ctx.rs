//! The state of one request and of the tunnel it came on, shared by the request's phases
//! ([`crate::http`], [`crate::forward`], [`crate::authz`], [`crate::reply`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, HOST};
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode};
use mesh::hbone::Baggage;
use mesh::model::Workload;
use mesh::Identity;
use tokio::time::Instant;

use crate::conn_pool::Permit;
use crate::detect::Protocol;
use crate::route::RouteDecision;
use crate::select::{Destination, Upstream};
use crate::trace::TraceContext;

/// One accepted tunnel: who sent it and what it addresses. Shared by its requests.
#[derive(Debug)]
pub struct Downstream {
    /// The client's verified identity (the TLS peer of the HBONE connection).
    pub peer: Identity,
    /// The HBONE connection's source address.
    pub peer_addr: SocketAddr,
    /// The original client address (`forwarded` when given, else the peer address).
    pub client_addr: SocketAddr,
    /// The client's workload, when the store knows it and its identity matches.
    pub source: Option<Arc<Workload>>,
    /// The CONNECT authority: the original destination.
    pub target: SocketAddr,
    /// What the target names.
    pub destination: Destination,
    /// The client's `baggage`, forwarded upstream.
    pub baggage: Option<Baggage>,
    /// What the tunnel carries.
    pub protocol: Protocol,
}

/// `request_protocol` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestProtocol {
    /// Plain HTTP (1.1 or 2).
    Http,
    /// gRPC (`content-type: application/grpc*`).
    Grpc,
}

/// The state of one request, shared by its phases.
#[derive(Debug)]
pub struct RequestCtx {
    /// The tunnel it came on.
    pub down: Arc<Downstream>,
    /// When its headers arrived.
    pub start: Instant,
    /// Method.
    pub method: Method,
    /// `:authority` or `Host`.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// HTTP or gRPC.
    pub protocol: RequestProtocol,
    /// W3C trace context (our span).
    pub trace: TraceContext,
    /// `x-request-id` (the client's, or a new one).
    pub request_id: String,
    /// Size of the request head.
    pub request_head_bytes: u64,
    /// Request body bytes forwarded so far.
    pub request_body_bytes: Arc<AtomicU64>,
    /// The route taken.
    pub route: Option<RouteDecision>,
    /// The endpoint chosen.
    pub upstream: Option<Upstream>,
    /// Whether the upstream request goes as HTTP/2 (decided when routing).
    pub upstream_http2: bool,
    /// Status sent to the client.
    pub status: Option<StatusCode>,
    /// gRPC status (header or trailer).
    pub grpc_status: Option<String>,
    /// Envoy response flag.
    pub flag: Option<&'static str>,
    /// What went wrong, for the access log.
    pub error: Option<String>,
    /// The client's side of a protocol upgrade (WebSocket...), when it asked for one.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The authority sent upstream (after a URL rewrite).
    pub forward_authority: String,
    /// Counts the request against the backend's connection pool limits until it ends.
    pub pool_permit: Option<Permit>,
    /// Tries sent upstream.
    pub tries: u32,
    /// The retry policy gave up on a retriable outcome (flag `URX`).
    pub retries_exhausted: bool,
    /// A fault delay was injected (flag `DI`).
    pub delay_injected: bool,
}

impl RequestCtx {
    pub(crate) fn new(down: Arc<Downstream>, parts: &Parts) -> Self {
        let upstream_http2 = down.protocol == Protocol::Http2;
        let authority = parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let protocol = match parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes) {
            Some(ct) if ct.starts_with(b"application/grpc") => RequestProtocol::Grpc,
            _ => RequestProtocol::Http,
        };
        let head = parts.method.as_str().len()
            + parts.uri.to_string().len()
            + parts
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        let forward_authority = authority.clone();
        RequestCtx {
            down,
            start: Instant::now(),
            method: parts.method.clone(),
            authority,
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string()),
            protocol,
            trace: TraceContext::from_headers(&parts.headers),
            request_id: String::new(),
            request_head_bytes: head as u64,
            request_body_bytes: Arc::default(),
            route: None,
            upstream: None,
            upstream_http2,
            status: None,
            grpc_status: None,
            flag: None,
            error: None,
            upgrade: None,
            forward_authority,
            pool_permit: None,
            tries: 0,
            retries_exhausted: false,
            delay_injected: false,
        }
    }
}
