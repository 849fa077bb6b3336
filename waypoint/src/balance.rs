//! Endpoint selection per request: power-of-two-choices least-request by default, round robin
//! or random when a service asks for it. Ejected outliers are left out by the caller
//! ([`crate::select::pick_service_endpoint`]).
//!
//! The load of an endpoint is its number of requests in flight through this waypoint: a
//! [`LoadGuard`] counts one from the pick until the response has been sent (or the tunnel
//! closed, for TCP).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How endpoints of one destination are chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LbPolicy {
    /// Two endpoints at random; the one with fewer requests in flight (Envoy's default
    /// `LEAST_REQUEST` with choice count 2).
    #[default]
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
    /// One endpoint at random.
    Random,
}

/// Keeps one in-flight count against an endpoint until dropped.
#[derive(Debug)]
pub struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Shared balancer state: in-flight counts per endpoint and round-robin cursors per
/// destination.
#[derive(Debug, Default)]
pub struct Balancer {
    loads: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    cursors: Mutex<HashMap<String, usize>>,
}

/// Counters kept before stale ones (no request in flight) are dropped.
const PRUNE_AT: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Balancer {
    /// Picks one of `endpoints` (each named by a stable key, e.g. the workload uid) for a
    /// request to `destination`; returns its index and the guard that counts it as loaded.
    /// `None` when `endpoints` is empty.
    pub fn pick(
        &self,
        policy: LbPolicy,
        destination: &str,
        endpoints: &[&str],
    ) -> Option<(usize, LoadGuard)> {
        if endpoints.is_empty() {
            return None;
        }
        let index = match policy {
            LbPolicy::RoundRobin => {
                let mut cursors = lock(&self.cursors);
                let cursor = cursors.entry(destination.to_string()).or_insert(0);
                let i = *cursor % endpoints.len();
                *cursor = cursor.wrapping_add(1);
                i
            }
            LbPolicy::Random => rand::random_range(0..endpoints.len()),
            LbPolicy::LeastRequest if endpoints.len() == 1 => 0,
            LbPolicy::LeastRequest => {
                let a = rand::random_range(0..endpoints.len());
                let mut b = rand::random_range(0..endpoints.len() - 1);
                if b >= a {
                    b += 1;
                }
                let (la, lb) = (self.load(endpoints[a]), self.load(endpoints[b]));
                if la <= lb {
                    a
                } else {
                    b
                }
            }
        };
        let counter = self.counter(endpoints[index]);
        counter.fetch_add(1, Ordering::AcqRel);
        Some((index, LoadGuard(counter)))
    }

    /// Requests in flight to the endpoint `key`.
    pub fn load(&self, key: &str) -> usize {
        lock(&self.loads)
            .get(key)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    fn counter(&self, key: &str) -> Arc<AtomicUsize> {
        let mut loads = lock(&self.loads);
        if loads.len() >= PRUNE_AT && !loads.contains_key(key) {
            loads.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Acquire) > 0);
        }
        loads.entry(key.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_each_in_turn() {
        let b = Balancer::default();
        let eps = ["a", "b", "c"];
        let picks: Vec<usize> = (0..6)
            .map(|_| b.pick(LbPolicy::RoundRobin, "svc", &eps).expect("pick").0)
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert!(b.pick(LbPolicy::RoundRobin, "svc", &[]).is_none());
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let b = Balancer::default();
        let eps = ["busy", "idle"];
        // Hold five requests on "busy".
        let held: Vec<LoadGuard> = (0..5)
            .map(|_| {
                let (_, g) = b
                    .pick(LbPolicy::RoundRobin, "warm", &["busy"])
                    .expect("pick");
                g
            })
            .collect();
        for _ in 0..50 {
            let (i, _g) = b.pick(LbPolicy::LeastRequest, "svc", &eps).expect("pick");
            assert_eq!(eps[i], "idle");
        }
        assert_eq!(b.load("busy"), 5);
        drop(held);
        assert_eq!(b.load("busy"), 0);
    }

    #[test]
    fn least_request_spreads_equal_loads() {
        let b = Balancer::default();
        let eps = ["a", "b"];
        let mut counts = [0usize; 2];
        for _ in 0..200 {
            let (i, _g) = b.pick(LbPolicy::LeastRequest, "svc", &eps).expect("pick");
            counts[i] += 1;
        }
        // With two endpoints and no load, the pick is the first of two distinct random draws.
        assert!(counts[0] > 50 && counts[1] > 50, "{counts:?}");
    }
}
