//! The HBONE CONNECT request: building it on the client, checking it on the server.
//!
//! `:method CONNECT`, `:authority <ip>:<port>` (IPv6 in brackets), plus `baggage`, `forwarded`
//! and `traceparent`. A waypoint also names the client it proxies for in
//! `x-forwarded-client-cert` (Envoy's XFCC form, `URI=<spiffe id>`), which the destination
//! trusts only from the waypoint that serves it. Everything here is pure and is the target of
//! the `connect_request` fuzzer.

use std::fmt::Write as _;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};

use super::RESERVED_PORTS;
use crate::identity::Identity;

/// The header in which a waypoint names the client it proxies for.
pub const ORIGIN_HEADER: &str = "x-forwarded-client-cert";

/// Why a CONNECT request is refused with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Not a CONNECT.
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    /// No `:authority`.
    #[error("CONNECT has no :authority")]
    MissingAuthority,
    /// The authority is not `<ip>:<port>`.
    #[error("authority {0:?} is not <ip>:<port>")]
    BadAuthority(String),
    /// The target port belongs to the tunnel itself.
    #[error("port {0} is a tunnel port and never a valid target")]
    ReservedPort(u16),
}

impl ConnectError {
    /// The status code the server answers with.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// Checks a CONNECT request and returns its target address.
pub fn parse_target<B>(req: &Request<B>) -> Result<SocketAddr, ConnectError> {
    if req.method() != Method::CONNECT {
        return Err(ConnectError::NotConnect(req.method().to_string()));
    }
    let authority = req
        .uri()
        .authority()
        .ok_or(ConnectError::MissingAuthority)?
        .as_str();
    parse_authority(authority)
}

/// Parses `<ip>:<port>` (IPv6 bracketed) and refuses the tunnel's own ports.
pub fn parse_authority(authority: &str) -> Result<SocketAddr, ConnectError> {
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| ConnectError::BadAuthority(authority.chars().take(256).collect()))?;
    if addr.port() == 0 {
        return Err(ConnectError::BadAuthority(authority.to_string()));
    }
    if RESERVED_PORTS.contains(&addr.port()) {
        return Err(ConnectError::ReservedPort(addr.port()));
    }
    Ok(addr)
}

/// Who is calling, as carried in the `baggage` header (W3C baggage, Istio's keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Baggage {
    /// Source cluster id.
    pub cluster: Option<String>,
    /// Source namespace.
    pub namespace: Option<String>,
    /// Source workload kind (`deployment`, `pod`, ...), used to pick the name key.
    pub workload_type: Option<String>,
    /// Source workload name.
    pub workload_name: Option<String>,
    /// Source canonical service.
    pub service: Option<String>,
    /// Source canonical revision.
    pub revision: Option<String>,
}

impl Baggage {
    /// Encodes as a `baggage` header value.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                if !out.is_empty() {
                    out.push(',');
                }
                let _ = write!(out, "{k}={v}");
            }
        };
        put("k8s.cluster.name", &self.cluster);
        put("k8s.namespace.name", &self.namespace);
        let kind = self.workload_type.as_deref().unwrap_or("deployment");
        put(&format!("k8s.{kind}.name"), &self.workload_name);
        put("service.name", &self.service);
        put("service.version", &self.revision);
        out
    }

    /// Parses a `baggage` header value, ignoring keys it does not know.
    pub fn parse(value: &str) -> Baggage {
        let mut b = Baggage::default();
        for item in value.split(',') {
            let Some((k, v)) = item.trim().split_once('=') else {
                continue;
            };
            // Drop W3C properties (`;prop`) after the value.
            let v = v.split(';').next().unwrap_or_default().trim().to_string();
            match k.trim() {
                "k8s.cluster.name" => b.cluster = Some(v),
                "k8s.namespace.name" => b.namespace = Some(v),
                "service.name" => b.service = Some(v),
                "service.version" => b.revision = Some(v),
                k => {
                    if let Some(kind) = k.strip_prefix("k8s.").and_then(|r| r.strip_suffix(".name"))
                    {
                        b.workload_type = Some(kind.to_string());
                        b.workload_name = Some(v);
                    }
                }
            }
        }
        b
    }
}

/// What the client tells the server beyond the target.
#[derive(Debug, Clone, Default)]
pub struct ConnectMeta {
    /// Source workload metadata for the `baggage` header.
    pub baggage: Option<Baggage>,
    /// The original client address, for `forwarded: for="..."`.
    pub forwarded_for: Option<SocketAddr>,
    /// A W3C trace context; a fresh one is generated when absent.
    pub traceparent: Option<String>,
    /// Set by a waypoint: the verified identity of the client it proxies for.
    pub origin: Option<Identity>,
}

