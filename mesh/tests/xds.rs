//! The delta ADS client against an in-process fake ADS server: wildcard subscription,
//! ACK/NACK, removals, fail-static reconnection with `initial_resource_versions`, and TLS with
//! a bearer token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity as TlsIdentity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use mesh::ca::CertificateAuthority;
use mesh::model::{
    AppProtocol, NetworkAddress, Policy, PolicyAction, PolicyScope, PortMapping, Service, Workload,
};
use mesh::store::Store;
use mesh::xds::{
    BackoffConfig, BearerToken, NodeInfo, XdsClient, XdsConfig, XdsStatus, XdsTls, XdsTransport,
};
use mesh::Identity;
use proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Fake ADS server: every stream is handed to the test, which reads requests and sends
// responses; dropping the `Conn` ends the stream from the server side.

struct Conn {
    requests: Streaming<DeltaDiscoveryRequest>,
    responses: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
    authorization: Option<String>,
}

impl Conn {
    async fn recv(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.message())
            .await
            .expect("a request in time")
            .expect("stream healthy")
            .expect("stream open")
    }

    /// Reads the two initial requests, by type URL.
    async fn recv_initial(&mut self) -> HashMap<String, DeltaDiscoveryRequest> {
        let mut out = HashMap::new();
        for _ in 0..2 {
            let request = self.recv().await;
            out.insert(request.type_url.clone(), request);
        }
        out
    }

    fn send(&self, response: DeltaDiscoveryResponse) {
        self.responses.send(Ok(response)).expect("client listening");
    }
}

struct FakeAds {
    conns: mpsc::UnboundedSender<Conn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type StreamAggregatedResourcesStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("delta ADS only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Conn {
            requests: request.into_inner(),
            responses: tx,
            authorization,
        };
        self.conns
            .send(conn)
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

struct Server {
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Conn>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(tls: Option<ServerTlsConfig>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, conns) = mpsc::unbounded_channel();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).expect("server tls");
        }
        let router =
            builder.add_service(AggregatedDiscoveryServiceServer::new(FakeAds { conns: tx }));
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .expect("serve");
        });
        Server { addr, conns, task }
    }

    async fn next_conn(&mut self) -> Conn {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("a connection in time")
            .expect("server running")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Resources.

fn workload(uid: &str, ip: &str, service: &str) -> Workload {
    Workload {
        uid: uid.into(),
        name: uid.into(),
        addresses: vec![ip.parse().expect("ip")],
        hostname: String::new(),
        network: String::new(),
        tunnel_protocol: mesh::model::TunnelProtocol::Hbone,
        identity: Identity::new("cluster.local", "default", "echo").expect("identity"),
        waypoint: None,
        network_gateway: None,
        node: "node-1".into(),
        canonical_name: "echo".into(),
        canonical_revision: "v1".into(),
        workload_type: mesh::model::WorkloadType::Deployment,
        workload_name: "echo".into(),
        native_tunnel: false,
        application_tunnel: None,
        services: BTreeMap::from([(
            service.to_string(),
            vec![PortMapping {
                service_port: 80,
                target_port: 8080,
                app_protocol: AppProtocol::Http11,
            }],
        )]),
        authorization_policies: vec![],
        status: mesh::model::HealthStatus::Healthy,
        cluster_id: "Kubernetes".into(),
        locality: None,
        network_mode: mesh::model::NetworkMode::Standard,
        capacity: 1,
    }
}

fn service(hostname: &str, vip: &str) -> Service {
    Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: hostname.into(),
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
        ip_families: mesh::model::IpFamilies::Automatic,
        canonical: true,
        ingress_use_waypoint: false,
    }
}

fn policy(name: &str) -> Policy {
    Policy {
        name: name.into(),
        namespace: "default".into(),
        scope: PolicyScope::Namespace,
        action: PolicyAction::Allow,
        rules: vec![],
        dry_run: false,
    }
}

fn any<M: Message>(type_url: &str, message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.into(),
        value: message.encode_to_vec(),
    }
}

