//! The config API harness: config fixtures in the proxy's model, the mesh's `XdsClient`, and
//! raw delta ADS streams with their handshake.

use std::collections::BTreeMap;
use std::time::Duration;

use istiod_lite::xds::XdsSnapshot;
use mesh::model::{
    AppProtocol, HealthStatus, IpFamilies, NetworkAddress, NetworkMode, Policy, PolicyAction,
    PolicyScope, PortMapping, Service, TunnelProtocol, Workload, WorkloadType,
};
use mesh::store::{Store, StoreSnapshot};
use mesh::xds::{
    BackoffConfig, BearerToken, NodeInfo, XdsClient, XdsConfig, XdsStatus, XdsTls, XdsTransport,
};
use mesh::Identity;
use proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::{eventually, Running, QUIET, SERVER_NAME, WAIT};

// ---- config ------------------------------------------------------------------------------

/// The mesh config a test serves, as the proxy's model: what its store must end up holding.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    pub workloads: BTreeMap<String, Workload>,
    pub services: BTreeMap<String, Service>,
    pub policies: BTreeMap<String, Policy>,
}

impl Mesh {
    pub fn with_workload(mut self, w: Workload) -> Self {
        self.workloads.insert(w.uid.clone(), w);
        self
    }

    pub fn with_service(mut self, s: Service) -> Self {
        self.services.insert(s.key(), s);
        self
    }

    pub fn with_policy(mut self, p: Policy) -> Self {
        self.policies.insert(p.key(), p);
        self
    }

    /// The snapshot the server is fed.
    pub fn snapshot(&self) -> XdsSnapshot {
        let mut addresses = BTreeMap::new();
        for (uid, w) in &self.workloads {
            addresses.insert(uid.clone(), proto::workload::Address::from(w));
        }
        for (key, s) in &self.services {
            addresses.insert(key.clone(), proto::workload::Address::from(s));
        }
        XdsSnapshot {
            addresses,
            authorizations: self
                .policies
                .iter()
                .map(|(k, p)| (k.clone(), proto::security::Authorization::from(p)))
                .collect(),
            ..Default::default()
        }
    }

    /// Whether a proxy's store holds exactly this.
    pub fn held_by(&self, store: &StoreSnapshot) -> bool {
        store.workloads == self.workloads.values().cloned().collect::<Vec<_>>()
            && store.services == self.services.values().cloned().collect::<Vec<_>>()
            && store.policies == self.policies.values().cloned().collect::<Vec<_>>()
    }
}

pub fn workload(name: &str, ip: &str, services: &[&str]) -> Workload {
    Workload {
        uid: format!("Kubernetes//v1/Pod/apps/{name}"),
        name: name.into(),
        addresses: vec![ip.parse().expect("ip")],
        hostname: String::new(),
        network: String::new(),
        tunnel_protocol: TunnelProtocol::Hbone,
        identity: Identity::new("cluster.local", "apps", "echo").expect("identity"),
        waypoint: None,
        network_gateway: None,
        node: "node-1".into(),
        canonical_name: "echo".into(),
        canonical_revision: "v1".into(),
        workload_type: WorkloadType::Deployment,
        workload_name: "echo".into(),
        native_tunnel: false,
        application_tunnel: None,
        services: services
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    vec![PortMapping {
                        service_port: 80,
                        target_port: 8080,
                        app_protocol: AppProtocol::Http11,
                    }],
                )
            })
            .collect(),
        authorization_policies: vec![],
        status: HealthStatus::Healthy,
        cluster_id: "Kubernetes".into(),
        locality: None,
        network_mode: NetworkMode::Standard,
        capacity: 1,
    }
}

pub fn service(name: &str, vip: &str) -> Service {
    Service {
        name: name.into(),
        namespace: "apps".into(),
        hostname: format!("{name}.apps.svc.cluster.local"),
        vips: vec![NetworkAddress {
            network: String::new(),
            ip: vip.parse().expect("ip"),
        }],
        ports: vec![PortMapping {
            service_port: 80,
            target_port: 8080,
            app_protocol: AppProtocol::Http11,
        }],
        subject_alt_names: vec![],
        waypoint: None,
        load_balancing: None,
        ip_families: IpFamilies::Automatic,
        canonical: true,
        ingress_use_waypoint: false,
    }
}