/// Builds the CONNECT request for `target`.
pub fn build_request(target: SocketAddr, meta: &ConnectMeta) -> Request<()> {
    // A SocketAddr always formats as a valid authority.
    let uri = Uri::builder()
        .authority(target.to_string())
        .build()
        .unwrap_or_default();
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    if let Some(b) = &meta.baggage {
        insert(headers, "baggage", &b.encode());
    }
    if let Some(f) = meta.forwarded_for {
        insert(headers, "forwarded", &format!("for=\"{f}\""));
    }
    if let Some(origin) = &meta.origin {
        insert(headers, ORIGIN_HEADER, &format!("URI={origin}"));
    }
    let trace = meta.traceparent.clone().unwrap_or_else(new_traceparent);
    insert(headers, "traceparent", &trace);
    req
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // Values come from our own metadata; one that is not a valid header value is dropped.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The `for=` address of a `forwarded` header, if it parses.
pub fn forwarded_for(headers: &HeaderMap) -> Option<SocketAddr> {
    let value = headers.get("forwarded")?.to_str().ok()?;
    value.split([';', ',']).find_map(|part| {
        let v = part.trim().strip_prefix("for=")?;
        v.trim_matches('"').parse().ok()
    })
}

/// The client identity a waypoint named in [`ORIGIN_HEADER`], if it parses. Only meaningful
/// when the peer is a waypoint trusted for the destination: anyone else may write anything.
pub fn origin_identity(headers: &HeaderMap) -> Option<Identity> {
    let value = headers.get(ORIGIN_HEADER)?.to_str().ok()?;
    value.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        k.eq_ignore_ascii_case("uri")
            .then(|| v.trim_matches('"').parse().ok())
            .flatten()
    })
}

/// A new random W3C `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>() | 1;
    let span: u64 = rand::random::<u64>() | 1;
    format!("00-{trace:032x}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_ipv4_and_ipv6_targets() {
        for target in ["10.0.0.1:8080", "[fd00::1]:443"] {
            let addr: SocketAddr = target.parse().expect("addr");
            let req = build_request(addr, &ConnectMeta::default());
            assert_eq!(req.method(), Method::CONNECT);
            assert_eq!(req.uri().authority().map(|a| a.as_str()), Some(target));
            assert_eq!(parse_target(&req), Ok(addr));
            let tp = req.headers()["traceparent"].to_str().expect("ascii");
            assert_eq!(tp.len(), 55, "{tp}");
        }
    }

    #[test]
    fn refuses_non_connect_hostnames_and_tunnel_ports() {
        let mut req = build_request(
            "10.0.0.1:80".parse().expect("addr"),
            &ConnectMeta::default(),
        );
        *req.method_mut() = Method::GET;
        assert!(matches!(
            parse_target(&req),
            Err(ConnectError::NotConnect(_))
        ));
        assert!(matches!(
            parse_authority("example.com:80"),
            Err(ConnectError::BadAuthority(_))
        ));
        assert!(matches!(
            parse_authority("10.0.0.1"),
            Err(ConnectError::BadAuthority(_))
        ));
        for port in [15001, 15006, 15008] {
            assert_eq!(
                parse_authority(&format!("10.0.0.1:{port}")),
                Err(ConnectError::ReservedPort(port))
            );
        }
    }

    #[test]
    fn baggage_and_forwarded_round_trip() {
        let b = Baggage {
            cluster: Some("Kubernetes".into()),
            namespace: Some("default".into()),
            workload_type: Some("deployment".into()),
            workload_name: Some("sleep".into()),
            service: Some("sleep".into()),
            revision: Some("v1".into()),
        };
        let meta = ConnectMeta {
            baggage: Some(b.clone()),
            forwarded_for: Some("[fd00::2]:5555".parse().expect("addr")),
            traceparent: None,
            origin: None,
        };
        let req = build_request("10.0.0.1:80".parse().expect("addr"), &meta);
        let baggage = req.headers()["baggage"].to_str().expect("ascii");
        assert_eq!(
            baggage,
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.deployment.name=sleep,service.name=sleep,service.version=v1"
        );
        assert_eq!(Baggage::parse(baggage), b);
        assert_eq!(forwarded_for(req.headers()), meta.forwarded_for);
    }

    #[test]
    fn a_waypoints_origin_identity_round_trips_and_garbage_is_none() {
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/client"
            .parse()
            .expect("identity");
        let meta = ConnectMeta {
            origin: Some(id.clone()),
            ..ConnectMeta::default()
        };
        let req = build_request("10.0.0.1:80".parse().expect("addr"), &meta);
        assert_eq!(
            req.headers()[ORIGIN_HEADER],
            "URI=spiffe://cluster.local/ns/shop/sa/client"
        );
        assert_eq!(origin_identity(req.headers()), Some(id));
        let mut headers = HeaderMap::new();
        assert_eq!(origin_identity(&headers), None);
        headers.insert(ORIGIN_HEADER, HeaderValue::from_static("URI=not-spiffe"));
        assert_eq!(origin_identity(&headers), None);
        headers.insert(
            ORIGIN_HEADER,
            HeaderValue::from_static(
                "By=spiffe://cluster.local/ns/a/sa/w;URI=spiffe://cluster.local/ns/b/sa/c",
            ),
        );
        assert_eq!(
            origin_identity(&headers).map(|i| i.to_string()),
            Some("spiffe://cluster.local/ns/b/sa/c".into())
        );
    }
}
