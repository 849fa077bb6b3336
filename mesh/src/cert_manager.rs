//! Certificates per identity, fetched on demand and renewed at half-life.
//!
//! One background task per identity: fetch, publish, sleep until half of the validity left
//! (minus a little jitter so that a node's certificates do not all renew in the same second),
//! fetch again. A failed fetch is retried with jittered exponential backoff, bounded by
//! [`RenewalConfig::max_backoff`] and by a quarter of the current certificate's validity left,
//! while the current certificate keeps serving until its `not_after` (fail static: a CA that
//! is down for less than half a lifetime costs nothing). Consecutive failures are counted per
//! identity ([`CertStatus::refresh_failures`]) so the metrics show a certificate that is
//! expiring unrenewed. A caller that needs a certificate the worker has failed to get
//! so far nudges it to retry soon (at most once per [`RenewalConfig::wait_on_failure`]) and
//! waits that long: a pod's first connection should not fail for a backoff that grew while
//! the CA did not know the pod yet. All timing uses tokio's clock so tests can pause time.
//!
//! Lifetimes: an identity's worker runs while someone holds a [`CertLease`] on it (a served
//! pod) and for [`RenewalConfig::release_grace`] after the last lease goes, so a pod that comes
//! back (or a new pod of the same identity) within the grace finds its certificate ready; then
//! the worker stops and the certificate is dropped. An identity only ever asked for with
//! [`CertManager::get`] and never leased is kept for the life of the manager.
//!
//! An expired certificate is never handed out: the worker withdraws it from the slot when its
//! `not_after` passes without a renewal, and [`CertManager::get`] treats one past `not_after`
//! like no certificate at all (nudges the worker and waits, as for a first fetch).

pub mod metrics;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use self::metrics::CertMetrics;
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
    /// The certificate expired before a renewal succeeded; none is served until one does.
    #[error("certificate expired: {0}")]
    Expired(String),
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
    /// How long [`CertManager::get`] waits for a retry when every fetch so far has failed, or
    /// the certificate expired before a renewal succeeded.
    pub wait_on_failure: Duration,
    /// How long an identity's worker and certificate are kept after its last [`CertLease`]
    /// is dropped; zero stops the worker at once.
    pub release_grace: Duration,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        RenewalConfig {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            jitter_fraction: 0.05,
            wait_on_failure: Duration::from_secs(3),
            release_grace: Duration::from_secs(30),
        }
    }
}

type Slot = watch::Receiver<Option<Result<Arc<WorkloadCertificate>, FetchError>>>;

/// One identity as the manager holds it, for config dumps and metrics.
#[derive(Debug, Clone)]
pub struct CertStatus {
    /// The identity.
    pub identity: Identity,
    /// Its current certificate, if it has one (possibly past `not_after` for a moment).
    pub cert: Option<Arc<WorkloadCertificate>>,
    /// Fetches that failed in a row since the last success: while the certificate is still
    /// valid, it is being served unrenewed and expires unless the CA answers in time.
    pub refresh_failures: u32,
}

impl CertStatus {
    /// `available` (valid, renewed on schedule), `refresh_failing` (valid and served, but the
    /// last renewal failed) or `pending` (no valid certificate): the states of the
    /// `mesh_certificates` metric.
    pub fn state(&self, now: SystemTime) -> &'static str {
        match &self.cert {
            Some(cert) if !cert.is_expired_at(now) && self.refresh_failures > 0 => {
                "refresh_failing"
            }
            Some(cert) if !cert.is_expired_at(now) => "available",
            _ => "pending",
        }
    }

    /// The identity's entry in a proxy's `/config_dump`: state, failed renewals in a row and,
    /// with a certificate, its serial, expiry and next renewal (seconds from now; negative when
    /// past).
    pub fn dump(&self) -> serde_json::Value {
        let now = SystemTime::now();
        let mut out = serde_json::json!({
            "identity": self.identity.as_uri(),
            "state": self.state(now),
            "refresh_failures": self.refresh_failures,
        });
        if let Some(c) = &self.cert {
            let secs = |t: SystemTime| match t.duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            };
            out["serial"] = serde_json::json!(c
                .chain()
                .first()
                .and_then(|der| crate::cert::serial_of(der).ok()));
            out["not_after_unix"] = serde_json::json!(c
                .not_after()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0));
            out["expires_in_s"] = serde_json::json!(secs(c.not_after()));
            out["renews_in_s"] = serde_json::json!(secs(c.half_life()));
            out["chain_len"] = serde_json::json!(c.chain().len());
        }
        out
    }
}

