//! The client of the mesh CA: `istio.v1.auth.IstioCertificateService/CreateCertificate` over
//! TLS (port 15012).
//!
//! [`CaClient`] generates a key and CSR for an identity ([`crate::cert::new_csr`]), sends the
//! CSR with the caller's bearer token and turns the answer (PEM chain, leaf first, root last)
//! into a [`WorkloadCertificate`]. The key never leaves the process.
//!
//! The channel connects lazily on the first request and reconnects by itself, so a node tunnel
//! can start before the CA is up: fetches fail with [`FetchError::Unavailable`] (which the
//! certificate manager retries with backoff) until the CA answers.
//!
//! TLS is rustls with the ring provider (tonic's `tls-ring`); the CA's serving certificate must
//! chain to [`CaClientConfig::root_cert_pem`] and name [`CaClientConfig::server_name`]. With
//! [`CaClient::with_root_file`], the trust anchor is re-read before every request and a
//! changed one replaces the channel: the control plane's root can rotate (old + new, then
//! new) without restarting the proxies, as the `root-cert.pem` the kubelet or istiod-lite
//! rewrites changes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::ca::IstioCertificateRequest;

use crate::cert::{new_csr, parse_pem_certs, WorkloadCertificate};
use crate::cert_manager::{BoxFuture, CertificateProvider, FetchError};
use crate::identity::Identity;

/// The metadata key a node tunnel uses to ask for a certificate on behalf of a pod.
pub const IMPERSONATED_IDENTITY_KEY: &str = "ImpersonatedIdentity";

/// How long one certificate request may take, connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long establishing the TCP + TLS connection to the CA may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer we accept from the CA: a chain is a few KiB.
const MAX_RESPONSE_LEN: usize = 1024 * 1024;

/// Where the CA is and how to talk to it.
#[derive(Clone)]
pub struct CaClientConfig {
    /// The CA's address, `https://host:15012`. Plain `http://` is refused: the token would
    /// travel in the clear.
    pub address: String,
    /// PEM trust anchor(s) for the CA's serving certificate.
    pub root_cert_pem: String,
    /// The name the CA's serving certificate must carry, e.g. `istiod-lite.istio-system.svc`.
    pub server_name: String,
    /// Bearer token sent as `authorization: Bearer <token>`, if any.
    pub token: Option<String>,
    /// A file holding the token, read afresh for every request (projected ServiceAccount
    /// tokens rotate); takes precedence over `token`.
    pub token_file: Option<std::path::PathBuf>,
    /// Requested certificate lifetime (the CA may cap it).
    pub ttl: Duration,
    /// Set for a node tunnel asking on behalf of pods: each request names the identity in the
    /// `ImpersonatedIdentity` metadata field.
    pub impersonate: bool,
}

impl std::fmt::Debug for CaClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClientConfig")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ttl", &self.ttl)
            .field("impersonate", &self.impersonate)
            .finish_non_exhaustive()
    }
}

/// Why a [`CaClient`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// The address is not an `https://` URI.
    #[error("CA address {address:?} is unusable: {reason}")]
    Address {
        /// The configured address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The trust anchor for the CA is not PEM certificates.
    #[error("CA root certificate is unusable: {0}")]
    Root(String),
    /// The token cannot be sent as a header value.
    #[error("CA token is unusable: it must be non-empty visible ASCII without spaces")]
    Token,
    /// tonic refused the TLS settings.
    #[error("CA client TLS settings refused: {0}")]
    Tls(String),
}

/// A client of the mesh CA; cheap to clone, one lazily connected HTTP/2 channel underneath.
#[derive(Clone)]
pub struct CaClient {
    /// The trust anchor the channel was built with, and the channel.
    channel: Arc<Mutex<(String, IstioCertificateServiceClient<Channel>)>>,
    server_name: String,
    /// Re-read before each request when set ([`CaClient::with_root_file`]).
    root_file: Option<PathBuf>,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    token_file: Option<std::path::PathBuf>,
    ttl: Duration,
    impersonate: bool,
    request_timeout: Duration,
    address: String,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("address", &self.address)
            .field("ttl", &self.ttl)
            .field("impersonate", &self.impersonate)
            .finish_non_exhaustive()
    }
}

/// `Bearer <token>` as a header value, if the token can be one.
fn bearer(token: &str) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    let valid = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return None;
    }
    format!("Bearer {token}").parse().ok()
}

