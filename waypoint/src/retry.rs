//! Retries (HTTPRoute `retry`, VirtualService `retries`): which outcomes of a try are tried
//! again, how many times, and after what backoff; and the request body kept to send again.
//!
//! The upstream request phase runs the tries: each one picks an endpoint (ejected ones
//! skipped), is bounded by the per-try timeout, and is judged here. The whole loop is bounded
//! by the route's request timeout. A body of known size is kept whole when at most
//! [`MAX_BUFFERED_BODY`]; one of unknown size is recorded up to that while it streams
//! ([`crate::replay`]); a larger body is sent once, never retried. When the
//! last allowed try still fails, the client gets that try's answer with flag `URX`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};

use crate::error::ProxyError;
use crate::replay::Tee;
use crate::upstream::{Body, BoxError};

pub use crate::replay::MAX_BUFFERED_BODY;

/// Envoy's retry conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx, connect failure, reset or per-try timeout.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503, 504, connect failure, reset or per-try timeout.
    GatewayError,
    /// The upstream reset the request before answering.
    Reset,
    /// The connection to the upstream failed.
    ConnectFailure,
    /// 409.
    Retriable4xx,
    /// The upstream refused the stream (treated as a reset before answering).
    RefusedStream,
    /// gRPC status UNAVAILABLE (14).
    Unavailable,
    /// gRPC status CANCELLED (1).
    Cancelled,
    /// gRPC status DEADLINE_EXCEEDED (4).
    DeadlineExceeded,
    /// gRPC status INTERNAL (13).
    Internal,
    /// gRPC status RESOURCE_EXHAUSTED (8).
    ResourceExhausted,
}

impl RetryOn {
    /// Parses an Envoy condition name (`5xx`, `gateway-error`...); `None` when unknown.
    pub fn parse(s: &str) -> Option<RetryOn> {
        Some(match s.trim() {
            "5xx" => RetryOn::FiveXx,
            "gateway-error" => RetryOn::GatewayError,
            "reset" => RetryOn::Reset,
            "connect-failure" => RetryOn::ConnectFailure,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "refused-stream" => RetryOn::RefusedStream,
            "unavailable" => RetryOn::Unavailable,
            "cancelled" => RetryOn::Cancelled,
            "deadline-exceeded" => RetryOn::DeadlineExceeded,
            "internal" => RetryOn::Internal,
            "resource-exhausted" => RetryOn::ResourceExhausted,
            _ => return None,
        })
    }
}

/// Retries of a rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try (at most `attempts + 1` tries).
    pub attempts: u32,
    /// Response codes retried.
    pub codes: Vec<u16>,
    /// Conditions retried.
    pub retry_on: Vec<RetryOn>,
    /// Base wait between tries (the n-th retry waits a random time below `base * 2^n`).
    pub backoff: Duration,
    /// Longest wait between tries.
    pub max_backoff: Duration,
    /// Limit of one try; `None`: the rule's backend request timeout.
    pub per_try_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            codes: vec![],
            retry_on: vec![
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Unavailable,
                RetryOn::Cancelled,
                RetryOn::Retriable4xx,
            ],
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            per_try_timeout: None,
        }
    }
}

impl RetryPolicy {
    /// Whether a response with `status` (and gRPC status header `grpc`) is tried again.
    pub fn retries_response(&self, status: StatusCode, grpc: Option<&str>) -> bool {
        let code = status.as_u16();
        if self.codes.contains(&code) {
            return true;
        }
        let grpc: Option<u8> = grpc.and_then(|g| g.trim().parse().ok());
        self.retry_on.iter().any(|on| match on {
            RetryOn::FiveXx => code >= 500,
            RetryOn::GatewayError => matches!(code, 502..=504),
            RetryOn::Retriable4xx => code == 409,
            RetryOn::Unavailable => grpc == Some(14),
            RetryOn::Cancelled => grpc == Some(1),
            RetryOn::DeadlineExceeded => grpc == Some(4),
            RetryOn::Internal => grpc == Some(13),
            RetryOn::ResourceExhausted => grpc == Some(8),
            RetryOn::Reset | RetryOn::ConnectFailure | RetryOn::RefusedStream => false,
        })
    }

    /// Whether a try that failed with `err` is tried again.
    pub fn retries_error(&self, err: &ProxyError) -> bool {
        let connect = matches!(
            err,
            ProxyError::UpstreamConnect { .. } | ProxyError::NoCertificate(_)
        );
        let reset = matches!(err, ProxyError::UpstreamReset { .. });
        let timeout = matches!(err, ProxyError::UpstreamTimeout(_));
        self.retry_on.iter().any(|on| match on {
            RetryOn::FiveXx | RetryOn::GatewayError => connect || reset || timeout,
            RetryOn::Reset | RetryOn::RefusedStream => reset,
            RetryOn::ConnectFailure => connect,
            _ => false,
        })
    }

