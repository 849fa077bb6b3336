//! The certificate manager's metrics (`mesh_certificate*`).
//!
//! Counters are updated by the renewal workers; the certificates held, their expiry and
//! their renewal health are read from the manager at scrape time ([`CertCollector`]), so an
//! identity whose worker stopped leaves the exposition with it.

use std::sync::{Arc, Weak};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{CertManager, FetchError};

/// The `reason` label of a failed certificate request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `unavailable` (CA unreachable or silent), `refused` (the CA said no) or `bad_response`
    /// (the answer was unusable).
    pub reason: &'static str,
}

/// Every `reason` value, exported from the start so alerts see a zero before the first failure.
const REASONS: [&str; 3] = ["unavailable", "refused", "bad_response"];

impl ReasonLabel {
    /// The label of a failed fetch.
    pub fn of(error: &FetchError) -> Self {
        let reason = match error {
            FetchError::Unavailable(_) => "unavailable",
            FetchError::Refused(_) => "refused",
            // An expired certificate is not a request outcome; a provider that says so handed
            // back something unusable.
            FetchError::BadResponse(_) | FetchError::Expired(_) => "bad_response",
        };
        ReasonLabel { reason }
    }
}

/// Counters the renewal workers update. Cheap to clone; every [`CertManager`] owns one.
#[derive(Debug, Clone, Default)]
pub struct CertMetrics {
    rotations: Counter,
    failed: Family<ReasonLabel, Counter>,
}

impl CertMetrics {
    /// A certificate replaced the identity's previous one.
    pub(crate) fn rotated(&self) {
        self.rotations.inc();
    }

    /// A certificate request failed.
    pub(crate) fn failed(&self, error: &FetchError) {
        self.failed.get_or_create(&ReasonLabel::of(error)).inc();
    }
}

/// Adds the certificate metrics of `manager` to `registry`: its counters, and a collector of
/// the certificates it holds (which keeps only a weak reference to it).
pub fn register(registry: &mut Registry, manager: &Arc<CertManager>) {
    let metrics = manager.metrics();
    for reason in REASONS {
        let _ = metrics.failed.get_or_create(&ReasonLabel { reason });
    }
    registry.register(
        "mesh_certificate_rotations",
        "Certificates renewed, replacing an identity's previous certificate",
        metrics.rotations.clone(),
    );
    registry.register(
        "mesh_certificate_requests_failed",
        "Certificate requests to the CA that failed, by reason",
        metrics.failed.clone(),
    );
    registry.register_collector(Box::new(CertCollector {
        manager: Arc::downgrade(manager),
    }));
}

/// Encodes `mesh_certificates{state}`, and per identity the expiry, the seconds left and the
/// failed renewals in a row, from the manager's current certificates on every scrape.
#[derive(Debug)]
pub struct CertCollector {
    manager: Weak<CertManager>,
}

/// Every `state` value, exported from the start.
const STATES: [&str; 3] = ["available", "refresh_failing", "pending"];