impl CaClient {
    /// Builds a client. Does not connect: the first request does. Must be called inside a tokio
    /// runtime (the channel spawns its worker task).
    pub fn new(config: CaClientConfig) -> Result<Self, CaClientError> {
        let address_error = |reason: String| CaClientError::Address {
            address: config.address.clone(),
            reason,
        };
        if !config.address.starts_with("https://") {
            return Err(address_error(
                "it must start with https:// (the bearer token is never sent in the clear)".into(),
            ));
        }
        let authorization = match &config.token {
            None => None,
            Some(token) => Some(bearer(token).ok_or(CaClientError::Token)?),
        };
        let client = connect_lazy(&config.address, &config.root_cert_pem, &config.server_name)?;
        Ok(CaClient {
            channel: Arc::new(Mutex::new((config.root_cert_pem, client))),
            server_name: config.server_name,
            root_file: None,
            authorization,
            token_file: config.token_file,
            ttl: config.ttl,
            impersonate: config.impersonate,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            address: config.address,
        })
    }

    /// Re-reads the CA's trust anchor from `path` before every request; when it changed (and
    /// holds PEM certificates), new connections verify against it. Unreadable or unusable
    /// content keeps the anchor in use (with a warning).
    pub fn with_root_file(mut self, path: PathBuf) -> Self {
        self.root_file = Some(path);
        self
    }

    /// The channel to use, rebuilt first if the root file changed.
    async fn client(&self) -> IstioCertificateServiceClient<Channel> {
        let fresh = match &self.root_file {
            Some(path) => match tokio::fs::read_to_string(path).await {
                Ok(pem) => Some(pem),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot re-read the CA root; keeping the one in use");
                    None
                }
            },
            None => None,
        };
        let mut channel = self
            .channel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pem) = fresh.filter(|pem| *pem != channel.0) {
            match connect_lazy(&self.address, &pem, &self.server_name) {
                Ok(client) => {
                    tracing::info!(address = %self.address, "the CA root file changed; new connections to the CA verify against it");
                    *channel = (pem, client);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the changed CA root is unusable; keeping the one in use")
                }
            }
        }
        channel.1.clone()
    }

    /// Replaces the per-request timeout (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Generates a key and CSR for `identity`, asks the CA to sign it and returns the
    /// certificate with its key and trust bundle.
    pub async fn fetch_certificate(
        &self,
        identity: &Identity,
    ) -> Result<WorkloadCertificate, FetchError> {
        let csr = new_csr(identity).map_err(|e| {
            FetchError::Unavailable(format!("could not generate a key and CSR: {e}"))
        })?;
        let metadata = self.impersonate.then(|| prost_types::Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY_KEY.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
                },
            )]),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.csr_pem,
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata,
        });
        request.set_timeout(self.request_timeout);
        let authorization = match &self.token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| {
                    FetchError::Unavailable(format!(
                        "reading the token file {}: {e}",
                        path.display()
                    ))
                })?;
                Some(bearer(token.trim()).ok_or_else(|| {
                    FetchError::Unavailable(format!(
                        "the token in {} is not usable: it must be non-empty visible ASCII",
                        path.display()
                    ))
                })?)
            }
            None => self.authorization.clone(),
        };
        if let Some(auth) = authorization {
            request.metadata_mut().insert("authorization", auth);
        }
        let mut client = self.client().await;
        let response =
            match tokio::time::timeout(self.request_timeout, client.create_certificate(request))
                .await
            {
                Err(_elapsed) => {
                    return Err(FetchError::Unavailable(format!(
                        "no answer from the CA at {} within {:?}",
                        self.address, self.request_timeout
                    )))
                }
                Ok(Err(status)) => return Err(fetch_error(&status)),
                Ok(Ok(response)) => response.into_inner(),
            };
        let cert = WorkloadCertificate::from_ca_response(identity, &csr.key, &response.cert_chain)?;
        tracing::debug!(identity = %identity, chain_len = response.cert_chain.len(), "CA signed certificate");
        Ok(cert)
    }
}

impl CertificateProvider for CaClient {
    fn fetch<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<WorkloadCertificate, FetchError>> {
        Box::pin(self.fetch_certificate(identity))
    }
}

/// A lazily connecting client of the CA at `address`, verifying it against `root_pem`.
fn connect_lazy(
    address: &str,
    root_pem: &str,
    server_name: &str,
) -> Result<IstioCertificateServiceClient<Channel>, CaClientError> {
    // Fail now, not on the first request, when the anchor is not PEM certificates.
    parse_pem_certs(root_pem).map_err(|e| CaClientError::Root(e.to_string()))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name(server_name.to_string());
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|e| CaClientError::Address {
            address: address.to_string(),
            reason: e.to_string(),
        })?
        .tls_config(tls)
        .map_err(|e| CaClientError::Tls(source_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(IstioCertificateServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_RESPONSE_LEN))
}

