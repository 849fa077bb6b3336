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
use super::decode::{check, DECODABLE_TYPES};
use super::{
    BearerToken, NodeInfo, TypeStatus, XdsConfig, XdsError, XdsStatus, XdsTransport, TYPE_URLS,
};
use crate::cert::parse_pem_certs;
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
    address: String,
    token: Option<BearerToken>,
    node: NodeInfo,
    backoff: Backoff,
    store: Store,
    /// The types subscribed to, in order: [`TYPE_URLS`] then the configured extra types.
    types: Vec<&'static str>,
    status: watch::Sender<XdsStatus>,
    /// Type URL → resource name → version: what the store holds from the control plane, sent
    /// as `initial_resource_versions` on reconnect.
    known: BTreeMap<&'static str, BTreeMap<String, String>>,
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
        let address_error = |reason: &str| XdsError::Address {
            address: config.address.clone(),
            reason: reason.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(config.address.clone())
            .map_err(|e| address_error(&e.to_string()))?;
        match &config.transport {
            XdsTransport::Tls(tls) => {
                if !config.address.starts_with("https://") {
                    return Err(address_error("with TLS it must start with https://"));
                }
                parse_pem_certs(&tls.root_cert_pem).map_err(|e| XdsError::Root(e.to_string()))?;
                let mut settings = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&tls.root_cert_pem))
                    .domain_name(tls.server_name.clone());
                if let Some(cert) = &tls.client_cert {
                    parse_pem_certs(&cert.chain_pem)
                        .map_err(|e| XdsError::ClientCert(e.to_string()))?;
                    settings =
                        settings.identity(TlsIdentity::from_pem(&cert.chain_pem, &cert.key_pem));
                }
                endpoint = endpoint
                    .tls_config(settings)
                    .map_err(|e| XdsError::Tls(source_chain(&e)))?;
            }
            XdsTransport::Plaintext => {
                if !config.address.starts_with("http://") {
                    return Err(address_error("without TLS it must start with http://"));
                }
                if config.token.is_some() {
                    return Err(XdsError::Token(
                        "a bearer token is never sent without TLS".into(),
                    ));
                }
            }
        }
        if let Some(BearerToken::Static(token)) = &config.token {
            authorization(token).map_err(XdsError::Token)?;
        }
        let mut types: Vec<&'static str> = TYPE_URLS.to_vec();
        for extra in &config.extra_types {
            if !DECODABLE_TYPES.contains(extra) {
                return Err(XdsError::UnsupportedType((*extra).to_string()));
            }
            if !types.contains(extra) {
                types.push(extra);
            }
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Ok(XdsClient {
            endpoint,
            address: config.address,
            token: config.token,
            node: config.node,
            backoff: Backoff::new(config.backoff),
            store,
            status: watch::Sender::new(XdsStatus {
                subscribed: types.iter().map(|t| t.to_string()).collect(),
                ..XdsStatus::default()
            }),
            known: types.iter().map(|t| (*t, BTreeMap::new())).collect(),
            types,
        })
    }

    /// A receiver of the client's progress, updated on every connection change and response.
    pub fn status(&self) -> watch::Receiver<XdsStatus> {
        self.status.subscribe()
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
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection: returns why it ended. Sets `progressed` once a response was handled.
    async fn serve(&mut self, progressed: &mut bool) -> StreamError {
        let channel = match self.endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return StreamError::Connect(source_chain(&e)),
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_LEN);

        // Room for the initial requests plus a few ACKs; the loop below sends one reply per
        // response, so the queue never holds more than that.
        let (tx, rx) = mpsc::channel(self.types.len() + 4);
        for type_url in self.types.clone() {
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
        let type_url = response.type_url.clone();
        let nonce = response.nonce.clone();
        let version = response.system_version_info.clone();
        let Some(known_type) = self.types.iter().copied().find(|t| *t == type_url) else {
            let error = format!("type {type_url:?} was not subscribed to");
            tracing::warn!(type_url, nonce, error, "rejecting xDS response (NACK)");
            return nack(type_url, nonce, error);
        };
        match check(response) {
            Ok(accepted) => {
                let (added, removed) = (accepted.added.len(), accepted.removed.len());
                let store_version = self.store.apply(accepted.batch);
                let known = self.known.entry(known_type).or_default();
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
mod tests {
    use prost::Message;
    use proto::discovery::Resource;

    use super::*;
    use crate::model::{PolicyScope, Workload};
    use crate::xds::{BackoffConfig, ClientCert, XdsTls};

    fn resource(name: &str, version: &str, type_url: &str, value: Vec<u8>) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            resource: Some(prost_types::Any {
                type_url: type_url.into(),
                value,
            }),
            ..Default::default()
        }
    }

    fn workload_resource(uid: &str, ip: &str) -> Resource {
        let w: Workload = crate::model::workload::tests::sample(uid, ip);
        let wire = proto::workload::Address::from(&w);
        resource(uid, "v1", proto::ADDRESS_TYPE_URL, wire.encode_to_vec())
    }

    fn response(
        type_url: &str,
        resources: Vec<Resource>,
        removed: &[&str],
    ) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: "n1".into(),
            resources,
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_valid_response_with_adds_and_removals() {
        let accepted = check(response(
            proto::ADDRESS_TYPE_URL,
            vec![
                workload_resource("w1", "10.0.0.1"),
                workload_resource("w2", "10.0.0.2"),
            ],
            &["gone"],
        ))
        .expect("valid");
        assert_eq!(accepted.batch.len(), 3);
        assert_eq!(
            accepted.added,
            [("w1".into(), "v1".into()), ("w2".into(), "v1".into())]
        );
        assert_eq!(accepted.removed, ["gone"]);
    }

    #[test]
    fn one_bad_resource_rejects_the_whole_response_naming_each() {
        let mut bad_ip = proto::workload::Address::from(&crate::model::workload::tests::sample(
            "w3", "10.0.0.3",
        ));
        if let Some(proto::workload::address::Type::Workload(w)) = bad_ip.r#type.as_mut() {
            w.addresses = vec![vec![1, 2, 3]];
        }
        let rejects = check(response(
            proto::ADDRESS_TYPE_URL,
            vec![
                workload_resource("w1", "10.0.0.1"),
                resource(
                    "garbage",
                    "v1",
                    proto::ADDRESS_TYPE_URL,
                    vec![0xff, 0xff, 0xff],
                ),
                resource("w3", "v1", proto::ADDRESS_TYPE_URL, bad_ip.encode_to_vec()),
                workload_resource("w4", "10.0.0.4"),
                resource("wrong-type", "v1", proto::AUTHORIZATION_TYPE_URL, vec![]),
                Resource {
                    name: "empty".into(),
                    ..Default::default()
                },
            ],
            &[],
        ))
        .expect_err("invalid");
        assert_eq!(rejects.len(), 4, "{rejects:?}");
        assert!(rejects[0].starts_with("resource \"garbage\": cannot be decoded"));
        assert!(
            rejects[1].contains("\"w3\": is invalid: workload.addresses[0]"),
            "{}",
            rejects[1]
        );
        assert!(rejects[2].contains("\"wrong-type\": has type"));
        assert!(rejects[3].contains("\"empty\": has no body"));
    }

    #[test]
    fn names_must_match_content() {
        let w = crate::model::workload::tests::sample("real-uid", "10.0.0.1");
        let r = resource(
            "other-name",
            "v1",
            proto::ADDRESS_TYPE_URL,
            proto::workload::Address::from(&w).encode_to_vec(),
        );
        let rejects = check(response(proto::ADDRESS_TYPE_URL, vec![r], &[])).expect_err("mismatch");
        assert!(
            rejects[0].contains("its content is named \"real-uid\""),
            "{rejects:?}"
        );

        let p = crate::model::policy::tests::sample("ns", "p", PolicyScope::Global);
        let wire = proto::security::Authorization::from(&p).encode_to_vec();
        let ok = resource("ns/p", "7", proto::AUTHORIZATION_TYPE_URL, wire);
        let accepted = check(response(
            proto::AUTHORIZATION_TYPE_URL,
            vec![ok],
            &["ns/old"],
        ))
        .expect("valid policy");
        assert_eq!(accepted.added, [("ns/p".into(), "7".into())]);
    }

    #[test]
    fn nack_message_is_capped() {
        let rejects: Vec<String> = (0..15).map(|i| format!("r{i}")).collect();
        let message = nack_message(&rejects);
        assert!(message.starts_with("r0; r1"));
        assert!(message.ends_with("; and 5 more"));
    }

    fn config(address: &str, transport: XdsTransport, token: Option<BearerToken>) -> XdsConfig {
        XdsConfig {
            address: address.into(),
            transport,
            token,
            node: NodeInfo::default(),
            backoff: BackoffConfig::default(),
            extra_types: Vec::new(),
        }
    }

    #[tokio::test]
    async fn refuses_configs_that_would_leak_or_cannot_work() {
        let ca = crate::ca::CertificateAuthority::generate_root("cluster.local").expect("ca");
        let tls = |root: &str| {
            XdsTransport::Tls(XdsTls {
                root_cert_pem: root.into(),
                server_name: "istiod".into(),
                client_cert: None,
            })
        };
        let static_token = |t: &str| Some(BearerToken::Static(t.into()));
        let store = Store::new;
        assert!(matches!(
            XdsClient::new(config("http://x:15012", tls(ca.root_pem()), None), store()),
            Err(XdsError::Address { .. })
        ));
        assert!(matches!(
            XdsClient::new(
                config("https://x:15012", XdsTransport::Plaintext, None),
                store()
            ),
            Err(XdsError::Address { .. })
        ));
        assert!(matches!(
            XdsClient::new(
                config("http://x:15012", XdsTransport::Plaintext, static_token("t")),
                store()
            ),
            Err(XdsError::Token(_))
        ));
        assert!(matches!(
            XdsClient::new(config("https://x:15012", tls("not pem"), None), store()),
            Err(XdsError::Root(_))
        ));
        assert!(matches!(
            XdsClient::new(
                config("https://x:15012", tls(ca.root_pem()), static_token("a b")),
                store()
            ),
            Err(XdsError::Token(_))
        ));
        let with_bad_client_cert = XdsTransport::Tls(XdsTls {
            root_cert_pem: ca.root_pem().into(),
            server_name: "istiod".into(),
            client_cert: Some(ClientCert {
                chain_pem: "nope".into(),
                key_pem: "nope".into(),
            }),
        });
        assert!(matches!(
            XdsClient::new(
                config("https://x:15012", with_bad_client_cert, None),
                store()
            ),
            Err(XdsError::ClientCert(_))
        ));
        assert!(XdsClient::new(
            config("https://x:15012", tls(ca.root_pem()), static_token("t")),
            store()
        )
        .is_ok());
        assert!(XdsClient::new(
            config("http://127.0.0.1:1", XdsTransport::Plaintext, None),
            store()
        )
        .is_ok());
    }

    #[test]
    fn unsubscribed_types_are_nacked_and_status_tracks_acks() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _guard = runtime.enter();
        let store = Store::new();
        let mut client = XdsClient::new(
            config("http://127.0.0.1:1", XdsTransport::Plaintext, None),
            store.clone(),
        )
        .expect("client");
        let status = client.status();

        let reply = client.handle(response("type.googleapis.com/other", vec![], &[]));
        assert_eq!(reply.error_detail.map(|s| s.code), Some(NACK_CODE));

        let reply = client.handle(response(
            proto::ADDRESS_TYPE_URL,
            vec![workload_resource("w1", "10.0.0.1")],
            &[],
        ));
        assert_eq!(reply.response_nonce, "n1");
        assert!(reply.error_detail.is_none());
        assert!(store.workload("w1").is_some());
        let initial = client.initial_request(proto::ADDRESS_TYPE_URL);
        assert_eq!(
            initial
                .initial_resource_versions
                .get("w1")
                .map(String::as_str),
            Some("v1")
        );
        assert!(initial.resource_names_subscribe.is_empty());
        let s = status.borrow().clone();
        assert_eq!(s.types[proto::ADDRESS_TYPE_URL].acks, 1);
        assert_eq!(s.types[proto::ADDRESS_TYPE_URL].resources, 1);
        assert!(!s.is_synced());

        let reply = client.handle(response(proto::ADDRESS_TYPE_URL, vec![], &["w1"]));
        assert!(reply.error_detail.is_none());
        assert!(store.workload("w1").is_none());
        assert!(client
            .initial_request(proto::ADDRESS_TYPE_URL)
            .initial_resource_versions
            .is_empty());
    }

    fn l7_policy_resource(ns: &str, name: &str) -> Resource {
        let wire = proto::waypoint::L7Policy {
            name: name.into(),
            namespace: ns.into(),
            action: proto::waypoint::l7_policy::Action::Deny as i32,
            rules: vec![proto::waypoint::l7_policy::Rule {
                to: vec![proto::waypoint::l7_policy::Operation {
                    paths: vec!["/admin*".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        resource(
            &format!("{ns}/{name}"),
            "v1",
            proto::L7_POLICY_TYPE_URL,
            wire.encode_to_vec(),
        )
    }

    #[test]
    fn waypoint_types_are_opt_in_and_land_in_the_store() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _guard = runtime.enter();
        let plain = || config("http://127.0.0.1:1", XdsTransport::Plaintext, None);

        // A node tunnel (no extra types) refuses L7 policies: it never subscribed.
        let store = Store::new();
        let mut ztunnel = XdsClient::new(plain(), store.clone()).expect("client");
        let reply = ztunnel.handle(response(
            proto::L7_POLICY_TYPE_URL,
            vec![l7_policy_resource("shop", "deny-admin")],
            &[],
        ));
        assert_eq!(reply.error_detail.map(|s| s.code), Some(NACK_CODE));
        assert!(store.l7_policy("shop/deny-admin").is_none());
        assert_eq!(ztunnel.types, TYPE_URLS);

        // A waypoint subscribes to them, applies them, and counts them for readiness.
        let store = Store::new();
        let mut cfg = plain();
        cfg.extra_types = crate::xds::WAYPOINT_POLICY_TYPE_URLS.to_vec();
        let mut waypoint = XdsClient::new(cfg, store.clone()).expect("client");
        assert_eq!(waypoint.types.len(), 4);
        let status = waypoint.status();
        let reply = waypoint.handle(response(
            proto::L7_POLICY_TYPE_URL,
            vec![l7_policy_resource("shop", "deny-admin")],
            &[],
        ));
        assert!(reply.error_detail.is_none(), "{:?}", reply.error_detail);
        assert!(store.l7_policy("shop/deny-admin").is_some());
        for t in [proto::ADDRESS_TYPE_URL, proto::AUTHORIZATION_TYPE_URL] {
            waypoint.handle(response(t, vec![], &[]));
        }
        assert!(!status.borrow().is_synced(), "RequestAuthn not ACKed yet");
        waypoint.handle(response(proto::REQUEST_AUTHN_TYPE_URL, vec![], &[]));
        assert!(status.borrow().is_synced());

        let reply = waypoint.handle(response(
            proto::L7_POLICY_TYPE_URL,
            vec![],
            &["shop/deny-admin"],
        ));
        assert!(reply.error_detail.is_none());
        assert!(store.l7_policy("shop/deny-admin").is_none());

        // A bad L7 policy is NACKed naming the field.
        let mut bad = proto::waypoint::L7Policy {
            name: "p".into(),
            namespace: "shop".into(),
            ..Default::default()
        };
        bad.rules.push(proto::waypoint::l7_policy::Rule {
            when: vec![proto::waypoint::l7_policy::Condition {
                key: "request.nope".into(),
                values: vec!["x".into()],
                not_values: vec![],
            }],
            ..Default::default()
        });
        let r = resource(
            "shop/p",
            "v2",
            proto::L7_POLICY_TYPE_URL,
            bad.encode_to_vec(),
        );
        let reply = waypoint.handle(response(proto::L7_POLICY_TYPE_URL, vec![r], &[]));
        let message = reply.error_detail.expect("nack").message;
        assert!(message.contains("rules[0].when[0].key"), "{message}");
    }

    #[test]
    fn extra_types_the_client_cannot_decode_are_refused() {
        let mut cfg = config("http://127.0.0.1:1", XdsTransport::Plaintext, None);
        cfg.extra_types = vec!["type.googleapis.com/unknown.Thing"];
        assert!(matches!(
            XdsClient::new(cfg, Store::new()),
            Err(XdsError::UnsupportedType(_))
        ));
    }
}

#[cfg(test)]
#[path = "client_route_tests.rs"]
mod route_tests;
