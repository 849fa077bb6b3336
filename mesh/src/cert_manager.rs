//! Certificates per identity, fetched on demand and renewed at half-life.
//!
//! One background task per identity: fetch, publish, sleep until half of the lifetime (minus
//! a little jitter so that a node's certificates do not all renew in the same second), fetch
//! again. A failed fetch is retried with jittered exponential backoff while the current
//! certificate keeps serving. A caller that needs a certificate the worker has failed to get
//! so far nudges it to retry soon (at most once per [`RenewalConfig::wait_on_failure`]) and
//! waits that long: a pod's first connection should not fail for a backoff that grew while
//! the CA did not know the pod yet. All timing uses tokio's clock so tests can pause time.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::cert::{CertError, WorkloadCertificate};
use crate::identity::Identity;

/// A boxed future, as returned by [`CertificateProvider::fetch`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a certificate could not be obtained.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The CA could not be reached or did not answer; retrying may help.
    #[error("CA unavailable: {0}")]
    Unavailable(String),
    /// The CA refused the request; retrying will not help until something changes.
    #[error("CA refused the request: {0}")]
    Refused(String),
    /// The CA's answer was unusable.
    #[error("CA answer unusable: {0}")]
    BadResponse(String),
}

impl From<CertError> for FetchError {
    fn from(e: CertError) -> Self {
        FetchError::BadResponse(e.to_string())
    }
}

/// Something that can produce a fresh certificate for an identity: the CA client, or an
/// in-process CA in tests.
pub trait CertificateProvider: Send + Sync + 'static {
    /// Generates a key, asks for a certificate for `identity` and returns it.
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>>;
}

/// Retry and jitter settings.
#[derive(Debug, Clone)]
pub struct RenewalConfig {
    /// First retry delay after a failed fetch.
    pub initial_backoff: Duration,
    /// Ceiling for the retry delay.
    pub max_backoff: Duration,
    /// Renewal happens at half-life minus up to this fraction of the lifetime.
    pub jitter_fraction: f64,
    /// How long [`CertManager::get`] waits for a retry when every fetch so far has failed.
    pub wait_on_failure: Duration,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        RenewalConfig {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            jitter_fraction: 0.05,
            wait_on_failure: Duration::from_secs(3),
        }
    }
}

type Slot = watch::Receiver<Option<Result<Arc<WorkloadCertificate>, FetchError>>>;

struct Entry {
    rx: Slot,
    /// Wakes the worker out of its backoff: someone is waiting for a certificate.
    nudge: Arc<Notify>,
    task: JoinHandle<()>,
}

/// Holds a certificate per identity and keeps each fresh.
pub struct CertManager {
    provider: Arc<dyn CertificateProvider>,
    config: RenewalConfig,
    entries: Mutex<HashMap<Identity, Entry>>,
    /// Where renewal tasks run; the caller's runtime when `None`.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager").finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager that fetches from `provider`.
    pub fn new(provider: Arc<dyn CertificateProvider>, config: RenewalConfig) -> Arc<Self> {
        Arc::new(CertManager {
            provider,
            config,
            entries: Mutex::new(HashMap::new()),
            runtime: None,
        })
    }

    /// A manager whose fetch and renewal tasks run on `runtime` (a control-plane runtime), so
    /// CA traffic never competes with proxying on the data-plane threads.
    pub fn on_runtime(
        provider: Arc<dyn CertificateProvider>,
        config: RenewalConfig,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(CertManager {
            provider,
            config,
            entries: Mutex::new(HashMap::new()),
            runtime: Some(runtime),
        })
    }