pub fn policy(name: &str, action: PolicyAction) -> Policy {
    Policy {
        name: name.into(),
        namespace: "apps".into(),
        scope: PolicyScope::Namespace,
        action,
        rules: vec![],
        dry_run: false,
    }
}

/// Two workloads (one backing two services, so its encoding has a map to sort), two services,
/// two policies.
pub fn base_mesh() -> Mesh {
    Mesh::default()
        .with_workload(workload(
            "echo-1",
            "10.0.0.1",
            &[
                "apps/echo.apps.svc.cluster.local",
                "apps/echo-v1.apps.svc.cluster.local",
            ],
        ))
        .with_workload(workload(
            "echo-2",
            "10.0.0.2",
            &["apps/echo.apps.svc.cluster.local"],
        ))
        .with_service(service("echo", "10.96.0.10"))
        .with_service(service("echo-v1", "10.96.0.11"))
        .with_policy(policy("allow-all", PolicyAction::Allow))
        .with_policy(policy("deny-some", PolicyAction::Deny))
}

/// `mesh`'s snapshot with the address `name` replaced by one the proxy must refuse: an IP
/// address of three bytes.
pub fn with_invalid_address(mesh: &Mesh, uid: &str) -> XdsSnapshot {
    let mut snapshot = mesh.snapshot();
    let address = snapshot.addresses.get_mut(uid).expect("present");
    if let Some(proto::workload::address::Type::Workload(w)) = address.r#type.as_mut() {
        w.addresses = vec![vec![10, 0, 9]];
    }
    snapshot
}

// ---- clients -----------------------------------------------------------------------------

/// The config API's callers, and the server's metrics.
impl Running {
    /// The mesh's xDS client with `token`, and the store it writes.
    pub fn proxy(&self, token: &str) -> Proxy {
        self.proxy_with_types(token, Vec::new())
    }