    /// The wait before retry number `retry` (1 for the first retry): random below
    /// `backoff * 2^(retry-1)`, capped at `max_backoff`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff.max(self.backoff));
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(0..ms))
    }
}

/// A request body as the upstream phase holds it: kept whole (replayable), recorded while it
/// streams (replayable while small), or streaming once.
#[derive(Debug)]
pub enum RequestBody {
    /// Kept: data and trailers, sendable any number of times.
    Buffered(Bytes, Option<HeaderMap>),
    /// Of unknown size: streamed to the first try and recorded up to [`MAX_BUFFERED_BODY`].
    Recorded(Tee),
    /// Not kept (too large): sendable once.
    Streaming(Option<Incoming>),
}

impl RequestBody {
    /// When `keep`: keeps `body` whole if its size is known and at most
    /// [`MAX_BUFFERED_BODY`], records it while it streams if its size is unknown; else (or
    /// when larger) streams it once. Recorded bytes are counted into `count`.
    pub async fn new(
        body: Incoming,
        keep: bool,
        count: Arc<AtomicU64>,
    ) -> Result<RequestBody, BoxError> {
        let size = body.size_hint();
        let small = size.upper().is_some_and(|u| u <= MAX_BUFFERED_BODY);
        if keep && size.upper().is_none() {
            return Ok(RequestBody::Recorded(Tee::new(body, count)));
        }
        if !(keep && small) {
            return Ok(RequestBody::Streaming(Some(body)));
        }
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok(RequestBody::Buffered(collected.to_bytes(), trailers))
    }

    /// Whether the body can be sent again.
    pub fn replayable(&self) -> bool {
        match self {
            RequestBody::Buffered(..) => true,
            RequestBody::Recorded(tee) => tee.replayable(),
            RequestBody::Streaming(_) => false,
        }
    }

    /// Its bytes, when kept whole.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            RequestBody::Buffered(b, _) => Some(b),
            RequestBody::Recorded(_) | RequestBody::Streaming(_) => None,
        }
    }

    /// A body for the next try (`None` when a streaming body was already sent).
    pub fn take(&mut self) -> Option<Body> {
        match self {
            RequestBody::Buffered(data, trailers) => Some(replay(data.clone(), trailers.clone())),
            RequestBody::Recorded(tee) => tee.body().map(BodyExt::boxed),
            RequestBody::Streaming(body) => body
                .take()
                .map(|b| b.map_err(|e| -> BoxError { e.into() }).boxed()),
        }
    }
}

/// A body of `data` and then `trailers`.
pub fn replay(data: Bytes, trailers: Option<HeaderMap>) -> Body {
    let full = Full::new(data).map_err(|never| -> BoxError { match never {} });
    match trailers {
        Some(t) => full.with_trailers(async move { Some(Ok(t)) }).boxed(),
        None => full.boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str], codes: &[u16]) -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            codes: codes.to_vec(),
            retry_on: on.iter().filter_map(|s| RetryOn::parse(s)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn conditions_select_what_is_retried() {
        let addr = "10.0.0.1:80".parse().expect("addr");
        let connect = ProxyError::UpstreamConnect {
            addr,
            reason: String::new(),
        };
        let reset = ProxyError::UpstreamReset {
            addr,
            reason: String::new(),
        };
        let p = policy(&["5xx"], &[]);
        assert!(p.retries_response(StatusCode::INTERNAL_SERVER_ERROR, None));
        assert!(!p.retries_response(StatusCode::NOT_FOUND, None));
        assert!(p.retries_error(&connect) && p.retries_error(&reset));
        let p = policy(&["gateway-error"], &[]);
        assert!(!p.retries_response(StatusCode::INTERNAL_SERVER_ERROR, None));
        assert!(p.retries_response(StatusCode::SERVICE_UNAVAILABLE, None));
        let p = policy(&["connect-failure"], &[429]);
        assert!(p.retries_error(&connect) && !p.retries_error(&reset));
        assert!(p.retries_response(StatusCode::TOO_MANY_REQUESTS, None));
        let p = policy(&["unavailable"], &[]);
        assert!(p.retries_response(StatusCode::OK, Some("14")));
        assert!(!p.retries_response(StatusCode::OK, Some("0")));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            ..Default::default()
        };
        for _ in 0..100 {
            assert!(p.backoff(1) < Duration::from_millis(10));
            assert!(p.backoff(5) < Duration::from_millis(40));
        }
    }
}