fn workload_resource(w: &Workload, version: &str) -> Resource {
    Resource {
        name: w.uid.clone(),
        version: version.into(),
        resource: Some(any(ADDRESS_TYPE_URL, &proto::workload::Address::from(w))),
        ..Default::default()
    }
}

fn service_resource(s: &Service, version: &str) -> Resource {
    Resource {
        name: s.key(),
        version: version.into(),
        resource: Some(any(ADDRESS_TYPE_URL, &proto::workload::Address::from(s))),
        ..Default::default()
    }
}

fn policy_resource(p: &Policy, version: &str) -> Resource {
    Resource {
        name: p.key(),
        version: version.into(),
        resource: Some(any(
            AUTHORIZATION_TYPE_URL,
            &proto::security::Authorization::from(p),
        )),
        ..Default::default()
    }
}

fn response(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("version-{nonce}"),
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Client side.

fn client_config(addr: SocketAddr, transport: XdsTransport) -> XdsConfig {
    let scheme = match transport {
        XdsTransport::Tls(_) => "https",
        XdsTransport::Plaintext => "http",
    };
    XdsConfig {
        address: format!("{scheme}://{addr}"),
        transport,
        token: None,
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
        extra_types: Vec::new(),
    }
}

struct Running {
    store: Store,
    status: tokio::sync::watch::Receiver<XdsStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start_client(config: XdsConfig) -> Running {
    let store = Store::new();
    start(
        XdsClient::new(config, store.clone()).expect("client config"),
        store,
    )
}

fn start(client: XdsClient, store: Store) -> Running {
    let status = client.status();
    let task = tokio::spawn(client.run());
    Running {
        store,
        status,
        task,
    }
}

async fn wait_status(
    status: &mut tokio::sync::watch::Receiver<XdsStatus>,
    f: impl Fn(&XdsStatus) -> bool,
) {
    tokio::time::timeout(WAIT, status.wait_for(|s| f(s)))
        .await
        .expect("status in time")
        .expect("client alive");
}

async fn eventually<F: Future<Output = bool>>(what: &str, f: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

const ECHO_HOST: &str = "echo.default.svc.cluster.local";
const ECHO_KEY: &str = "default/echo.default.svc.cluster.local";

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscribes_wildcard_acks_nacks_and_applies_removals() {
    let mut server = Server::start(None).await;
    let mut client = start_client(client_config(server.addr, XdsTransport::Plaintext));
    let mut conn = server.next_conn().await;

    // One wildcard request per type, carrying the node.
    let initial = conn.recv_initial().await;
    let types: BTreeSet<_> = initial.keys().cloned().collect();
    assert_eq!(
        types,
        BTreeSet::from([
            ADDRESS_TYPE_URL.to_string(),
            AUTHORIZATION_TYPE_URL.to_string()
        ])
    );
    for request in initial.values() {
        assert!(request.resource_names_subscribe.is_empty());
        assert!(request.initial_resource_versions.is_empty());
        assert!(request.response_nonce.is_empty());
        let node = request.node.as_ref().expect("node");
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.100~ztunnel-x.istio-system~istio-system.svc.cluster.local"
        );
    }
    assert!(conn.authorization.is_none());

    // A good Address response is applied and ACKed with its nonce.
    let w1 = workload("c//v1/Pod/default/w1", "10.0.0.1", ECHO_KEY);
    let w2 = workload("c//v1/Pod/default/w2", "10.0.0.2", ECHO_KEY);
    let svc = service(ECHO_HOST, "10.96.0.1");
    conn.send(response(
        ADDRESS_TYPE_URL,
        "a1",
        vec![
            workload_resource(&w1, "1"),
            workload_resource(&w2, "1"),
            service_resource(&svc, "1"),
        ],
        &[],
    ));
    let ack = conn.recv().await;
    assert_eq!(ack.type_url, ADDRESS_TYPE_URL);
    assert_eq!(ack.response_nonce, "a1");
    assert!(ack.error_detail.is_none());
    let store = &client.store;
    assert_eq!(
        store
            .workload_by_ip("", ip("10.0.0.1"))
            .map(|w| w.uid.clone()),
        Some(w1.uid.clone())
    );
    assert_eq!(
        store.service_by_vip("", ip("10.96.0.1")).map(|s| s.key()),
        Some(ECHO_KEY.into())
    );
    assert_eq!(store.endpoints_of(ECHO_KEY).len(), 2);

    // Policies too; then the client is synced.
    conn.send(response(
        AUTHORIZATION_TYPE_URL,
        "p1",
        vec![policy_resource(&policy("allow-all"), "1")],
        &[],
    ));
    let ack = conn.recv().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.response_nonce.as_str()),
        (AUTHORIZATION_TYPE_URL, "p1")
    );
    assert!(ack.error_detail.is_none());
    assert!(store.policy("default/allow-all").is_some());
    wait_status(&mut client.status, XdsStatus::is_synced).await;

    // One undecodable resource: the whole response is NACKed and nothing from it applied.
    let w3 = workload("c//v1/Pod/default/w3", "10.0.0.3", ECHO_KEY);
    let garbage = Resource {
        name: "c//v1/Pod/default/garbage".into(),
        version: "1".into(),
        resource: Some(prost_types::Any {
            type_url: ADDRESS_TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff, 0xff],
        }),
        ..Default::default()
    };
    let version_before = store.version();
    conn.send(response(
        ADDRESS_TYPE_URL,
        "a2",
        vec![workload_resource(&w3, "1"), garbage],
        &[&w1.uid],
    ));
    let nack = conn.recv().await;
    assert_eq!(nack.response_nonce, "a2");
    let detail = nack.error_detail.expect("NACK carries error_detail");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("c//v1/Pod/default/garbage"),
        "{}",
        detail.message
    );
    assert!(
        detail.message.contains("cannot be decoded"),
        "{}",
        detail.message
    );
    assert!(store.workload(&w3.uid).is_none());
    assert!(
        store.workload(&w1.uid).is_some(),
        "the removal in a NACKed response is not applied"
    );
    assert_eq!(store.version(), version_before);
    wait_status(&mut client.status, |s| {
        s.types[ADDRESS_TYPE_URL]
            .last_nack
            .as_deref()
            .is_some_and(|e| e.contains("garbage"))
    })
    .await;

    // The next good response is applied, with its removal cleaning every index.
    conn.send(response(
        ADDRESS_TYPE_URL,
        "a3",
        vec![workload_resource(&w3, "1")],
        &[&w1.uid],
    ));
    let ack = conn.recv().await;
    assert_eq!(ack.response_nonce, "a3");
    assert!(ack.error_detail.is_none());
    assert!(store.workload(&w3.uid).is_some());
    assert!(store.workload(&w1.uid).is_none());
    assert!(store.workload_by_ip("", ip("10.0.0.1")).is_none());
    let endpoints: BTreeSet<_> = store
        .endpoints_of(ECHO_KEY)
        .into_iter()
        .map(|e| e.workload.uid.clone())
        .collect();
    assert_eq!(endpoints, BTreeSet::from([w2.uid.clone(), w3.uid.clone()]));

    // Policy removal.
    conn.send(response(
        AUTHORIZATION_TYPE_URL,
        "p2",
        vec![],
        &["default/allow-all"],
    ));
    assert!(conn.recv().await.error_detail.is_none());
    assert!(store.policy("default/allow-all").is_none());
    let status = client.status.borrow().clone();
    assert!(status.connected);
    assert_eq!(
        status.types[ADDRESS_TYPE_URL].acked_version.as_deref(),
        Some("version-a3")
    );
    assert_eq!(status.types[ADDRESS_TYPE_URL].acks, 2);
    assert_eq!(status.types[ADDRESS_TYPE_URL].nacks, 1);
}