impl Collector for CertCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(manager) = self.manager.upgrade() else {
            return Ok(());
        };
        let now = SystemTime::now();
        let held = manager.status();
        let mut count = encoder.encode_descriptor(
            "mesh_certificates",
            "Identities by certificate state: available (valid, renewed on schedule), \
             refresh_failing (valid and still served, but the last renewal failed: it expires \
             at its not_after unless the CA answers), pending (no valid certificate)",
            None,
            MetricType::Gauge,
        )?;
        for state in STATES {
            let n = held.iter().filter(|s| s.state(now) == state).count();
            ConstGauge::new(n as i64).encode(count.encode_family(&[("state", state)])?)?;
        }
        let valid: Vec<_> = held
            .iter()
            .filter_map(|s| {
                let cert = s.cert.as_ref().filter(|c| !c.is_expired_at(now))?;
                Some((s.identity.to_string(), cert.not_after(), s.refresh_failures))
            })
            .collect();
        let mut expiry = encoder.encode_descriptor(
            "mesh_certificate_expiration_timestamp_seconds",
            "Unix time at which the identity's current certificate expires",
            None,
            MetricType::Gauge,
        )?;
        for (identity, not_after, _) in &valid {
            let secs = not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            ConstGauge::new(secs).encode(expiry.encode_family(&[("identity", identity)])?)?;
        }
        let mut left = encoder.encode_descriptor(
            "mesh_certificate_seconds_to_expiry",
            "Seconds until the identity's current certificate expires",
            None,
            MetricType::Gauge,
        )?;
        for (identity, not_after, _) in &valid {
            let secs = not_after
                .duration_since(now)
                .unwrap_or_default()
                .as_secs_f64();
            ConstGauge::new(secs).encode(left.encode_family(&[("identity", identity)])?)?;
        }
        let mut failing = encoder.encode_descriptor(
            "mesh_certificate_refresh_failures",
            "Certificate requests for the identity that failed in a row since its last success \
             (0 while renewals succeed)",
            None,
            MetricType::Gauge,
        )?;
        for status in &held {
            let identity = status.identity.to_string();
            ConstGauge::new(i64::from(status.refresh_failures))
                .encode(failing.encode_family(&[("identity", identity)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cert::WorkloadCertificate;
    use crate::cert_manager::{BoxFuture, CertificateProvider, RenewalConfig};
    use crate::identity::Identity;
    use crate::metrics::encode;
    use crate::testing::TestCa;

    const HOUR: Duration = Duration::from_secs(3600);

    fn id(sa: &str) -> Identity {
        format!("spiffe://cluster.local/ns/demo/sa/{sa}")
            .parse()
            .expect("identity")
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    fn config() -> RenewalConfig {
        RenewalConfig {
            jitter_fraction: 0.0,
            ..RenewalConfig::default()
        }
    }

    fn registered(manager: &Arc<CertManager>) -> Registry {
        let mut registry = Registry::default();
        register(&mut registry, manager);
        registry
    }

    #[tokio::test(start_paused = true)]
    async fn an_issued_certificate_sets_its_expiry_and_a_renewal_counts_a_rotation() {
        let manager = CertManager::new(TestCa::new("cluster.local", HOUR), config());
        let registry = registered(&manager);
        let empty = encode(&registry);
        assert_eq!(
            sample(&empty, "mesh_certificates{state=\"available\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&empty, "mesh_certificate_rotations_total"),
            Some(0.0)
        );
        for reason in REASONS {
            let series = format!("mesh_certificate_requests_failed_total{{reason=\"{reason}\"}}");
            assert_eq!(sample(&empty, &series), Some(0.0), "{empty}");
        }

        let cert = manager.get(&id("a")).await.expect("certificate");
        let text = encode(&registry);
        let expiry = "mesh_certificate_expiration_timestamp_seconds\
                      {identity=\"spiffe://cluster.local/ns/demo/sa/a\"}";
        let not_after = cert
            .not_after()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch")
            .as_secs_f64();
        assert_eq!(sample(&text, expiry), Some(not_after), "{text}");
        assert_eq!(
            sample(&text, "mesh_certificates{state=\"available\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "mesh_certificates{state=\"pending\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "mesh_certificate_rotations_total"), Some(0.0));

        // Past the half-life the worker renews: a rotation.
        tokio::time::sleep(HOUR / 2 + Duration::from_secs(1)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let text = encode(&registry);
        assert_eq!(
            sample(&text, "mesh_certificate_rotations_total"),
            Some(1.0),
            "{text}"
        );

        manager.forget(&id("a"));
        let text = encode(&registry);
        assert_eq!(
            sample(&text, expiry),
            None,
            "forgotten identity still exported:\n{text}"
        );
        assert_eq!(
            sample(&text, "mesh_certificates{state=\"available\"}"),
            Some(0.0)
        );
    }

    /// A CA that refuses everything.
    struct Refusing;

    impl CertificateProvider for Refusing {
        fn fetch<'a>(
            &'a self,
            _identity: &'a Identity,
        ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
            Box::pin(async { Err(FetchError::Refused("not yours".into())) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_request_is_counted_by_reason_and_leaves_the_identity_pending() {
        let manager = CertManager::new(Arc::new(Refusing), config());
        let registry = registered(&manager);
        assert!(manager.get(&id("b")).await.is_err());
        let text = encode(&registry);
        let refused = sample(
            &text,
            "mesh_certificate_requests_failed_total{reason=\"refused\"}",
        );
        assert!(refused >= Some(1.0), "{text}");
        assert_eq!(
            sample(
                &text,
                "mesh_certificate_requests_failed_total{reason=\"unavailable\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "mesh_certificates{state=\"pending\"}"),
            Some(1.0)
        );
        assert!(
            !text.contains("mesh_certificate_expiration_timestamp_seconds{"),
            "{text}"
        );
    }

    /// Issues one certificate, then fails every request.
    struct DownAfterFirst(Arc<TestCa>, std::sync::atomic::AtomicUsize);

    impl CertificateProvider for DownAfterFirst {
        fn fetch<'a>(
            &'a self,
            identity: &'a Identity,
        ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
            Box::pin(async move {
                if self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    return self.0.fetch(identity).await;
                }
                Err(FetchError::Unavailable("CA down".into()))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_certificate_whose_renewal_fails_is_refresh_failing_with_its_seconds_left_in_metrics_and_dump(
    ) {
        let ca = TestCa::new("cluster.local", Duration::from_secs(100));
        let provider = Arc::new(DownAfterFirst(ca, Default::default()));
        let manager = CertManager::new(provider, config());
        let registry = registered(&manager);
        manager.get(&id("a")).await.expect("certificate");
        let who = "{identity=\"spiffe://cluster.local/ns/demo/sa/a\"}";
        let text = encode(&registry);
        assert_eq!(
            sample(&text, &format!("mesh_certificate_refresh_failures{who}")),
            Some(0.0),
            "{text}"
        );
        let left = sample(&text, &format!("mesh_certificate_seconds_to_expiry{who}"));
        assert!(left.is_some_and(|s| s > 90.0 && s <= 100.0), "{text}");
        let dump = manager.status()[0].dump();
        assert_eq!(dump["state"], "available", "{dump}");
        assert_eq!(
            dump["identity"], "spiffe://cluster.local/ns/demo/sa/a",
            "{dump}"
        );
        assert!(
            dump["serial"].is_string() && dump["chain_len"].as_u64() >= Some(1),
            "{dump}"
        );

        // Past the half-life the renewal fails, again and again: still served, and said so.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let text = encode(&registry);
        let failures = sample(&text, &format!("mesh_certificate_refresh_failures{who}"));
        assert!(failures >= Some(2.0), "{text}");
        for (state, n) in [
            ("available", 0.0),
            ("refresh_failing", 1.0),
            ("pending", 0.0),
        ] {
            let series = format!("mesh_certificates{{state=\"{state}\"}}");
            assert_eq!(sample(&text, &series), Some(n), "{text}");
        }
        let dump = manager.status()[0].dump();
        assert_eq!(dump["state"], "refresh_failing", "{dump}");
        assert!(dump["refresh_failures"].as_u64() >= Some(2), "{dump}");
        assert!(dump["expires_in_s"].as_i64() > Some(0), "{dump}");
    }
}