struct Entry {
    rx: Slot,
    /// Failed fetches in a row, written by the worker.
    failures: Arc<AtomicU32>,
    /// Wakes the worker out of its backoff: someone is waiting for a certificate.
    nudge: Arc<Notify>,
    task: JoinHandle<()>,
    /// Live [`CertLease`]s on the identity.
    leases: usize,
    /// Armed when the last lease went: forgets the entry when it fires, unless a lease is taken
    /// again first. Its id tells a stale timer from the current one.
    release: Option<(u64, JoinHandle<()>)>,
}

impl Entry {
    fn stop(self) {
        self.task.abort();
        if let Some((_, timer)) = self.release {
            timer.abort();
        }
    }
}

/// Holds a certificate per identity and keeps each fresh.
pub struct CertManager {
    provider: Arc<dyn CertificateProvider>,
    config: RenewalConfig,
    entries: Mutex<HashMap<Identity, Entry>>,
    /// Where renewal tasks run; the caller's runtime when `None`.
    runtime: Option<tokio::runtime::Handle>,
    /// Ids of release timers.
    next_release: AtomicU64,
    /// Itself, for release timers that must not keep it alive.
    this: Weak<CertManager>,
    /// Rotations and failed requests, counted by the workers.
    metrics: CertMetrics,
}

/// Keeps an identity's certificate renewed while held (see [`CertManager::lease`]). Dropping
/// the last lease of an identity stops its renewal after [`RenewalConfig::release_grace`].
#[must_use = "the identity's certificate is released when the lease is dropped"]
pub struct CertLease {
    manager: Weak<CertManager>,
    identity: Identity,
}

impl std::fmt::Debug for CertLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertLease")
            .field("identity", &self.identity.to_string())
            .finish()
    }
}

impl CertLease {
    /// The identity held.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

impl Drop for CertLease {
    fn drop(&mut self) {
        if let Some(manager) = self.manager.upgrade() {
            manager.release(&self.identity);
        }
    }
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager").finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager that fetches from `provider`.
    pub fn new(provider: Arc<dyn CertificateProvider>, config: RenewalConfig) -> Arc<Self> {
        Self::build(provider, config, None)
    }

    fn build(
        provider: Arc<dyn CertificateProvider>,
        config: RenewalConfig,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| CertManager {
            provider,
            config,
            entries: Mutex::new(HashMap::new()),
            runtime,
            next_release: AtomicU64::new(0),
            this: this.clone(),
            metrics: CertMetrics::default(),
        })
    }

    /// A manager whose fetch and renewal tasks run on `runtime` (a control-plane runtime), so
    /// CA traffic never competes with proxying on the data-plane threads.
    pub fn on_runtime(
        provider: Arc<dyn CertificateProvider>,
        config: RenewalConfig,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Self::build(provider, config, Some(runtime))
    }