#[tokio::test]
async fn reconnects_with_initial_resource_versions_and_keeps_config_meanwhile() {
    let mut server = Server::start(None).await;
    let mut client = start_client(client_config(server.addr, XdsTransport::Plaintext));
    let mut conn = server.next_conn().await;
    conn.recv_initial().await;

    let w1 = workload("c//v1/Pod/default/w1", "10.0.0.1", ECHO_KEY);
    let svc = service(ECHO_HOST, "10.96.0.1");
    conn.send(response(
        ADDRESS_TYPE_URL,
        "a1",
        vec![
            workload_resource(&w1, "w1-v1"),
            service_resource(&svc, "svc-v1"),
        ],
        &[],
    ));
    assert!(conn.recv().await.error_detail.is_none());
    conn.send(response(
        AUTHORIZATION_TYPE_URL,
        "p1",
        vec![policy_resource(&policy("allow"), "p-v1")],
        &[],
    ));
    assert!(conn.recv().await.error_detail.is_none());
    wait_status(&mut client.status, |s| s.is_synced() && s.connections == 1).await;

    // The control plane goes away: the stream ends from the server side.
    drop(conn);
    wait_status(&mut client.status, |s| !s.connected || s.connections > 1).await;

    // The client comes back and says what it holds; meanwhile the store kept everything.
    let mut conn = server.next_conn().await;
    let initial = conn.recv_initial().await;
    let store = &client.store;
    assert!(store.workload_by_ip("", ip("10.0.0.1")).is_some());
    assert!(store.service(ECHO_KEY).is_some());
    assert!(store.policy("default/allow").is_some());
    let address = &initial[ADDRESS_TYPE_URL];
    assert!(
        address.resource_names_subscribe.is_empty(),
        "still wildcard"
    );
    assert_eq!(
        address.initial_resource_versions,
        HashMap::from([
            (w1.uid.clone(), "w1-v1".to_string()),
            (ECHO_KEY.to_string(), "svc-v1".to_string()),
        ])
    );
    assert_eq!(
        initial[AUTHORIZATION_TYPE_URL].initial_resource_versions,
        HashMap::from([("default/allow".to_string(), "p-v1".to_string())])
    );
    wait_status(&mut client.status, |s| s.connected && s.connections == 2).await;
    assert!(client.status.borrow().last_error.is_some());

    // The server sends what changed and removes what is gone; nothing else is touched.
    let mut moved = w1.clone();
    moved.addresses = vec![ip("10.0.0.9")];
    conn.send(response(
        ADDRESS_TYPE_URL,
        "b1",
        vec![workload_resource(&moved, "w1-v2")],
        &[ECHO_KEY],
    ));
    assert!(conn.recv().await.error_detail.is_none());
    assert!(store.service(ECHO_KEY).is_none());
    assert!(store.workload_by_ip("", ip("10.0.0.1")).is_none());
    assert!(store.workload_by_ip("", ip("10.0.0.9")).is_some());
    assert!(store.policy("default/allow").is_some());

    // A server that is down for a while: attempts fail, the store still serves.
    drop(conn);
    let addr = server.addr;
    drop(server);
    wait_status(&mut client.status, |s| !s.connected).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.workload(&w1.uid).is_some());
    assert!(store.policy("default/allow").is_some());

    // It comes back on the same port and gets the latest versions.
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let (tx, mut conns) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(FakeAds { conns: tx }))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .expect("serve");
    });
    let mut conn = tokio::time::timeout(WAIT, conns.recv())
        .await
        .expect("reconnect in time")
        .expect("conn");
    let initial = conn.recv_initial().await;
    assert_eq!(
        initial[ADDRESS_TYPE_URL].initial_resource_versions,
        HashMap::from([(w1.uid.clone(), "w1-v2".to_string())])
    );
    task.abort();
}

