//! The CA's and the config source's Prometheus metrics (on the monitoring port, beside the
//! config API's in [`crate::xds::metrics`]).
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `istiod_lite_csr_total` | counter | `result`, `reason` | certificate requests: `signed` (`ok`) or `refused` by reason: `unauthenticated`, `bad_csr` (undecodable, or an impersonation that does not match), `identity_not_allowed` (other trust domain, another workload's identity, no such pod on the caller's node), `other` (signing failed) |
//! | `istiod_lite_config_errors` | gauge | | objects (or files) of the config source currently refused; the last good version of each stays in force |
//! | `istiod_lite_config_rejected_reloads_total` | counter | | new configs refused since start |
//! | `istiod_lite_config_updates_total` | counter | | config snapshots built from changes of the source |

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::config_source::ConfigSource;

/// The labels of `istiod_lite_csr_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CsrLabels {
    result: &'static str,
    reason: &'static str,
}

/// Counts certificate requests by outcome.
#[derive(Debug, Clone, Default)]
pub struct CaMetrics {
    csrs: Family<CsrLabels, Counter>,
}

impl CaMetrics {
    /// Creates the family and registers it (prometheus-client adds `_total`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = CaMetrics::default();
        registry.register(
            "istiod_lite_csr",
            "Certificate requests, by result and reason",
            m.csrs.clone(),
        );
        m
    }

    /// Counts a signed certificate.
    pub fn signed(&self) {
        self.csrs
            .get_or_create(&CsrLabels {
                result: "signed",
                reason: "ok",
            })
            .inc();
    }

    /// Counts a refusal answered with `code`.
    pub fn refused(&self, code: Code) {
        let reason = match code {
            Code::Unauthenticated => "unauthenticated",
            Code::InvalidArgument => "bad_csr",
            Code::PermissionDenied => "identity_not_allowed",
            _ => "other",
        };
        self.csrs
            .get_or_create(&CsrLabels {
                result: "refused",
                reason,
            })
            .inc();
    }
}

/// The config source's health, read from the source when scraped.
#[derive(Clone)]
pub struct ConfigMetrics {
    source: Arc<dyn ConfigSource>,
    errors: Gauge,
    rejected: Counter,
    updates: Counter,
}

impl std::fmt::Debug for ConfigMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigMetrics").finish_non_exhaustive()
    }
}

impl ConfigMetrics {
    /// Registers the metrics of `source`, and counts its snapshots from now on (a task on the
    /// current runtime, ending with the source).
    pub fn register(registry: &mut Registry, source: Arc<dyn ConfigSource>) -> Self {
        let m = ConfigMetrics {
            source,
            errors: Gauge::default(),
            rejected: Counter::default(),
            updates: Counter::default(),
        };
        registry.register(
            "istiod_lite_config_errors",
            "Objects of the config source currently refused (their last good version is in force)",
            m.errors.clone(),
        );
        registry.register(
            "istiod_lite_config_rejected_reloads",
            "New configs refused since start",
            m.rejected.clone(),
        );
        registry.register(
            "istiod_lite_config_updates",
            "Config snapshots built from changes of the source",
            m.updates.clone(),
        );
        let mut snapshots = m.source.subscribe();
        let updates = m.updates.clone();
        tokio::spawn(async move {
            while snapshots.changed().await.is_ok() {
                updates.inc();
            }
        });
        m
    }

    /// Reads the source's problems into the gauges; call before encoding.
    pub fn refresh(&self) {
        self.errors
            .set(i64::try_from(self.source.problems().len()).unwrap_or(i64::MAX));
        let rejected = self.source.rejected_reloads();
        let seen = self.rejected.get();
        if rejected > seen {
            self.rejected.inc_by(rejected - seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_and_refused_requests_are_counted_by_reason() {
        let mut registry = Registry::default();
        let m = CaMetrics::register(&mut registry);
        m.signed();
        m.refused(Code::Unauthenticated);
        m.refused(Code::PermissionDenied);
        m.refused(Code::PermissionDenied);
        m.refused(Code::InvalidArgument);
        let text = mesh::metrics::encode(&registry);
        for want in [
            "istiod_lite_csr_total{result=\"signed\",reason=\"ok\"} 1",
            "istiod_lite_csr_total{result=\"refused\",reason=\"unauthenticated\"} 1",
            "istiod_lite_csr_total{result=\"refused\",reason=\"identity_not_allowed\"} 2",
            "istiod_lite_csr_total{result=\"refused\",reason=\"bad_csr\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
