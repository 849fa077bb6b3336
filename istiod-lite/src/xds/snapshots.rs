//! From config snapshots to prepared snapshots: debounce bursts, encode and version once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::metrics::TypeLabels;
use super::versions::PreparedSnapshot;
use super::{ResourceType, XdsMetrics, XdsSnapshot};

/// A burst of changes is pushed at the latest this many debounce periods after it began, even
/// if changes keep coming.
const MAX_DEBOUNCE_PERIODS: u32 = 10;

/// Follows `source`: publishes `translate(state)` for its current value and for each new one.
///
/// This is how a config source that publishes its own state type feeds the server: e.g.
/// `translated(cluster_states, |state| translate(state))`. Translation runs on tokio's
/// blocking pool; values that arrive while a translation runs are skipped in favour of the
/// newest. The task ends when `source` closes (the output then keeps its last value) or when
/// nobody receives the output any more. Must be called within a tokio runtime.
pub fn translated<T, F>(
    mut source: watch::Receiver<Arc<T>>,
    translate: F,
) -> watch::Receiver<Arc<XdsSnapshot>>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> XdsSnapshot + Send + Sync + 'static,
{
    let translate = Arc::new(translate);
    let first = source.borrow_and_update().clone();
    let (tx, rx) = watch::channel(Arc::new(translate(&first)));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = source.changed() => {
                    if changed.is_err() {
                        tracing::debug!("config source closed; keeping the last translated snapshot");
                        return;
                    }
                }
                () = tx.closed() => return,
            }
            let state = source.borrow_and_update().clone();
            let translate = translate.clone();
            match tokio::task::spawn_blocking(move || translate(&state)).await {
                Ok(snapshot) => {
                    tx.send_replace(Arc::new(snapshot));
                }
                Err(e) => {
                    tracing::error!(error = %e, "translating the config failed; keeping the previous snapshot");
                }
            }
        }
    });
    rx
}

/// Prepares the current value of `source` now, then follows it in a task: waits for changes
/// to settle for `debounce` (at most [`MAX_DEBOUNCE_PERIODS`] × `debounce` after the first
/// change of a burst), prepares the newest snapshot on the blocking pool and publishes it
/// unless its content equals the last one's. The task ends when nobody receives the output.
pub(crate) fn spawn_preparer(
    mut source: watch::Receiver<Arc<XdsSnapshot>>,
    debounce: Duration,
    metrics: XdsMetrics,
) -> watch::Receiver<Arc<PreparedSnapshot>> {
    let first = source.borrow_and_update().clone();
    let prepared = Arc::new(PreparedSnapshot::prepare(&first, 0, None));
    record_sizes(&metrics, &prepared);
    metrics.snapshots.inc();
    let (tx, rx) = watch::channel(prepared);
    tokio::spawn(async move {
        let mut generation = 0;
        let mut source_open = true;
        loop {
            // Wait for the first change of a burst.
            if source_open {
                tokio::select! {
                    changed = source.changed() => source_open = changed.is_ok(),
                    () = tx.closed() => return,
                }
            }
            if !source_open {
                tracing::info!("config snapshot source closed; serving the last snapshot");
                tx.closed().await;
                return;
            }
            let began = Instant::now();
            source_open = settle(&mut source, began, debounce).await;
            let snapshot = source.borrow_and_update().clone();
            generation += 1;
            let next = generation;
            let prepared = match tokio::task::spawn_blocking(move || {
                PreparedSnapshot::prepare(&snapshot, next, Some(began))
            })
            .await
            {
                Ok(prepared) => prepared,
                Err(e) => {
                    tracing::error!(error = %e, "preparing the config snapshot failed; keeping the previous one");
                    continue;
                }
            };
            if tx.borrow().same_content(&prepared) {
                tracing::debug!(
                    generation,
                    "config snapshot unchanged after debouncing; nothing to push"
                );
                continue;
            }
            record_sizes(&metrics, &prepared);
            metrics.snapshots.inc();
            tracing::debug!(
                generation,
                addresses = prepared.of(ResourceType::Address).len(),
                authorizations = prepared.of(ResourceType::Authorization).len(),
                debounced_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
                "publishing config snapshot"
            );
            tx.send_replace(Arc::new(prepared));
        }
    });
    rx
}

/// Waits until `source` has been quiet for `debounce`, or `MAX_DEBOUNCE_PERIODS × debounce`
/// after `began`. Returns whether the source is still open.
async fn settle(
    source: &mut watch::Receiver<Arc<XdsSnapshot>>,
    began: Instant,
    debounce: Duration,
) -> bool {
    if debounce.is_zero() {
        return true;
    }
    let latest = began + debounce * MAX_DEBOUNCE_PERIODS;
    loop {
        let quiet_until = (Instant::now() + debounce).min(latest);
        tokio::select! {
            changed = source.changed() => {
                if changed.is_err() {
                    return false;
                }
                if Instant::now() >= latest {
                    return true;
                }
            }
            () = tokio::time::sleep_until(quiet_until) => return true,
        }
    }
}

fn record_sizes(metrics: &XdsMetrics, prepared: &PreparedSnapshot) {
    for kind in ResourceType::ALL {
        let len = i64::try_from(prepared.of(kind).len()).unwrap_or(i64::MAX);
        metrics
            .resources
            .get_or_create(&TypeLabels::of(kind))
            .set(len);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::xds::versions::tests::workload;

    fn snapshot(n: usize) -> Arc<XdsSnapshot> {
        Arc::new(XdsSnapshot {
            addresses: (0..n)
                .map(|i| {
                    let name = format!("w{i}");
                    let a = workload(&name, &[]);
                    (name, a)
                })
                .collect(),
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_published_once_and_unchanged_content_not_at_all() {
        let (tx, rx) = watch::channel(snapshot(0));
        let metrics = XdsMetrics::default();
        let mut out = spawn_preparer(rx, Duration::from_millis(100), metrics.clone());
        assert_eq!(out.borrow_and_update().generation, 0);
        for n in 1..=5 {
            tx.send_replace(snapshot(n));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        out.changed().await.unwrap();
        let published = out.borrow_and_update().clone();
        assert_eq!(published.generation, 1);
        assert_eq!(published.of(ResourceType::Address).len(), 5);
        // Settled 100 ms after the last change, i.e. 180 ms after the first.
        let waited = published.changed_at.unwrap().elapsed();
        assert!(waited >= Duration::from_millis(180), "{waited:?}");

        // The same content again: nothing published.
        tx.send_replace(snapshot(5));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!out.has_changed().unwrap());
        assert_eq!(metrics.snapshots.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_never_ending_burst_is_still_pushed() {
        let (tx, rx) = watch::channel(snapshot(0));
        let mut out = spawn_preparer(rx, Duration::from_millis(100), XdsMetrics::default());
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            for n in 1..200 {
                tx.send_replace(snapshot(n % 7 + 1));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        out.changed().await.unwrap();
        assert!(
            start.elapsed() <= Duration::from_millis(1100),
            "{:?}",
            start.elapsed()
        );
        writer.abort();
    }

    #[tokio::test]
    async fn translated_follows_its_source() {
        let (tx, rx) = watch::channel(Arc::new(3usize));
        let mut out = translated(rx, |n: &usize| (*snapshot(*n)).clone());
        assert_eq!(out.borrow_and_update().addresses.len(), 3);
        tx.send_replace(Arc::new(4));
        out.changed().await.unwrap();
        assert_eq!(out.borrow_and_update().addresses.len(), 4);
    }
}
