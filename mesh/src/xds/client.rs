//! The delta ADS client task: connect, subscribe, apply or reject each response, reconnect.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use tracing::Instrument;

use proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::backoff::Backoff;
use super::decode::{check, ResourceType};
use super::{
    BearerToken, NodeInfo, TypeStatus, XdsConfig, XdsError, XdsStatus, XdsTransport, TYPES,
};
use crate::cert::parse_pem_certs;
use crate::metrics::XdsMetrics;
use crate::store::Store;

/// How long establishing the TCP + TLS connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 PING interval and the silence after which the connection is considered dead, so a
/// control plane that vanished without closing the connection is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest response accepted: a full push of a big cluster is tens of MiB.
const MAX_RESPONSE_LEN: usize = 256 * 1024 * 1024;

/// gRPC status code of a NACK: InvalidArgument.
const NACK_CODE: i32 = 3;

/// At most this many rejected resources are spelled out in one NACK message.
const MAX_REJECTS_IN_MESSAGE: usize = 10;

/// The delta ADS client. Build with [`XdsClient::new`], watch [`XdsClient::status`], then run
/// [`XdsClient::run`] as a task.
pub struct XdsClient {
    endpoint: Endpoint,
    /// What `endpoint` was built from, to rebuild it when the root file changes.
    transport: XdsTransport,
    /// Re-read before each connection when set ([`XdsClient::with_root_file`]).
    root_file: Option<std::path::PathBuf>,
    address: String,
    token: Option<BearerToken>,
    node: NodeInfo,
    backoff: Backoff,
    store: Store,
    /// The types subscribed to, in order: [`TYPES`] then the configured extra types.
    types: Vec<ResourceType>,
    status: watch::Sender<XdsStatus>,
    /// Type URL → resource name → version: what the store holds from the control plane, sent
    /// as `initial_resource_versions` on reconnect.
    known: BTreeMap<&'static str, BTreeMap<String, String>>,
    metrics: XdsMetrics,
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("address", &self.address)
            .field("node", &self.node.id)
            .finish_non_exhaustive()
    }
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("cannot read the bearer token: {0}")]
    Token(String),
    #[error("stream failed: {0}")]
    Rpc(String),
    #[error("the control plane closed the stream")]
    Closed,
}

impl XdsClient {
    /// Checks the configuration and builds a client that will write into `store`. Does not
    /// connect: [`XdsClient::run`] does.
    pub fn new(config: XdsConfig, store: Store) -> Result<Self, XdsError> {
        let endpoint = endpoint_for(&config.address, &config.transport, config.token.is_some())?;
        if let Some(BearerToken::Static(token)) = &config.token {
            authorization(token).map_err(XdsError::Token)?;
        }
        let mut types: Vec<ResourceType> = TYPES.to_vec();
        for extra in config.extra_types {
            if !types.contains(&extra) {
                types.push(extra);
            }
        }
        Ok(XdsClient {
            endpoint,
            transport: config.transport,
            root_file: None,
            address: config.address,
            token: config.token,
            node: config.node,
            backoff: Backoff::new(config.backoff),
            store,
            status: watch::Sender::new(XdsStatus {
                subscribed: types.iter().map(|t| t.type_url().to_string()).collect(),
                ..XdsStatus::default()
            }),
            known: types
                .iter()
                .map(|t| (t.type_url(), BTreeMap::new()))
                .collect(),
            types,
            metrics: XdsMetrics::default(),
        })
    }

    /// Re-reads the control plane's trust anchor from `path` before every connection attempt;
    /// when it changed (and holds PEM certificates), the connection verifies against it, so
    /// the control plane's root can rotate without restarting the proxy. Unreadable or
    /// unusable content keeps the anchor in use (with a warning). Only with TLS.
    pub fn with_root_file(mut self, path: std::path::PathBuf) -> Self {
        self.root_file = Some(path);
        self
    }

