//! Lifetimes of identities and certificates, on tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::sleep;

use super::*;
use crate::hbone::ServerCerts;
use crate::testing::TestCa;

const GRACE: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);

fn id(sa: &str) -> Identity {
    format!("spiffe://cluster.local/ns/demo/sa/{sa}")
        .parse()
        .expect("identity")
}

fn config() -> RenewalConfig {
    RenewalConfig {
        jitter_fraction: 0.0,
        release_grace: GRACE,
        ..RenewalConfig::default()
    }
}

/// Lets spawned tasks run to their next await.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_identity_is_forgotten_after_its_last_lease_goes_and_the_grace_ends() {
    let ca = TestCa::new("cluster.local", HOUR);
    let manager = CertManager::new(ca.clone(), config());
    let (first, second) = (manager.lease(&id("a")), manager.lease(&id("a")));
    manager.get(&id("a")).await.expect("certificate");
    let mut slot = manager.subscribe(&id("a"));
    assert!(matches!(&*slot.borrow_and_update(), Some(Ok(_))));
    // An identity only ever fetched, never leased, is kept.
    manager.get(&id("unleased")).await.expect("certificate");
    assert_eq!(manager.workers(), 2);

    drop(first);
    sleep(GRACE * 2).await;
    assert_eq!(manager.workers(), 2, "still leased by the second pod");

    drop(second);
    sleep(GRACE - Duration::from_secs(1)).await;
    assert_eq!(manager.workers(), 2, "within the grace");
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        manager.workers(),
        1,
        "the grace ended: only the unleased one is left"
    );
    assert_eq!(manager.status()[0].identity, id("unleased"));
    assert!(
        slot.changed().await.is_err(),
        "the worker stopped: subscribers see it end"
    );

    // Past the half-life of both certificates: only the unleased identity renews.
    let fetched = ca.fetch_count();
    sleep(HOUR / 2).await;
    settle().await;
    assert_eq!(ca.fetch_count(), fetched + 1);
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_within_the_grace_keeps_the_worker_and_its_certificate() {
    let ca = TestCa::new("cluster.local", HOUR);
    let manager = CertManager::new(ca.clone(), config());
    let lease = manager.lease(&id("a"));
    let cert = manager.get(&id("a")).await.expect("certificate");
    drop(lease);

    sleep(GRACE - Duration::from_secs(5)).await;
    let again = manager.lease(&id("a"));
    sleep(GRACE * 3).await;
    assert_eq!(manager.workers(), 1, "the pending release was cancelled");
    let same = manager.get(&id("a")).await.expect("certificate");
    assert!(Arc::ptr_eq(&cert, &same), "no new fetch");
    assert_eq!(ca.fetch_count(), 1);

    // Released for good: the timer armed now decides, not the cancelled one.
    drop(again);
    sleep(GRACE + Duration::from_secs(1)).await;
    assert_eq!(manager.workers(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_no_grace_the_last_lease_stops_renewal_at_once() {
    let ca = TestCa::new("cluster.local", HOUR);
    let manager = CertManager::new(
        ca,
        RenewalConfig {
            release_grace: Duration::ZERO,
            ..config()
        },
    );
    let lease = manager.lease(&id("a"));
    manager.get(&id("a")).await.expect("certificate");
    drop(lease);
    assert_eq!(manager.workers(), 0);
}

/// What the provider does after its first certificate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Fail,
    Hang,
    Issue,
}

/// Issues a first certificate of `age` out of `ttl`, then does what `then` says (an hour-long
/// certificate for `Issue`).
struct Scripted {
    ca: Arc<TestCa>,
    age: Duration,
    ttl: Duration,
    then: std::sync::Mutex<Then>,
    fetches: AtomicUsize,
}

impl Scripted {
    fn new(age: Duration, ttl: Duration, then: Then) -> Arc<Self> {
        Arc::new(Scripted {
            ca: TestCa::new("cluster.local", HOUR),
            age,
            ttl,
            then: std::sync::Mutex::new(then),
            fetches: AtomicUsize::new(0),
        })
    }

    fn then(&self, then: Then) {
        *self.then.lock().expect("lock") = then;
    }
}

impl CertificateProvider for Scripted {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
        Box::pin(async move {
            if self.fetches.fetch_add(1, Ordering::SeqCst) == 0 {
                let from = SystemTime::now() - self.age;
                return Ok(self.ca.issue_at(identity, from, self.ttl)?);
            }
            let then = *self.then.lock().expect("lock");
            match then {
                Then::Fail => Err(FetchError::Unavailable("CA down".into())),
                Then::Hang => std::future::pending().await,
                Then::Issue => Ok(self.ca.issue(identity)),
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_certificate_not_renewed_before_it_expires_is_withdrawn_then_replaced() {
    // Half its life is over at once: renewal starts now, and fails until the CA is back.
    let ca = Scripted::new(
        Duration::from_secs(100),
        Duration::from_secs(200),
        Then::Fail,
    );
    let manager = CertManager::new(
        ca.clone(),
        RenewalConfig {
            max_backoff: Duration::from_secs(2),
            wait_on_failure: Duration::from_secs(5),
            ..config()
        },
    );
    let _lease = manager.lease(&id("a"));
    let first = manager.get(&id("a")).await.expect("first certificate");
    let slot = manager.subscribe(&id("a"));
    assert!(slot.server_config().is_some());

    sleep(Duration::from_secs(90)).await;
    assert!(ca.fetches.load(Ordering::SeqCst) > 2, "renewal is retried");
    assert!(slot.server_config().is_some(), "still valid for a while");

    sleep(Duration::from_secs(15)).await;
    assert!(
        slot.server_config().is_none(),
        "handshakes get no expired certificate"
    );
    let err = manager.get(&id("a")).await.expect_err("none to hand out");
    assert!(
        matches!(err, FetchError::Expired(_) | FetchError::Unavailable(_)),
        "{err}"
    );

    // The CA is back: the next caller waits for the renewal, as for a first fetch.
    ca.then(Then::Issue);
    let renewed = manager.get(&id("a")).await.expect("renewed");
    assert!(!Arc::ptr_eq(&first, &renewed));
    assert!(!renewed.is_expired_at(SystemTime::now()));
    assert!(slot.server_config().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_ca_that_never_answers_does_not_keep_an_expired_certificate_served() {
    let ca = Scripted::new(
        Duration::from_secs(100),
        Duration::from_secs(200),
        Then::Hang,
    );
    let manager = CertManager::new(ca.clone(), config());
    let _lease = manager.lease(&id("a"));
    manager.get(&id("a")).await.expect("first certificate");
    let slot = manager.subscribe(&id("a"));
    sleep(Duration::from_secs(105)).await;
    assert_eq!(ca.fetches.load(Ordering::SeqCst), 2, "the renewal hangs");
    assert!(slot.server_config().is_none());
    assert!(matches!(
        manager.get(&id("a")).await,
        Err(FetchError::Expired(_))
    ));
}

/// `get` checks `not_after` itself: a certificate that expired (on the wall clock) before the
/// worker could withdraw it is not handed out.
#[tokio::test(start_paused = true)]
async fn get_never_returns_a_certificate_past_not_after() {
    // About a second of validity left, and a renewal that hangs.
    let ca = Scripted::new(Duration::from_secs(60), Duration::from_secs(62), Then::Hang);
    let manager = CertManager::new(ca, config());
    let cert = manager.get(&id("a")).await.expect("first certificate");
    // Tokio's clock is paused: only the wall clock moves, the worker's timer does not fire.
    let wall = std::time::Instant::now();
    while !cert.is_expired_at(SystemTime::now()) {
        assert!(wall.elapsed() < Duration::from_secs(10), "never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    match manager.get(&id("a")).await {
        Err(FetchError::Expired(_)) => {}
        other => panic!("expected Expired, got {other:?}"),
    }
}

/// The CA backdates `not_before` for clock skew: a short-lived certificate is renewed at half
/// of the validity it has left, not at once (and again, in a loop).
#[tokio::test(start_paused = true)]
async fn a_backdated_short_lived_certificate_renews_at_half_its_validity_left() {
    // Issued a minute in the past with 80 s of lifetime: 20 s left, renewal due in 10 s.
    let ca = Scripted::new(
        Duration::from_secs(60),
        Duration::from_secs(80),
        Then::Issue,
    );
    let manager = CertManager::new(ca.clone(), config());
    let _lease = manager.lease(&id("a"));
    manager.get(&id("a")).await.expect("first certificate");
    sleep(Duration::from_secs(9)).await;
    assert_eq!(ca.fetches.load(Ordering::SeqCst), 1, "renewed too early");
    sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(ca.fetches.load(Ordering::SeqCst), 2, "renewed at 10 s");
}

#[tokio::test(start_paused = true)]
async fn while_the_ca_is_down_the_certificate_is_kept_until_not_after_and_retries_get_denser() {
    // 40 s of validity: renewal from 20 s on, against a CA that is down.
    let ca = Scripted::new(Duration::ZERO, Duration::from_secs(40), Then::Fail);
    let manager = CertManager::new(ca.clone(), config());
    let _lease = manager.lease(&id("a"));
    let first = manager.get(&id("a")).await.expect("first certificate");
    let slot = manager.subscribe(&id("a"));
    sleep(Duration::from_secs(19)).await;
    assert_eq!(ca.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(manager.status()[0].refresh_failures, 0);

    sleep(Duration::from_secs(19)).await;
    // Doubling alone (0.2 s, 0.4 s, ... up to a minute) would have made 7 attempts by 38 s;
    // bounded by a quarter of the validity left, retries get denser as expiry nears.
    let failures = manager.status()[0].refresh_failures;
    assert!(failures >= 9, "{failures} failed renewals in 18 s");
    assert_eq!(
        ca.fetches.load(Ordering::SeqCst),
        failures as usize + 1,
        "every failure is counted"
    );
    assert!(slot.server_config().is_some(), "kept while still valid");
    let held = manager.get(&id("a")).await.expect("still handed out");
    assert!(Arc::ptr_eq(&first, &held));

    // The CA is back with two seconds of validity left: a retry comes well within them.
    ca.then(Then::Issue);
    sleep(Duration::from_secs(1)).await;
    settle().await;
    let status = &manager.status()[0];
    assert_eq!(status.refresh_failures, 0, "the success resets the count");
    let renewed = status.cert.clone().expect("renewed");
    assert!(!Arc::ptr_eq(&first, &renewed), "a new certificate");
    assert!(slot.server_config().is_some(), "never withdrawn");
}

#[test]
fn retries_wait_at_most_a_quarter_of_the_validity_left_within_the_configured_bounds() {
    let config = RenewalConfig::default();
    assert_eq!(
        retry_bound(&config, Some(Duration::from_secs(40))),
        Duration::from_secs(10)
    );
    assert_eq!(
        retry_bound(&config, Some(Duration::from_secs(3600))),
        config.max_backoff
    );
    assert_eq!(
        retry_bound(&config, Some(Duration::from_millis(100))),
        config.initial_backoff
    );
    assert_eq!(retry_bound(&config, None), config.max_backoff);
}