    /// Like [`Running::proxy`], also subscribing to `extra_types` (as a waypoint does).
    pub fn proxy_with_types(
        &self,
        token: &str,
        extra_types: Vec<mesh::xds::ResourceType>,
    ) -> Proxy {
        let config = XdsConfig {
            address: format!("https://{}", self.addr),
            transport: XdsTransport::Tls(XdsTls {
                root_cert_pem: self.root_pem.clone(),
                server_name: SERVER_NAME.into(),
                client_cert: None,
            }),
            token: Some(BearerToken::Static(token.into())),
            node: NodeInfo::ztunnel(
                "10.0.0.100".parse().expect("ip"),
                "ztunnel-x",
                "istio-system",
                "node-1",
            ),
            backoff: BackoffConfig {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
            extra_types,
        };
        let store = Store::new();
        let client = XdsClient::new(config, store.clone()).expect("client config");
        let status = client.status();
        Proxy {
            store,
            status,
            task: tokio::spawn(client.run()),
        }
    }

    /// A raw delta ADS stream with `token` (if any) whose first requests are `initial`.
    pub async fn raw(
        &self,
        token: Option<&str>,
        initial: Vec<DeltaDiscoveryRequest>,
    ) -> Result<RawStream, Status> {
        let mut client = AggregatedDiscoveryServiceClient::new(self.channel(SERVER_NAME).await);
        let (tx, rx) = mpsc::channel(16);
        for request in initial {
            tx.send(request).await.expect("queued");
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        let responses = client
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        Ok(RawStream {
            tx,
            responses,
            early: Vec::new(),
        })
    }

    /// A raw delta ADS stream with `token` that subscribes (wildcard, holding nothing) to each
    /// of `type_urls`.
    pub async fn subscribed(&self, token: &str, type_urls: &[&str]) -> RawStream {
        let initial = type_urls
            .iter()
            .map(|type_url| subscribe(type_url, &BTreeMap::new()))
            .collect();
        self.raw(Some(token), initial)
            .await
            .expect("stream accepted")
    }

    /// The handshake of a proxy that holds nothing: a raw stream with `token` subscribes to
    /// both types, receives the first address and authorization responses, and ACKs both.
    pub async fn handshake(
        &self,
        token: &str,
    ) -> (RawStream, DeltaDiscoveryResponse, DeltaDiscoveryResponse) {
        let mut raw = self.subscribed(token, &BOTH_TYPES).await;
        let (addresses, policies) = raw.recv_both().await;
        raw.ack(&addresses).await;
        raw.ack(&policies).await;
        (raw, addresses, policies)
    }

    /// The monitoring server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.monitoring)
            .await
            .expect("monitoring connects");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("response");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text
    }

    /// The value of one metric line (name with labels), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until a metric has the value `want`.
    pub async fn metric_becomes(&self, series: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let value = self.metric(series).await;
            if value == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} is {value}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A mesh `XdsClient` running against the server.
pub struct Proxy {
    pub store: Store,
    pub status: watch::Receiver<XdsStatus>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Waits until the store holds exactly `mesh` and the client has ACKed both types.
    pub async fn converges_on(&self, mesh: &Mesh) {
        eventually("the proxy's store holds the server's config", || {
            mesh.held_by(&self.store.snapshot()) && self.status.borrow().is_synced()
        })
        .await;
    }
}

/// A raw stream: the test sends each request and reads each response.
pub struct RawStream {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub responses: Streaming<DeltaDiscoveryResponse>,
    early: Vec<DeltaDiscoveryResponse>,
}

impl RawStream {
    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        if !self.early.is_empty() {
            return self.early.remove(0);
        }
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response in time")
            .expect("stream healthy")
            .expect("stream open")
    }

    /// The next response of `type_url` (others are kept for later).
    pub async fn recv_type(&mut self, type_url: &str) -> DeltaDiscoveryResponse {
        if let Some(i) = self.early.iter().position(|r| r.type_url == type_url) {
            return self.early.remove(i);
        }
        loop {
            let response = tokio::time::timeout(WAIT, self.responses.message())
                .await
                .expect("a response in time")
                .expect("stream healthy")
                .expect("stream open");
            if response.type_url == type_url {
                return response;
            }
            self.early.push(response);
        }
    }

    /// The next address response and the next authorization response, in whichever order
    /// they come.
    pub async fn recv_both(&mut self) -> (DeltaDiscoveryResponse, DeltaDiscoveryResponse) {
        let addresses = self.recv_type(ADDRESS_TYPE_URL).await;
        let policies = self.recv_type(AUTHORIZATION_TYPE_URL).await;
        (addresses, policies)
    }

    /// Asserts that nothing arrives for a while.
    pub async fn expect_silence(&mut self) {
        assert!(self.early.is_empty(), "unexpected: {:?}", self.early);
        if let Ok(message) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }

    pub async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx.send(request).await.expect("stream open");
    }

    pub async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn nack(&self, response: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(proto::google::rpc::Status {
                code: Code::InvalidArgument as i32,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    }
}

/// The two types a node tunnel subscribes to.
pub const BOTH_TYPES: [&str; 2] = [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL];

/// The first request of a type: wildcard, declaring `held` (name → version).
pub fn subscribe(type_url: &str, held: &BTreeMap<String, String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(proto::envoy::config::core::v3::Node {
            id: "raw-test-client".into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        initial_resource_versions: held.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    }
}

/// The first requests of a node tunnel that holds nothing.
pub fn subscribe_both() -> Vec<DeltaDiscoveryRequest> {
    BOTH_TYPES
        .iter()
        .map(|type_url| subscribe(type_url, &BTreeMap::new()))
        .collect()
}

/// Name → version of a response's resources.
pub fn versions(response: &DeltaDiscoveryResponse) -> BTreeMap<String, String> {
    response
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

pub fn names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(|r| r.name.clone()).collect()
}