    /// Rebuilds the endpoint if the root file holds another anchor than the one in use.
    async fn refresh_root(&mut self) {
        let (Some(path), XdsTransport::Tls(tls)) = (&self.root_file, &self.transport) else {
            return;
        };
        let pem = match tokio::fs::read_to_string(path).await {
            Ok(pem) if pem != tls.root_cert_pem => pem,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot re-read the control plane root; keeping the one in use");
                return;
            }
        };
        let transport = XdsTransport::Tls(super::XdsTls {
            root_cert_pem: pem,
            ..tls.clone()
        });
        match endpoint_for(&self.address, &transport, self.token.is_some()) {
            Ok(endpoint) => {
                tracing::info!(path = %path.display(), "the control plane root file changed; connecting with it");
                self.endpoint = endpoint;
                self.transport = transport;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the changed control plane root is unusable; keeping the one in use")
            }
        }
    }

    /// A receiver of the client's progress, updated on every connection change and response.
    pub fn status(&self) -> watch::Receiver<XdsStatus> {
        self.status.subscribe()
    }

    /// The client's metrics, to register with [`crate::metrics::register_xds`] before
    /// [`XdsClient::run`] consumes the client.
    pub fn metrics(&self) -> XdsMetrics {
        self.metrics.clone()
    }

    /// Runs forever: connects, keeps the store in sync, reconnects with backoff when the stream
    /// ends. The store is never cleared (fail static). Stops when the future is dropped.
    pub async fn run(mut self) {
        let mut attempt: u64 = 0;
        loop {
            attempt += 1;
            let mut progressed = false;
            let span = tracing::info_span!("xds", address = %self.address, attempt);
            let error = self.serve(&mut progressed).instrument(span).await;
            if progressed {
                // The stream worked for a while: the next attempt starts quick again.
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay();
            tracing::warn!(
                address = %self.address,
                error = %error,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "xDS stream ended; keeping the last configuration and reconnecting"
            );
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(error.to_string());
            });
            self.metrics.set_connected(false);
            self.metrics.reconnecting();
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection: returns why it ended. Sets `progressed` once a response was handled.
    async fn serve(&mut self, progressed: &mut bool) -> StreamError {
        self.refresh_root().await;
        let channel = match self.endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return StreamError::Connect(source_chain(&e)),
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_LEN);

        // Room for the initial requests plus a few ACKs; the loop below sends one reply per
        // response, so the queue never holds more than that.
        let (tx, rx) = mpsc::channel(self.types.len() + 4);
        for type_url in self.types.iter().map(ResourceType::type_url) {
            let request = self.initial_request(type_url);
            tracing::debug!(
                type_url,
                initial_resources = request.initial_resource_versions.len(),
                "subscribing (wildcard)"
            );
            if tx.send(request).await.is_err() {
                return StreamError::Closed;
            }
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        match self.authorization().await {
            Ok(Some(value)) => {
                request.metadata_mut().insert("authorization", value);
            }
            Ok(None) => {}
            Err(e) => return e,
        }
        let mut responses = match client.delta_aggregated_resources(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return StreamError::Rpc(status_text(&status)),
        };
        self.status.send_modify(|s| {
            s.connected = true;
            s.connections += 1;
        });
        self.metrics.set_connected(true);
        tracing::info!("xDS stream established");
        loop {
            let response = match responses.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return StreamError::Closed,
                Err(status) => return StreamError::Rpc(status_text(&status)),
            };
            let reply = self.handle(response);
            *progressed = true;
            if tx.send(reply).await.is_err() {
                return StreamError::Closed;
            }
        }
    }

    /// The first request of a type on a stream: wildcard subscription plus what we hold.
    fn initial_request(&self, type_url: &'static str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(self.node.to_proto()),
            type_url: type_url.to_string(),
            initial_resource_versions: self
                .known
                .get(type_url)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    /// The `authorization` header value, reading the token file if there is one.
    async fn authorization(&self) -> Result<Option<MetadataValue<Ascii>>, StreamError> {
        let token = match &self.token {
            None => return Ok(None),
            Some(BearerToken::Static(token)) => token.clone(),
            Some(BearerToken::File(path)) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| StreamError::Token(format!("{}: {e}", path.display())))?
                .trim()
                .to_string(),
        };
        authorization(&token).map(Some).map_err(StreamError::Token)
    }

    /// Applies or rejects one response and returns the ACK or NACK to send.
    fn handle(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let received = std::time::Instant::now();
        let type_url = response.type_url.clone();
        self.metrics.received(&type_url);
        let nonce = response.nonce.clone();
        let version = response.system_version_info.clone();
        let Some(kind) = self
            .types
            .iter()
            .copied()
            .find(|t| t.type_url() == type_url)
        else {
            let error = format!("type {type_url:?} was not subscribed to");
            tracing::warn!(type_url, nonce, error, "rejecting xDS response (NACK)");
            self.metrics.nacked(&type_url);
            return nack(type_url, nonce, error);
        };
        match check(kind, response) {
            Ok(accepted) => {
                let (added, removed) = (accepted.added.len(), accepted.removed.len());
                let store_version = self.store.apply(accepted.batch);
                self.metrics.acked(&type_url, received.elapsed());
                let known = self.known.entry(kind.type_url()).or_default();
                for name in accepted.removed {
                    known.remove(&name);
                }
                known.extend(accepted.added);
                let resources = known.len();
                tracing::info!(
                    type_url,
                    version,
                    nonce,
                    added,
                    removed,
                    resources,
                    store_version,
                    "applied xDS response (ACK)"
                );
                self.status.send_modify(|s| {
                    let t = s.types.entry(type_url.clone()).or_default();
                    t.acked_version = Some(version);
                    t.acked_nonce = Some(nonce.clone());
                    t.acks += 1;
                    t.resources = resources;
                });
                DeltaDiscoveryRequest {
                    type_url,
                    response_nonce: nonce,
                    ..Default::default()
                }
            }
            Err(rejects) => {
                let error = nack_message(&rejects);
                tracing::warn!(
                    type_url,
                    version,
                    nonce,
                    rejected = rejects.len(),
                    error,
                    "rejecting xDS response (NACK); keeping the previous configuration"
                );
                self.status.send_modify(|s| {
                    let t: &mut TypeStatus = s.types.entry(type_url.clone()).or_default();
                    t.nacks += 1;
                    t.last_nack = Some(error.clone());
                });
                self.metrics.nacked(&type_url);
                nack(type_url, nonce, error)
            }
        }
    }
}

