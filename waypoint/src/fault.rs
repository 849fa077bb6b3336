//! Fault injection (Istio VirtualService `fault`): delay a share of requests, or answer a
//! share with an error instead of forwarding them.
//!
//! Runs in the route phase, after a rule is chosen and before any upstream work: a delayed
//! request then goes on as usual (flag `DI`); an aborted one gets a local reply (flag `FI`):
//! its HTTP status, or for a gRPC route an HTTP 200 trailers-only response with its
//! `grpc-status`.

use std::time::Duration;

/// Faults of a rule.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FaultInjection {
    /// Delay before forwarding.
    pub delay: Option<FaultDelay>,
    /// Error answered instead of forwarding.
    pub abort: Option<FaultAbort>,
}

/// Delays a share of requests.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FaultDelay {
    /// How long.
    pub delay: Duration,
    /// Share of requests, 0 to 100.
    pub percent: f64,
}

/// What an abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AbortError {
    /// This HTTP status.
    Http(u16),
    /// This gRPC status (HTTP 200, trailers-only).
    Grpc(u8),
}

/// Answers a share of requests with an error.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FaultAbort {
    /// The error.
    pub error: AbortError,
    /// Share of requests, 0 to 100.
    pub percent: f64,
}

/// Whether a request falls in a share of `percent` (0 to 100).
pub fn roll(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::random::<f64>() * 100.0 < percent)
}

impl FaultInjection {
    /// The delay to inject into this request, if it is drawn.
    pub fn draw_delay(&self) -> Option<Duration> {
        self.delay
            .as_ref()
            .filter(|d| roll(d.percent))
            .map(|d| d.delay)
    }

    /// The abort for this request, if it is drawn.
    pub fn draw_abort(&self) -> Option<AbortError> {
        self.abort
            .as_ref()
            .filter(|a| roll(a.percent))
            .map(|a| a.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_zero_and_hundred_are_never_and_always() {
        assert!((0..100).all(|_| roll(100.0)));
        assert!((0..100).all(|_| !roll(0.0)));
        let half = (0..2000).filter(|_| roll(50.0)).count();
        assert!((800..1200).contains(&half), "{half}");
    }
}