#[tokio::test]
async fn works_over_tls_with_a_bearer_token_from_a_file() {
    let ca = CertificateAuthority::generate_root("cluster.local").expect("ca");
    let (chain, key) = ca
        .issue_server_cert(&["localhost".into()], Duration::from_secs(3600))
        .expect("server cert");
    let tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(chain.join(""), key));
    let mut server = Server::start(Some(tls)).await;

    let token_path = std::env::temp_dir().join(format!("mesh-xds-token-{}", std::process::id()));
    std::fs::write(&token_path, "secret-token\n").expect("write token");
    let mut config = client_config(
        server.addr,
        XdsTransport::Tls(XdsTls {
            root_cert_pem: ca.root_pem().into(),
            server_name: "localhost".into(),
            client_cert: None,
        }),
    );
    config.address = format!("https://localhost:{}", server.addr.port());
    config.token = Some(BearerToken::File(token_path.clone()));
    let client = start_client(config);

    let mut conn = server.next_conn().await;
    assert_eq!(conn.authorization.as_deref(), Some("Bearer secret-token"));
    conn.recv_initial().await;
    let w1 = workload("c//v1/Pod/default/w1", "10.0.0.1", ECHO_KEY);
    conn.send(response(
        ADDRESS_TYPE_URL,
        "t1",
        vec![workload_resource(&w1, "1")],
        &[],
    ));
    let ack = conn.recv().await;
    assert_eq!(ack.response_nonce, "t1");
    assert!(ack.error_detail.is_none());
    assert!(client.store.workload(&w1.uid).is_some());
    let _ = std::fs::remove_file(token_path);
}

