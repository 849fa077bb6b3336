//! Certificates over time: renewal at half-life, backoff on CA failure, root rotation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mesh::cert::WorkloadCertificate;
use mesh::cert_manager::{
    renew_in, BoxFuture, CertManager, CertificateProvider, FetchError, RenewalConfig,
};
use mesh::hbone::{ConnectMeta, H2Config, Pool, PoolKey, Server, TcpConnector};
use mesh::testing::TestCa;
use mesh::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sleep_id() -> Identity {
    "spiffe://cluster.local/ns/default/sa/sleep"
        .parse()
        .expect("identity")
}

fn no_jitter() -> RenewalConfig {
    RenewalConfig {
        jitter_fraction: 0.0,
        ..RenewalConfig::default()
    }
}

/// Lets tokio's paused clock run the renewal task until it is idle.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn certificate_is_renewed_at_half_life() {
    let ttl = Duration::from_secs(3600);
    let ca = TestCa::new("cluster.local", ttl);
    let manager = CertManager::new(ca.clone(), no_jitter());
    let first = manager.get(&sleep_id()).await.expect("first certificate");
    assert_eq!(ca.fetch_count(), 1);

    // Half-life is measured from the certificate's own not_before (backdated by the CA).
    let until_half = first
        .half_life()
        .duration_since(SystemTime::now())
        .expect("half-life is in the future");
    assert!(until_half > Duration::from_secs(1700) && until_half <= ttl / 2);

    tokio::time::sleep(until_half - Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(ca.fetch_count(), 1, "renewed too early");

    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(ca.fetch_count(), 2, "not renewed at half-life");
    let second = manager.get(&sleep_id()).await.expect("renewed certificate");
    assert!(
        !Arc::ptr_eq(&first, &second),
        "callers get the new certificate"
    );
}

#[test]
fn jittered_renewal_falls_between_45_and_50_percent_of_the_lifetime() {
    let ca = TestCa::new("cluster.local", Duration::from_secs(1000));
    let cert = ca.issue(&sleep_id());
    let lifetime = cert
        .not_after()
        .duration_since(cert.not_before())
        .expect("ordered");
    for _ in 0..200 {
        let wait = renew_in(&cert, cert.not_before(), 0.05);
        assert!(wait <= lifetime / 2, "{wait:?} after half-life");
        assert!(wait >= lifetime.mul_f64(0.45), "{wait:?} before 45%");
    }
}

/// Fails the first `failures` fetches, recording when each attempt happened.
struct Flaky {
    ca: Arc<TestCa>,
    failures: usize,
    attempts: AtomicUsize,
    at: Mutex<Vec<tokio::time::Instant>>,
}

impl CertificateProvider for Flaky {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
        Box::pin(async move {
            self.at
                .lock()
                .expect("lock")
                .push(tokio::time::Instant::now());
            if self.attempts.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(FetchError::Unavailable("CA down".into()));
            }
            self.ca.fetch(identity).await
        })
    }
}

#[tokio::test(start_paused = true)]
async fn failed_fetches_back_off_exponentially_then_succeed() {
    let flaky = Arc::new(Flaky {
        ca: TestCa::new("cluster.local", Duration::from_secs(3600)),
        failures: 4,
        attempts: AtomicUsize::new(0),
        at: Mutex::new(Vec::new()),
    });
    // Nobody waits on the certificate here: the worker's own backoff alone.
    let config = RenewalConfig {
        wait_on_failure: Duration::ZERO,
        ..no_jitter()
    };
    let manager = CertManager::new(flaky.clone(), config);
    let err = manager
        .get(&sleep_id())
        .await
        .expect_err("first fetch fails");
    assert!(matches!(err, FetchError::Unavailable(_)));

    let mut rx = manager.subscribe(&sleep_id());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if matches!(&*rx.borrow_and_update(), Some(Ok(_))) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    }
    let at = flaky.at.lock().expect("lock").clone();
    assert_eq!(at.len(), 5, "4 failures then 1 success");
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps.windows(2) {
        // Doubling with ±20% jitter: each gap is clearly longer than the one before.
        assert!(pair[1] > pair[0].mul_f64(1.3), "no backoff: {gaps:?}");
    }
}

fn flaky(failures: usize) -> Arc<Flaky> {
    Arc::new(Flaky {
        ca: TestCa::new("cluster.local", Duration::from_secs(3600)),
        failures,
        attempts: AtomicUsize::new(0),
        at: Mutex::new(Vec::new()),
    })
}

#[tokio::test(start_paused = true)]
async fn a_caller_cuts_a_grown_backoff_short_once_the_ca_would_answer() {
    // The CA refused while it did not know the pod: 6 failures, unattended (at about 0, 0.2,
    // 0.6, 1.4, 3.0 and 6.2 s), grow the backoff to 6.4 s.
    let flaky = flaky(6);
    let manager = CertManager::new(flaky.clone(), no_jitter());
    manager.prefetch(&sleep_id());
    tokio::time::sleep(Duration::from_secs(8)).await;
    settle().await;
    assert_eq!(
        flaky.at.lock().expect("lock").len(),
        6,
        "6 unattended failures"
    );
    // The pod's first connection: one prompt retry instead of waiting out the backoff.
    let start = tokio::time::Instant::now();
    manager.get(&sleep_id()).await.expect("certificate");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "waited {:?}",
        start.elapsed()
    );
    assert_eq!(flaky.at.lock().expect("lock").len(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_caller_gets_the_error_after_waiting_when_the_ca_keeps_refusing() {
    let flaky = flaky(usize::MAX);
    let manager = CertManager::new(flaky.clone(), no_jitter());
    let start = tokio::time::Instant::now();
    let err = manager.get(&sleep_id()).await.expect_err("never issued");
    assert!(matches!(err, FetchError::Unavailable(_)));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "waited {waited:?}"
    );
    // The first fetch, one nudged retry, and the backoff's own retries (0.2 s, 0.6 s,
    // 1.4 s; the next is due at 3.0 s): no storm however often callers ask.
    let attempts = flaky.at.lock().expect("lock").len();
    assert!(
        (4..=6).contains(&attempts),
        "a bounded number of retries while waited on: {attempts}"
    );
}

#[tokio::test]
async fn a_bundle_with_two_roots_accepts_peers_from_either() {
    let old = TestCa::new("cluster.local", Duration::from_secs(3600));
    let new = TestCa::new("cluster.local", Duration::from_secs(3600));
    let old_root = old.issue(&sleep_id()).roots().to_vec();
    let new_root = new.issue(&sleep_id()).roots().to_vec();
    let server_id: Identity = "spiffe://cluster.local/ns/echo/sa/echo"
        .parse()
        .expect("id");

    // The server still has a certificate from the old root; the client already one from
    // the new. Both trust both roots, as during a rotation.
    let server_cert = Arc::new(old.issue(&server_id).with_extra_roots(new_root.clone()));
    let client_cert = new.issue(&sleep_id()).with_extra_roots(old_root);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Arc::new(Server::new(H2Config::default(), Arc::new(server_cert)));
    tokio::spawn(server.serve(listener, |req| async move {
        let mut s = req.accept().expect("accept");
        let _ = s.write_all(b"rotated").await;
        let _ = s.shutdown().await;
    }));
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = PoolKey::new(sleep_id(), vec![server_id], addr, None);
    let mut stream = pool
        .connect(
            &key,
            &client_cert,
            "10.0.0.1:80".parse().expect("target"),
            &ConnectMeta::default(),
        )
        .await
        .expect("both roots trusted");
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"rotated");
}
