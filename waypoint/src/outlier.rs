//! Outlier detection per backend service (DestinationRule `outlierDetection`): an endpoint
//! that answers `consecutive_5xx` 5xx responses (or fails to connect, resets, or times out)
//! in a row is ejected for `base_ejection_time` times the number of times it has been
//! ejected, unless that would eject more than `max_ejection_percent` of the service's
//! endpoints; the balancer skips ejected endpoints until their time is up.
//!
//! Fed from the upstream request phase after every try; read by endpoint selection. Ejections
//! end lazily: an endpoint is back as soon as its ejection time has passed (Envoy reconsiders
//! at each `interval`; the interval only bounds how soon a returning endpoint is counted as
//! fresh: one that stays healthy for an interval has its ejection count reset).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Ejection settings of one service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive errors that eject; 0 never ejects.
    pub consecutive_5xx: u32,
    /// How often ejections are reconsidered.
    pub interval: Duration,
    /// Ejection time, multiplied by the times the endpoint was ejected.
    pub base_ejection_time: Duration,
    /// At most this share of the service's endpoints ejected at once, 0 to 100.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

#[derive(Debug, Default)]
struct EndpointState {
    consecutive: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
    healthy_since: Option<Instant>,
}

/// Outcome of one try, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryOutcome {
    /// A response below 500.
    Success,
    /// A 5xx response, a connect failure, a reset or a timeout.
    Error,
}

/// Per service, per endpoint error counts and ejections, shared by every request.
#[derive(Debug, Default)]
pub struct Outliers {
    state: Mutex<HashMap<String, HashMap<String, EndpointState>>>,
}

impl Outliers {
    /// Whether `endpoint` of `service` is ejected now.
    pub fn is_ejected(&self, service: &str, endpoint: &str) -> bool {
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .get(service)
            .and_then(|m| m.get(endpoint))
            .and_then(|s| s.ejected_until)
            .is_some_and(|until| now < until)
    }

    /// Records a try's outcome against `endpoint` of `service` (which has `endpoints`
    /// endpoints); returns true when it ejected the endpoint.
    pub fn record(
        &self,
        service: &str,
        endpoint: &str,
        endpoints: usize,
        config: &OutlierDetection,
        outcome: TryOutcome,
    ) -> bool {
        if config.consecutive_5xx == 0 {
            return false;
        }
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if outcome == TryOutcome::Success
            && state.get(service).is_none_or(|m| !m.contains_key(endpoint))
        {
            // Nothing to reset: keep the map to endpoints that ever failed.
            return false;
        }
        let of_service = state.entry(service.to_string()).or_default();
        let ejected_now = of_service
            .values()
            .filter(|e| e.ejected_until.is_some_and(|u| now < u))
            .count();
        let e = of_service.entry(endpoint.to_string()).or_default();
        if e.ejected_until.is_some_and(|u| now >= u) {
            e.ejected_until = None;
            e.healthy_since = Some(now);
        }
        match outcome {
            TryOutcome::Success => {
                e.consecutive = 0;
                if e.healthy_since
                    .is_some_and(|t| now.duration_since(t) >= config.interval)
                {
                    e.times_ejected = 0;
                    e.healthy_since = None;
                }
                false
            }
            TryOutcome::Error => {
                e.consecutive += 1;
                e.healthy_since = None;
                let allowed = (endpoints * config.max_ejection_percent as usize) / 100;
                if e.consecutive < config.consecutive_5xx
                    || e.ejected_until.is_some()
                    || ejected_now + 1 > allowed.max(usize::from(endpoints > 1))
                {
                    return false;
                }
                e.times_ejected += 1;
                e.consecutive = 0;
                e.ejected_until = Some(now + config.base_ejection_time * e.times_ejected);
                tracing::info!(
                    service,
                    endpoint,
                    times = e.times_ejected,
                    "outlier endpoint ejected"
                );
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn consecutive_errors_eject_for_a_growing_time() {
        let o = Outliers::default();
        let c = OutlierDetection {
            consecutive_5xx: 3,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 50,
        };
        for _ in 0..2 {
            assert!(!o.record("s", "a", 2, &c, TryOutcome::Error));
        }
        assert!(!o.is_ejected("s", "a"));
        assert!(o.record("s", "a", 2, &c, TryOutcome::Error));
        assert!(o.is_ejected("s", "a"));
        // At most half of two endpoints: b cannot be ejected too.
        for _ in 0..3 {
            assert!(!o.record("s", "b", 2, &c, TryOutcome::Error));
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!o.is_ejected("s", "a"));
        for _ in 0..3 {
            o.record("s", "a", 2, &c, TryOutcome::Error);
        }
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(
            o.is_ejected("s", "a"),
            "second ejection lasts twice as long"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!o.is_ejected("s", "a"));
    }
}