#[tokio::test]
async fn an_untrusted_server_is_never_talked_to() {
    let ca = CertificateAuthority::generate_root("cluster.local").expect("ca");
    let other = CertificateAuthority::generate_root("cluster.local").expect("other ca");
    let (chain, key) = ca
        .issue_server_cert(&["localhost".into()], Duration::from_secs(3600))
        .expect("server cert");
    let tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(chain.join(""), key));
    let mut server = Server::start(Some(tls)).await;
    let mut config = client_config(
        server.addr,
        XdsTransport::Tls(XdsTls {
            root_cert_pem: other.root_pem().into(),
            server_name: "localhost".into(),
            client_cert: None,
        }),
    );
    config.address = format!("https://localhost:{}", server.addr.port());
    let mut client = start_client(config);
    wait_status(&mut client.status, |s| s.last_error.is_some()).await;
    eventually("a few failed attempts", || {
        let s = client.status.borrow().clone();
        async move { !s.connected && s.connections == 0 }
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), server.conns.recv())
            .await
            .is_err(),
        "no stream reaches the server"
    );
}

#[tokio::test]
async fn the_root_file_is_re_read_before_each_connection() {
    let ca = CertificateAuthority::generate_root("cluster.local").expect("ca");
    let stale = CertificateAuthority::generate_root("cluster.local").expect("old root");
    let (chain, key) = ca
        .issue_server_cert(&["localhost".into()], Duration::from_secs(3600))
        .expect("server cert");
    let tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(chain.join(""), key));
    let mut server = Server::start(Some(tls)).await;
    let root_file = std::env::temp_dir().join(format!("mesh-xds-root-{}", std::process::id()));
    std::fs::write(&root_file, stale.root_pem()).expect("write root");
    let mut config = client_config(
        server.addr,
        XdsTransport::Tls(XdsTls {
            root_cert_pem: stale.root_pem().into(),
            server_name: "localhost".into(),
            client_cert: None,
        }),
    );
    config.address = format!("https://localhost:{}", server.addr.port());
    let store = Store::new();
    let client = XdsClient::new(config, store.clone())
        .expect("client config")
        .with_root_file(root_file.clone());
    let mut client = start(client, store);
    // Signed by a root the client does not trust yet: refused.
    wait_status(&mut client.status, |s| s.last_error.is_some()).await;
    assert!(!client.status.borrow().connected);

    // The control plane's root rotated and the file says so: the next attempt trusts it.
    std::fs::write(&root_file, format!("{}{}", stale.root_pem(), ca.root_pem())).expect("write");
    let mut conn = server.next_conn().await;
    conn.recv_initial().await;
    wait_status(&mut client.status, |s| s.connected).await;
    let _ = std::fs::remove_file(root_file);
}

#[path = "xds/metrics.rs"]
mod metrics;