fn nack_message(rejects: &[String]) -> String {
    let mut message = rejects
        .iter()
        .take(MAX_REJECTS_IN_MESSAGE)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if rejects.len() > MAX_REJECTS_IN_MESSAGE {
        message.push_str(&format!(
            "; and {} more",
            rejects.len() - MAX_REJECTS_IN_MESSAGE
        ));
    }
    message
}

fn nack(type_url: String, nonce: String, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        error_detail: Some(proto::google::rpc::Status {
            code: NACK_CODE,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

/// Checks a token and makes the `authorization: Bearer <token>` header value.
fn authorization(token: &str) -> Result<MetadataValue<Ascii>, String> {
    let valid = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err("it must be non-empty visible ASCII without spaces".into());
    }
    format!("Bearer {token}")
        .parse()
        .map_err(|_| "it cannot be sent as a header value".to_string())
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), source_chain(status))
}

/// The endpoint of the control plane at `address` over `transport`, with connection settings.
fn endpoint_for(
    address: &str,
    transport: &XdsTransport,
    has_token: bool,
) -> Result<Endpoint, XdsError> {
    let address_error = |reason: &str| XdsError::Address {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let mut endpoint =
        Endpoint::from_shared(address.to_string()).map_err(|e| address_error(&e.to_string()))?;
    match transport {
        XdsTransport::Tls(tls) => {
            if !address.starts_with("https://") {
                return Err(address_error("with TLS it must start with https://"));
            }
            parse_pem_certs(&tls.root_cert_pem).map_err(|e| XdsError::Root(e.to_string()))?;
            let mut settings = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.root_cert_pem))
                .domain_name(tls.server_name.clone());
            if let Some(cert) = &tls.client_cert {
                parse_pem_certs(&cert.chain_pem)
                    .map_err(|e| XdsError::ClientCert(e.to_string()))?;
                settings = settings.identity(TlsIdentity::from_pem(&cert.chain_pem, &cert.key_pem));
            }
            endpoint = endpoint
                .tls_config(settings)
                .map_err(|e| XdsError::Tls(source_chain(&e)))?;
        }
        XdsTransport::Plaintext => {
            if !address.starts_with("http://") {
                return Err(address_error("without TLS it must start with http://"));
            }
            if has_token {
                return Err(XdsError::Token(
                    "a bearer token is never sent without TLS".into(),
                ));
            }
        }
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// An error's message followed by its sources, so a TLS failure under a transport error shows.
fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "client_route_tests.rs"]
mod route_tests;
