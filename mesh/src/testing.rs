//! An in-process CA for tests and local demos: signs any identity it is asked for.
//!
//! Never used by a daemon in production: the real CA checks who may hold what.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::ca::{CertificateAuthority, VerifiedCsr};
use crate::cert::{new_csr, CertError, WorkloadCertificate};
use crate::cert_manager::{BoxFuture, CertificateProvider, FetchError};
use crate::identity::Identity;

/// A CA that signs every request, counting them.
pub struct TestCa {
    /// The signing authority.
    pub ca: CertificateAuthority,
    /// Lifetime of issued certificates.
    pub ttl: Duration,
    fetches: AtomicUsize,
}

impl TestCa {
    /// A fresh root for `trust_domain` issuing certificates valid for `ttl`.
    pub fn new(trust_domain: &str, ttl: Duration) -> Arc<Self> {
        Arc::new(TestCa {
            ca: CertificateAuthority::generate_root(trust_domain).expect("root generation"),
            ttl,
            fetches: AtomicUsize::new(0),
        })
    }

    /// Issues a certificate for `identity`, valid from `not_before` for `ttl`.
    pub fn issue_at(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        ttl: Duration,
    ) -> Result<WorkloadCertificate, CertError> {
        let csr = new_csr(identity)?;
        let verified =
            VerifiedCsr::from_pem(&csr.csr_pem).map_err(|e| CertError::Key(e.to_string()))?;
        let chain = self
            .ca
            .sign_valid_from(&verified, not_before, ttl)
            .map_err(|e| CertError::Key(e.to_string()))?;
        WorkloadCertificate::from_ca_response(identity, &csr.key, &chain)
    }

    /// Issues a certificate for `identity` valid from now.
    pub fn issue(&self, identity: &Identity) -> WorkloadCertificate {
        self.issue_at(identity, SystemTime::now(), self.ttl)
            .expect("test CA issues")
    }

    /// How many certificates were fetched through [`CertificateProvider`].
    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl CertificateProvider for TestCa {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
        Box::pin(async move {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            Ok(self.issue_at(identity, SystemTime::now(), self.ttl)?)
        })
    }
}

/// Log lines captured from `tracing`, for tests that assert what a refusal logged.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

impl LogBuffer {
    /// Everything captured, as lines.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_string).collect()
    }

    /// Everything captured.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// The process-wide capture of `info` logs: installs a global subscriber on first use
    /// (for test binaries whose servers log from many threads).
    pub fn global() -> &'static LogBuffer {
        static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let buffer = LogBuffer::default();
            let _ = tracing_subscriber::fmt()
                .with_writer(buffer.clone())
                .with_ansi(false)
                .with_env_filter("info")
                .try_init();
            buffer
        })
    }

    /// Captures `info` logs of the current thread until the guard drops (for single-threaded
    /// test runtimes, where spawned tasks log on this thread too).
    pub fn scoped() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
        let buffer = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (buffer, tracing::subscriber::set_default(subscriber))
    }
}
