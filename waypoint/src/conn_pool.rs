//! Connection pool limits per backend service (DestinationRule `connectionPool`): a request
//! that would exceed them is answered 503 with flag `UO` (upstream overflow) without being
//! sent.
//!
//! Checked in the upstream request phase, before each try. The waypoint counts requests in
//! flight to the service (from the try until the response body ends): at most
//! `max_requests`, and for HTTP/1.1 (one request per connection at a time) at most
//! `max_connections + max_pending`. Retries in flight count against `max_retries`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limits towards one service's endpoints; 0 means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// HTTP/1.1 connections (each carries one request at a time).
    pub max_connections: u32,
    /// HTTP/1.1 requests waiting for a connection.
    pub max_pending: u32,
    /// Requests in flight (any protocol).
    pub max_requests: u32,
    /// Requests per upstream connection (not enforced yet).
    pub max_requests_per_connection: u32,
    /// Retries in flight.
    pub max_retries: u32,
    /// Connect timeout (not enforced yet: the HBONE pool's applies).
    pub connect_timeout: Option<Duration>,
    /// Idle timeout (not enforced yet: the waypoint's applies).
    pub idle_timeout: Option<Duration>,
}

impl ConnectionPool {
    /// The most requests in flight allowed over `http2` or HTTP/1.1; `None`: no limit.
    pub fn request_limit(&self, http2: bool) -> Option<usize> {
        let requests = (self.max_requests > 0).then_some(self.max_requests as usize);
        let h1 = (!http2 && self.max_connections > 0)
            .then(|| self.max_connections as usize + self.max_pending as usize);
        match (requests, h1) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Counts one request (or retry) in flight against a service until dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// In-flight counts per service, shared by every request.
#[derive(Debug, Default)]
pub struct PoolLimits {
    requests: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    retries: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

fn acquire(
    map: &Mutex<HashMap<String, Arc<AtomicUsize>>>,
    service: &str,
    limit: Option<usize>,
) -> Option<Permit> {
    let counter = {
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(service) {
            Some(c) => c.clone(),
            None => map.entry(service.to_string()).or_default().clone(),
        }
    };
    let prev = counter.fetch_add(1, Ordering::AcqRel);
    let permit = Permit(counter);
    match limit {
        Some(max) if prev >= max => None,
        _ => Some(permit),
    }
}

impl PoolLimits {
    /// A permit for one more request to `service`, or `None` when that would overflow.
    pub fn request(&self, service: &str, pool: &ConnectionPool, http2: bool) -> Option<Permit> {
        acquire(&self.requests, service, pool.request_limit(http2))
    }

    /// A permit for one more retry to `service`, or `None` when that would overflow.
    pub fn retry(&self, service: &str, pool: &ConnectionPool) -> Option<Permit> {
        let limit = (pool.max_retries > 0).then_some(pool.max_retries as usize);
        acquire(&self.retries, service, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_over_the_limit_overflow_until_one_ends() {
        let limits = PoolLimits::default();
        let pool = ConnectionPool {
            max_connections: 1,
            max_pending: 1,
            ..Default::default()
        };
        let a = limits.request("s", &pool, false).expect("first");
        let _b = limits.request("s", &pool, false).expect("pending");
        assert!(limits.request("s", &pool, false).is_none());
        // HTTP/2 is not bound by HTTP/1.1 connections.
        assert!(limits.request("s", &pool, true).is_some());
        drop(a);
        assert!(limits.request("s", &pool, false).is_some());
        assert!(limits
            .request("s", &ConnectionPool::default(), false)
            .is_some());
    }
}