/// Maps a gRPC status to whether retrying may help.
fn fetch_error(status: &Status) -> FetchError {
    match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::Unimplemented => {
            FetchError::Refused(format!("{:?}: {}", status.code(), status.message()))
        }
        // Unavailable, DeadlineExceeded, Unknown (transport errors), Internal, ...: the CA may
        // answer differently next time.
        code => {
            let mut detail = status.message().to_string();
            append_sources(&mut detail, std::error::Error::source(status));
            FetchError::Unavailable(format!("{code:?}: {detail}"))
        }
    }
}

/// An error's message followed by its sources, so a TLS failure under a transport error shows.
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    append_sources(&mut out, e.source());
    out
}

fn append_sources(out: &mut String, first: Option<&(dyn std::error::Error + 'static)>) {
    let mut next = first;
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CertificateAuthority;

    #[tokio::test]
    async fn a_token_file_is_read_for_each_request() {
        let ca = CertificateAuthority::generate_root("cluster.local").expect("ca");
        let path = std::env::temp_dir().join(format!("istio-token-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut cfg = config("https://127.0.0.1:9", ca.root_pem(), None);
        cfg.token_file = Some(path.clone());
        let client = CaClient::new(cfg)
            .expect("client")
            .with_request_timeout(Duration::from_millis(300));
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().expect("id");
        // No file yet: said plainly, before any connection.
        let err = client.fetch_certificate(&id).await.expect_err("no token");
        assert!(err.to_string().contains("reading the token file"), "{err}");
        // Written (as the kubelet rotates it): the next request gets past the token.
        std::fs::write(&path, "rotated-token\n").expect("write");
        let err = client.fetch_certificate(&id).await.expect_err("no server");
        let _ = std::fs::remove_file(&path);
        assert!(!err.to_string().contains("token"), "{err}");
    }

    fn config(address: &str, root: &str, token: Option<&str>) -> CaClientConfig {
        CaClientConfig {
            address: address.into(),
            root_cert_pem: root.into(),
            server_name: "istiod-lite.istio-system.svc".into(),
            token: token.map(String::from),
            token_file: None,
            ttl: Duration::from_secs(3600),
            impersonate: false,
        }
    }

    #[tokio::test]
    async fn refuses_plaintext_addresses_bad_roots_and_bad_tokens() {
        let ca = CertificateAuthority::generate_root("cluster.local").expect("root");
        let root = ca.root_pem();
        assert!(matches!(
            CaClient::new(config("http://127.0.0.1:15012", root, None)),
            Err(CaClientError::Address { .. })
        ));
        assert!(matches!(
            CaClient::new(config("https://127.0.0.1:15012", "not pem", None)),
            Err(CaClientError::Root(_))
        ));
        assert!(matches!(
            CaClient::new(config("https://127.0.0.1:15012", root, Some("two words"))),
            Err(CaClientError::Token)
        ));
        assert!(matches!(
            CaClient::new(config("https://127.0.0.1:15012", root, Some(""))),
            Err(CaClientError::Token)
        ));
        let client = CaClient::new(config("https://127.0.0.1:15012", root, Some("secret")))
            .expect("valid config");
        assert!(!format!("{client:?}").contains("secret"));
        assert!(!format!("{:?}", config("https://x", root, Some("secret"))).contains("secret"));
    }

    #[tokio::test]
    async fn an_unreachable_ca_is_unavailable_not_refused() {
        let ca = CertificateAuthority::generate_root("cluster.local").expect("root");
        // Bind then drop a listener so the port is (almost certainly) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let client = CaClient::new(config(
            &format!("https://127.0.0.1:{port}"),
            ca.root_pem(),
            Some("t"),
        ))
        .expect("client");
        let who: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().expect("id");
        let err = client.fetch(&who).await.expect_err("nothing listens");
        assert!(matches!(err, FetchError::Unavailable(_)), "{err}");
    }

    #[test]
    fn status_codes_map_to_retryable_or_refused() {
        for code in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::InvalidArgument,
        ] {
            assert!(matches!(
                fetch_error(&Status::new(code, "no")),
                FetchError::Refused(_)
            ));
        }
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unknown,
            Code::Internal,
        ] {
            assert!(matches!(
                fetch_error(&Status::new(code, "later")),
                FetchError::Unavailable(_)
            ));
        }
    }
}
