//! Data-path errors: who caused each one, whether a retry is safe, and what the client gets
//! (status and Envoy response flag, so dashboards and runbooks written for Istio carry over).

use http::StatusCode;

/// Which party a failure is blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Blame {
    /// The downstream client (bad request, gone away).
    Client,
    /// The upstream endpoint (refused, reset, too slow).
    Upstream,
    /// The waypoint's configuration or itself.
    Internal,
}

/// Why the waypoint answered a request itself instead of with the upstream's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route rule matches the request (`NR`, 404).
    #[error("no route matches {0}")]
    NoRoute(String),
    /// A route names a backend service the waypoint does not know (`NC`, 503).
    #[error("backend service {0} is unknown")]
    NoCluster(String),
    /// The destination has no healthy endpoint (`UH`, 503).
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    /// The HBONE tunnel or HTTP handshake to the endpoint failed (`UF`, 503).
    #[error("upstream connect to {addr} failed: {reason}")]
    UpstreamConnect {
        /// The endpoint (ip:target port).
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// The endpoint closed or reset the request before answering (`UC`, 503).
    #[error("upstream {addr} reset the request: {reason}")]
    UpstreamReset {
        /// The endpoint.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// The route's timeout passed before the response headers arrived (`UT`, 504).
    #[error("upstream {0} did not answer in time")]
    UpstreamTimeout(std::net::SocketAddr),
    /// The request filter refused the request (`RBAC`-style denial, 403).
    #[error("denied: {0}")]
    Denied(String),
    /// A token was present and not valid (401; gRPC status 16).
    #[error("unauthenticated: {reason}")]
    Unauthenticated {
        /// Envoy's body for this failure.
        body: &'static str,
        /// The detail.
        reason: String,
    },
    /// The waypoint has no certificate to present (503, `UF`).
    #[error("no certificate: {0}")]
    NoCertificate(String),
    /// A fault injection aborted the request (`FI`; its HTTP status, or for a gRPC abort
    /// HTTP 200 with its `grpc-status`).
    #[error("fault injected: {0:?}")]
    FaultAbort(crate::fault::AbortError),
    /// The backend service's connection pool limits are reached (`UO`, 503).
    #[error("upstream overflow: connection pool of {0} is full")]
    Overflow(String),
    /// The client's request body failed before it could be kept for retries (`DPE`, 400).
    #[error("request body: {0}")]
    DownstreamBody(String),
}

impl ProxyError {
    /// The HTTP status answered to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
            ProxyError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::DownstreamBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::FaultAbort(crate::fault::AbortError::Http(code)) => {
                StatusCode::from_u16(*code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ProxyError::FaultAbort(crate::fault::AbortError::Grpc(_)) => StatusCode::OK,
            ProxyError::Overflow(_)
            | ProxyError::NoHealthyUpstream(_)
            | ProxyError::NoCluster(_)
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::NoCertificate(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The Envoy response flag for logs and the `response_flags` label.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::NoRoute(_) => "NR",
            ProxyError::NoHealthyUpstream(_) => "UH",
            ProxyError::NoCluster(_) => "NC",
            ProxyError::UpstreamConnect { .. } | ProxyError::NoCertificate(_) => "UF",
            ProxyError::UpstreamReset { .. } => "UC",
            ProxyError::UpstreamTimeout(_) => "UT",
            ProxyError::Denied(_) => "RBAC",
            ProxyError::FaultAbort(_) => "FI",
            ProxyError::Overflow(_) => "UO",
            ProxyError::DownstreamBody(_) => "DPE",
            // Envoy sets no flag for a JWT refusal (only its details say so).
            ProxyError::Unauthenticated { .. } => "-",
        }
    }

    /// Who caused it.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoRoute(_)
            | ProxyError::Denied(_)
            | ProxyError::Unauthenticated { .. }
            | ProxyError::DownstreamBody(_) => Blame::Client,
            ProxyError::FaultAbort(_) | ProxyError::Overflow(_) => Blame::Internal,
            ProxyError::NoHealthyUpstream(_)
            | ProxyError::NoCluster(_)
            | ProxyError::NoCertificate(_) => Blame::Internal,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamTimeout(_) => Blame::Upstream,
        }
    }

    /// Whether sending the request again (to another endpoint) could succeed and is safe:
    /// true only when the upstream never saw the request.
    pub fn is_retry_safe(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect { .. } | ProxyError::NoCertificate(_)
        )
    }

    /// The gRPC status a gRPC client gets for this error (as Envoy maps HTTP statuses).
    pub fn grpc_status(&self) -> u8 {
        match self {
            ProxyError::FaultAbort(crate::fault::AbortError::Grpc(code)) => *code,
            _ => grpc_status_for(self.status()),
        }
    }
}

/// The gRPC status Envoy sends in a local reply with HTTP status `status`.
pub fn grpc_status_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_flags_follow_envoy() {
        let addr = "10.0.0.1:80".parse().expect("addr");
        let cases = [
            (ProxyError::NoRoute("x".into()), 404, "NR", 12),
            (ProxyError::NoHealthyUpstream("x".into()), 503, "UH", 14),
            (ProxyError::NoCluster("x".into()), 503, "NC", 14),
            (
                ProxyError::UpstreamConnect {
                    addr,
                    reason: "refused".into(),
                },
                503,
                "UF",
                14,
            ),
            (ProxyError::UpstreamTimeout(addr), 504, "UT", 14),
            (ProxyError::Denied("p".into()), 403, "RBAC", 7),
        ];
        for (err, status, flag, grpc) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.flag(), flag, "{err}");
            assert_eq!(err.grpc_status(), grpc, "{err}");
        }
        assert!(ProxyError::UpstreamConnect {
            addr,
            reason: String::new()
        }
        .is_retry_safe());
        assert!(!ProxyError::UpstreamTimeout(addr).is_retry_safe());
    }
}
