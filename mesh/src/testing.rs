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
                .with_max_level(tracing::Level::INFO)
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

/// An ES256 JWT issuer for tests: its JWKS goes into a RequestAuthentication, its tokens into
/// requests.
pub struct JwtIssuer {
    key: ring::signature::EcdsaKeyPair,
    /// The `iss` of every token, and the issuer the JWKS is for.
    pub issuer: String,
}

impl JwtIssuer {
    /// A new issuer with a fresh P-256 key.
    pub fn new(issuer: &str) -> Self {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        JwtIssuer {
            key,
            issuer: issuer.to_string(),
        }
    }

    /// The public key as a JWKS document (key id `test`).
    pub fn jwks(&self) -> String {
        use ring::signature::KeyPair;
        let point = self.key.public_key().as_ref();
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "test", "alg": "ES256",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..]),
        }]})
        .to_string()
    }

    /// A signed token for `sub`, valid from a minute ago for `ttl`, with `extra` claims merged.
    pub fn token(&self, sub: &str, ttl: Duration, extra: serde_json::Value) -> String {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let mut claims = serde_json::json!({
            "iss": self.issuer, "sub": sub, "iat": now, "nbf": now - 60,
            "exp": now + ttl.as_secs(),
        });
        if let (Some(c), serde_json::Value::Object(extra)) = (claims.as_object_mut(), extra) {
            c.extend(extra);
        }
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "test"});
        let signed = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
            .expect("sign");
        format!("{signed}.{}", b64url(sig.as_ref()))
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