    /// The current certificate for `identity`, fetching it first if this is the first ask.
    /// Once one exists, it is returned until replaced. While every fetch so far has failed,
    /// the worker is nudged to retry at once and the caller waits up to
    /// [`RenewalConfig::wait_on_failure`] for a success before getting the last error.
    pub async fn get(&self, identity: &Identity) -> Result<Arc<WorkloadCertificate>, FetchError> {
        let (mut rx, nudge) = self.entry(identity);
        let mut deadline = None;
        loop {
            match rx.borrow_and_update().clone() {
                Some(Ok(cert)) => return Ok(cert),
                Some(Err(e)) => {
                    let until = *deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + self.config.wait_on_failure
                    });
                    if tokio::time::Instant::now() >= until {
                        return Err(e);
                    }
                    nudge.notify_one();
                }
                None => {}
            }
            let changed = match deadline {
                Some(until) => match tokio::time::timeout_at(until, rx.changed()).await {
                    Ok(changed) => changed,
                    Err(_) => continue, // the deadline: the loop returns the last state
                },
                None => rx.changed().await,
            };
            if changed.is_err() {
                return Err(FetchError::Unavailable("certificate worker stopped".into()));
            }
        }
    }

    /// A receiver that sees every new certificate for `identity`; starts the worker if needed.
    pub fn subscribe(&self, identity: &Identity) -> Slot {
        self.entry(identity).0
    }

    fn entry(&self, identity: &Identity) -> (Slot, Arc<Notify>) {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(identity) {
            return (entry.rx.clone(), entry.nudge.clone());
        }
        let (tx, rx) = watch::channel(None);
        let nudge = Arc::new(Notify::new());
        let work = renew_loop(
            self.provider.clone(),
            self.config.clone(),
            identity.clone(),
            tx,
            nudge.clone(),
        );
        let task = match &self.runtime {
            Some(runtime) => runtime.spawn(work),
            None => tokio::spawn(work),
        };
        entries.insert(
            identity.clone(),
            Entry {
                rx: rx.clone(),
                nudge: nudge.clone(),
                task,
            },
        );
        (rx, nudge)
    }

    /// Pre-fetches certificates for identities about to be needed.
    pub fn prefetch(&self, identity: &Identity) {
        let _ = self.subscribe(identity);
    }

    /// Stops renewing and forgets `identity` (its last workload left the node).
    pub fn forget(&self, identity: &Identity) {
        if let Some(entry) = lock(&self.entries).remove(identity) {
            entry.task.abort();
        }
    }

    /// Identities currently held, with their certificates (for config dumps).
    pub fn snapshot(&self) -> Vec<(Identity, Option<Arc<WorkloadCertificate>>)> {
        let entries = lock(&self.entries);
        let mut out: Vec<_> = entries
            .iter()
            .map(|(id, e)| {
                let cert =
                    e.rx.borrow()
                        .as_ref()
                        .and_then(|r| r.as_ref().ok().cloned());
                (id.clone(), cert)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        for (_, entry) in lock(&self.entries).drain() {
            entry.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map half-updated: recover it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn renew_loop(
    provider: Arc<dyn CertificateProvider>,
    config: RenewalConfig,
    identity: Identity,
    tx: watch::Sender<Option<Result<Arc<WorkloadCertificate>, FetchError>>>,
    nudge: Arc<Notify>,
) {
    let mut backoff = config.initial_backoff;
    let mut have_cert = false;
    let mut last_nudged: Option<tokio::time::Instant> = None;
    loop {
        match provider.fetch(&identity).await {
            Ok(cert) => {
                backoff = config.initial_backoff;
                let wait = renew_in(&cert, SystemTime::now(), config.jitter_fraction);
                tracing::info!(identity = %identity, renew_in_s = wait.as_secs(), "certificate issued");
                have_cert = true;
                tx.send_replace(Some(Ok(Arc::new(cert))));
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                tracing::warn!(identity = %identity, error = %e, retry_in_ms = backoff.as_millis() as u64, "certificate fetch failed");
                if !have_cert {
                    tx.send_replace(Some(Err(e)));
                }
                // A waiting caller cuts a grown backoff short, once per `wait_on_failure`:
                // enough for a pod whose first connection comes after the CA learnt about it,
                // too rare for callers of an identity the CA keeps refusing to hammer it. The
                // backoff keeps growing either way.
                let nudge_allowed_at = last_nudged.map(|at| at + config.wait_on_failure);
                let nudged = async {
                    if let Some(at) = nudge_allowed_at {
                        tokio::time::sleep_until(at).await;
                    }
                    nudge.notified().await;
                    tokio::time::sleep(config.initial_backoff).await;
                };
                tokio::select! {
                    () = tokio::time::sleep(jittered(backoff)) => {}
                    () = nudged => last_nudged = Some(tokio::time::Instant::now()),
                }
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}

/// How long from `now` until `cert` should be renewed: its half-life, minus up to
/// `jitter_fraction` of the lifetime.
pub fn renew_in(cert: &WorkloadCertificate, now: SystemTime, jitter_fraction: f64) -> Duration {
    let lifetime = cert
        .not_after()
        .duration_since(cert.not_before())
        .unwrap_or_default();
    let jitter = lifetime.mul_f64(jitter_fraction.clamp(0.0, 0.5) * rand::random::<f64>());
    let at = cert.half_life() - jitter;
    at.duration_since(now).unwrap_or_default()
}

fn jittered(d: Duration) -> Duration {
    // Up to ±20% so that many workers retrying at once spread out.
    d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}