    /// The current certificate for `identity`, fetching it first if this is the first ask.
    /// Once one exists, it is returned until replaced or expired. While every fetch so far has
    /// failed, or the certificate has expired, the worker is nudged to retry at once and the
    /// caller waits up to [`RenewalConfig::wait_on_failure`] for a success before getting the
    /// last error.
    pub async fn get(&self, identity: &Identity) -> Result<Arc<WorkloadCertificate>, FetchError> {
        let (mut rx, nudge) = self.entry(identity);
        let mut deadline = None;
        loop {
            let state = match rx.borrow_and_update().clone() {
                Some(Ok(cert)) if cert.is_expired_at(SystemTime::now()) => {
                    Some(Err(expired(&cert)))
                }
                other => other,
            };
            match state {
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

    /// Keeps `identity`'s certificate renewed until the returned lease (and every other lease
    /// on it) is dropped, plus [`RenewalConfig::release_grace`]; starts the worker if needed
    /// and cancels a pending release.
    pub fn lease(&self, identity: &Identity) -> CertLease {
        let mut entries = lock(&self.entries);
        let entry = self.entry_locked(&mut entries, identity);
        entry.leases += 1;
        if let Some((_, timer)) = entry.release.take() {
            timer.abort();
            tracing::debug!(identity = %identity, "identity leased again within its release grace; renewal goes on");
        }
        CertLease {
            manager: self.this.clone(),
            identity: identity.clone(),
        }
    }

    fn release(&self, identity: &Identity) {
        let mut entries = lock(&self.entries);
        let Some(entry) = entries.get_mut(identity) else {
            return; // forgotten explicitly meanwhile
        };
        entry.leases = entry.leases.saturating_sub(1);
        if entry.leases > 0 {
            return;
        }
        let grace = self.config.release_grace;
        let runtime = self
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        let Some(runtime) = runtime.filter(|_| !grace.is_zero()) else {
            if let Some(entry) = entries.remove(identity) {
                entry.stop();
            }
            tracing::info!(identity = %identity, "last workload of the identity left; certificate renewal stopped");
            return;
        };
        let id = self.next_release.fetch_add(1, Ordering::Relaxed);
        let (this, who) = (self.this.clone(), identity.clone());
        let timer = runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(manager) = this.upgrade() {
                manager.release_ended(&who, id);
            }
        });
        if let Some((_, old)) = entry.release.replace((id, timer)) {
            old.abort();
        }
    }

    fn release_ended(&self, identity: &Identity, id: u64) {
        let mut entries = lock(&self.entries);
        let current = entries.get(identity).is_some_and(|e| {
            e.leases == 0 && matches!(&e.release, Some((armed, _)) if *armed == id)
        });
        if !current {
            return;
        }
        if let Some(entry) = entries.remove(identity) {
            entry.task.abort(); // not `stop`: this timer is the release task itself
        }
        tracing::info!(identity = %identity, grace_secs = self.config.release_grace.as_secs_f64(), "no workload of the identity came back within the grace; certificate renewal stopped");
    }

    /// The counters its workers update, to register with
    /// [`crate::metrics::register_certificates`].
    pub fn metrics(&self) -> CertMetrics {
        self.metrics.clone()
    }

    /// How many identities have a certificate worker (for `/config_dump` counts).
    pub fn workers(&self) -> usize {
        lock(&self.entries).len()
    }

    fn entry(&self, identity: &Identity) -> (Slot, Arc<Notify>) {
        let mut entries = lock(&self.entries);
        let entry = self.entry_locked(&mut entries, identity);
        (entry.rx.clone(), entry.nudge.clone())
    }

    fn entry_locked<'m>(
        &self,
        entries: &'m mut HashMap<Identity, Entry>,
        identity: &Identity,
    ) -> &'m mut Entry {
        let vacant = match entries.entry(identity.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => return o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v,
        };
        let (tx, rx) = watch::channel(None);
        let nudge = Arc::new(Notify::new());
        let failures = Arc::new(AtomicU32::new(0));
        let work = renew_loop(
            self.provider.clone(),
            self.config.clone(),
            identity.clone(),
            Worker {
                tx,
                nudge: nudge.clone(),
                failures: failures.clone(),
                metrics: self.metrics.clone(),
            },
        );
        let task = match &self.runtime {
            Some(runtime) => runtime.spawn(work),
            None => tokio::spawn(work),
        };
        vacant.insert(Entry {
            rx,
            failures,
            nudge,
            task,
            leases: 0,
            release: None,
        })
    }

    /// Pre-fetches certificates for identities about to be needed.
    pub fn prefetch(&self, identity: &Identity) {
        let _ = self.subscribe(identity);
    }

    /// Stops renewing and forgets `identity` at once, leases or not (leases dropped later do
    /// nothing). Ordinarily identities go when their last [`CertLease`] does.
    pub fn forget(&self, identity: &Identity) {
        if let Some(entry) = lock(&self.entries).remove(identity) {
            entry.stop();
        }
    }

    /// Identities currently held, with their certificates and renewal health, sorted.
    pub fn status(&self) -> Vec<CertStatus> {
        let entries = lock(&self.entries);
        let mut out: Vec<_> = entries
            .iter()
            .map(|(id, e)| CertStatus {
                identity: id.clone(),
                cert: e
                    .rx
                    .borrow()
                    .as_ref()
                    .and_then(|r| r.as_ref().ok().cloned()),
                refresh_failures: e.failures.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        for (_, entry) in lock(&self.entries).drain() {
            entry.stop();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map half-updated: recover it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a renewal worker writes to: the slot, the failure count; what wakes it: the nudge.
struct Worker {
    tx: watch::Sender<Option<Result<Arc<WorkloadCertificate>, FetchError>>>,
    nudge: Arc<Notify>,
    failures: Arc<AtomicU32>,
    metrics: CertMetrics,
}

async fn renew_loop(
    provider: Arc<dyn CertificateProvider>,
    config: RenewalConfig,
    identity: Identity,
    worker: Worker,
) {
    let Worker {
        tx,
        nudge,
        failures,
        metrics,
    } = worker;
    let mut backoff = config.initial_backoff;
    // When the certificate being served expires, on tokio's clock; `None` while none is.
    let mut serving_until: Option<tokio::time::Instant> = None;
    let mut last_nudged: Option<tokio::time::Instant> = None;
    // Whether this worker has issued one before: the next one is a rotation.
    let mut issued = false;
    loop {
        let fetch = provider.fetch(&identity);
        tokio::pin!(fetch);
        // A CA that does not answer must not keep an expired certificate served either.
        let fetched = loop {
            tokio::select! {
                fetched = &mut fetch => break fetched,
                () = sleep_until(serving_until) => {
                    serving_until = None;
                    withdraw(&tx, &identity);
                }
            }
        };
        let fetched = fetched.and_then(|cert| {
            if cert.is_expired_at(SystemTime::now()) {
                Err(FetchError::BadResponse(format!(
                    "the certificate issued is already expired ({})",
                    expired(&cert)
                )))
            } else {
                Ok(cert)
            }
        });
        match fetched {
            Ok(cert) => {
                backoff = config.initial_backoff;
                failures.store(0, Ordering::Relaxed);
                let now = SystemTime::now();
                let wait = renew_in(&cert, now, config.jitter_fraction);
                tracing::info!(identity = %identity, renew_in_s = wait.as_secs(), "certificate issued");
                if std::mem::replace(&mut issued, true) {
                    metrics.rotated();
                }
                let valid_for = cert.not_after().duration_since(now).unwrap_or_default();
                serving_until = Some(tokio::time::Instant::now() + valid_for);
                tx.send_replace(Some(Ok(Arc::new(cert))));
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                let now = tokio::time::Instant::now();
                let left = serving_until.map(|until| until.saturating_duration_since(now));
                let delay = jittered(backoff.min(retry_bound(&config, left)));
                let failed = failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                match left {
                    // Fail static: the certificate in hand keeps serving until its not_after.
                    Some(left) => {
                        tracing::warn!(identity = %identity, error = %e, failures = failed, expires_in_s = left.as_secs(), retry_in_ms = delay.as_millis() as u64, "certificate renewal failed; the current certificate is kept until it expires")
                    }
                    None => {
                        tracing::warn!(identity = %identity, error = %e, failures = failed, retry_in_ms = delay.as_millis() as u64, "certificate fetch failed")
                    }
                }
                metrics.failed(&e);
                if serving_until.is_none() {
                    tx.send_replace(Some(Err(e)));
                }
                // A waiting caller cuts a grown backoff short, once per `wait_on_failure`:
                // enough for a pod whose first connection comes after the CA learnt about it,
                // too rare for callers of an identity the CA keeps refusing to hammer it. The
                // backoff keeps growing either way.
                let retry_at = now + delay;
                loop {
                    let nudge_allowed_at = last_nudged.map(|at| at + config.wait_on_failure);
                    let nudged = async {
                        if let Some(at) = nudge_allowed_at {
                            tokio::time::sleep_until(at).await;
                        }
                        nudge.notified().await;
                        tokio::time::sleep(config.initial_backoff).await;
                    };
                    tokio::select! {
                        () = tokio::time::sleep_until(retry_at) => break,
                        () = nudged => {
                            last_nudged = Some(tokio::time::Instant::now());
                            break;
                        }
                        () = sleep_until(serving_until) => {
                            serving_until = None;
                            withdraw(&tx, &identity);
                        }
                    }
                }
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Takes the served certificate out of the slot once it expired without a renewal: handshakes
/// get none, and [`CertManager::get`] waits for the next fetch.
fn withdraw(
    tx: &watch::Sender<Option<Result<Arc<WorkloadCertificate>, FetchError>>>,
    identity: &Identity,
) {
    tracing::warn!(identity = %identity, "certificate expired before a renewal succeeded; withdrawn");
    tx.send_replace(Some(Err(FetchError::Expired(format!(
        "{identity}: no renewal succeeded before it expired"
    )))));
}

/// The error for a certificate past its `not_after`.
fn expired(cert: &WorkloadCertificate) -> FetchError {
    let ago = SystemTime::now()
        .duration_since(cert.not_after())
        .unwrap_or_default();
    FetchError::Expired(format!(
        "{}: expired {}s ago",
        cert.identity(),
        ago.as_secs()
    ))
}

/// How long from `now` until `cert` should be renewed: half of the validity left from `now`
/// (or from `not_before`, if later), minus up to `jitter_fraction` of it. Not half of the
/// whole lifetime: the CA backdates `not_before` for clock skew, and counting from there would
/// renew a certificate of a minute's lifetime at once, and again, in a loop.
pub fn renew_in(cert: &WorkloadCertificate, now: SystemTime, jitter_fraction: f64) -> Duration {
    let from = now.max(cert.not_before());
    let left = cert.not_after().duration_since(from).unwrap_or_default();
    let jitter = left.mul_f64(jitter_fraction.clamp(0.0, 0.5) * rand::random::<f64>());
    let at = from + left / 2 - jitter;
    at.duration_since(now).unwrap_or_default()
}

/// The longest wait before retrying a failed renewal: [`RenewalConfig::max_backoff`], and while
/// a certificate is still valid for `left`, a quarter of that (never below the initial
/// backoff), so that several retries fit before it expires and a CA that comes back is used
/// well before the certificate runs out.
pub fn retry_bound(config: &RenewalConfig, left: Option<Duration>) -> Duration {
    match left {
        Some(left) => (left / 4)
            .max(config.initial_backoff)
            .min(config.max_backoff),
        None => config.max_backoff,
    }
}

fn jittered(d: Duration) -> Duration {
    // Up to ±20% so that many workers retrying at once spread out.
    d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

#[cfg(test)]
mod tests;
