//! tokio runtime metrics from tokio's stable `RuntimeMetrics` (no `tokio_unstable`), read at
//! scrape time: workers, their busy time summed, and the tasks alive.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Encodes `tokio_workers`, `tokio_worker_busy_seconds_total` and `tokio_alive_tasks` for each
/// named runtime on every scrape.
#[derive(Debug, Clone)]
pub struct RuntimeCollector {
    runtimes: Vec<(String, tokio::runtime::Handle)>,
}

impl RuntimeCollector {
    /// A collector of the given runtimes, labelled `runtime=<name>` (`data`, `control`, or
    /// `main` for a process with one runtime).
    pub fn new<'a>(runtimes: impl IntoIterator<Item = (&'a str, tokio::runtime::Handle)>) -> Self {
        RuntimeCollector {
            runtimes: runtimes
                .into_iter()
                .map(|(name, handle)| (name.to_string(), handle))
                .collect(),
        }
    }
}

/// Time the runtime's workers spent busy (polling tasks), summed over workers.
fn busy_seconds(metrics: &tokio::runtime::RuntimeMetrics) -> f64 {
    (0..metrics.num_workers())
        .map(|w| metrics.worker_total_busy_duration(w).as_secs_f64())
        .sum()
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut workers = encoder.encode_descriptor(
            "tokio_workers",
            "Worker threads of the tokio runtime",
            None,
            MetricType::Gauge,
        )?;
        for (name, handle) in &self.runtimes {
            let n = ConstGauge::new(handle.metrics().num_workers() as i64);
            n.encode(workers.encode_family(&[("runtime", name.as_str())])?)?;
        }
        let mut busy = encoder.encode_descriptor(
            "tokio_worker_busy_seconds",
            "Time the runtime's workers spent polling tasks, summed over workers",
            None,
            MetricType::Counter,
        )?;
        for (name, handle) in &self.runtimes {
            let s = ConstCounter::new(busy_seconds(&handle.metrics()));
            s.encode(busy.encode_family(&[("runtime", name.as_str())])?)?;
        }
        let mut alive = encoder.encode_descriptor(
            "tokio_alive_tasks",
            "Tasks alive in the tokio runtime",
            None,
            MetricType::Gauge,
        )?;
        for (name, handle) in &self.runtimes {
            let n = ConstGauge::new(handle.metrics().num_alive_tasks() as i64);
            n.encode(alive.encode_family(&[("runtime", name.as_str())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    }

    #[test]
    fn workers_busy_time_and_alive_tasks_are_exported_per_runtime() {
        let data = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let control = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut registry = Registry::default();
        registry.register_collector(Box::new(RuntimeCollector::new([
            ("data", data.handle().clone()),
            ("control", control.handle().clone()),
        ])));
        // Some busy time on the data runtime, and one task that stays alive.
        data.block_on(async {
            tokio::spawn(async {
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(20) {
                    std::hint::black_box(0u64);
                }
            })
            .await
            .expect("task");
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let parked = data.spawn(async move {
            let _ = rx.await;
        });
        // Workers publish their busy time when they park, a moment after the task ends.
        let mut text = crate::metrics::encode(&registry);
        for _ in 0..100 {
            if value(&text, "tokio_worker_busy_seconds_total{runtime=\"data\"}") >= 0.015 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            text = crate::metrics::encode(&registry);
        }
        assert_eq!(value(&text, "tokio_workers{runtime=\"data\"}"), 2.0);
        assert_eq!(value(&text, "tokio_workers{runtime=\"control\"}"), 1.0);
        assert_eq!(value(&text, "tokio_alive_tasks{runtime=\"data\"}"), 1.0);
        let busy = value(&text, "tokio_worker_busy_seconds_total{runtime=\"data\"}");
        assert!(busy >= 0.015, "busy {busy}s:\n{text}");
        drop(tx);
        data.block_on(parked).expect("task");
    }
}
