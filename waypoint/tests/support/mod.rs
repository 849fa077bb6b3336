//! In-process harness: a test CA, a hand-filled store, HBONE backends fronting hyper (HTTP
//! on 8080, an echo on 9000), a waypoint, and an HBONE client.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::cert_manager::{CertManager, RenewalConfig};
use mesh::hbone::{
    ConnectFuture, ConnectMeta, Connector, H2Config, H2Stream, HboneError, InboundRequest, Pool,
    PoolKey, Server, ServerCerts, TcpConnector,
};
use mesh::model::{
    AppProtocol, HealthStatus, IpFamilies, NetworkAddress, NetworkMode, PortMapping, Service,
    TunnelProtocol, Workload, WorkloadType,
};
use mesh::store::{Batch, Store};
use mesh::testing::TestCa;
use mesh::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use waypoint::{ProxyConfig, Waypoint};

pub const ECHO_HOST: &str = "echo.default.svc.cluster.local";
pub const ECHO_KEY: &str = "default/echo.default.svc.cluster.local";
pub const ECHO_VIP: &str = "10.96.0.10";
pub const EMPTY_VIP: &str = "10.96.0.11";
pub const DEAD_VIP: &str = "10.96.0.12";
/// Service port for HTTP (→ 8080 on endpoints) and for the TCP echo (→ 9000).
pub const HTTP_PORT: u16 = 80;
pub const TCP_PORT: u16 = 7000;

pub fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).expect("identity")
}

pub fn ports() -> Vec<PortMapping> {
    vec![
        PortMapping {
            service_port: HTTP_PORT,
            target_port: 8080,
            app_protocol: AppProtocol::Unknown,
        },
        PortMapping {
            service_port: TCP_PORT,
            target_port: 9000,
            app_protocol: AppProtocol::Unknown,
        },
    ]
}

pub fn workload(name: &str, ip: &str, identity: Identity, service: Option<&str>) -> Workload {
    Workload {
        uid: format!("Kubernetes//v1/Pod/{}/{name}", identity.namespace()),
        name: name.into(),
        addresses: vec![ip.parse().expect("ip")],
        hostname: String::new(),
        network: String::new(),
        tunnel_protocol: TunnelProtocol::Hbone,
        identity,
        waypoint: None,
        network_gateway: None,
        node: "node-1".into(),
        canonical_name: name.split('-').next().unwrap_or(name).into(),
        canonical_revision: "v1".into(),
        workload_type: WorkloadType::Deployment,
        workload_name: name.split('-').next().unwrap_or(name).into(),
        native_tunnel: false,
        application_tunnel: None,
        services: service
            .map(|s| BTreeMap::from([(s.to_string(), ports())]))
            .unwrap_or_default(),
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
        namespace: "default".into(),
        hostname: format!("{name}.default.svc.cluster.local"),
        vips: vec![NetworkAddress {
            network: String::new(),
            ip: vip.parse().expect("ip"),
        }],
        ports: ports(),
        subject_alt_names: vec![],
        waypoint: None,
        load_balancing: None,
        ip_families: IpFamilies::Automatic,
        canonical: true,
        ingress_use_waypoint: false,
    }
}

/// Maps endpoint HBONE addresses (pod IP:15008) to where the test backends really listen.
#[derive(Default)]
pub struct MapConnector(pub Mutex<HashMap<SocketAddr, SocketAddr>>);

impl Connector for MapConnector {
    fn connect(&self, dst: SocketAddr, _src: Option<IpAddr>) -> ConnectFuture<'_> {
        let real = self.0.lock().unwrap().get(&dst).copied();
        Box::pin(async move {
            match real {
                Some(addr) => TcpStream::connect(addr).await,
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("no test endpoint at {dst}"),
                )),
            }
        })
    }
}

/// What a backend saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// CONNECT streams accepted (targets).
    pub connects: Vec<SocketAddr>,
    /// Identities of tunnel peers.
    pub peers: Vec<String>,
    /// HTTP requests served.
    pub requests: usize,
}

pub struct Backend {
    pub name: String,
    pub seen: Arc<Mutex<Seen>>,
}

/// Counts requests to `/flaky` across every backend of a harness: even ones fail with 503.
pub static FLAKY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn backend_http(
    name: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let echoed: Vec<(String, http::HeaderValue)> = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-t-"))
        .map(|(k, v)| (format!("x-seen-{k}"), v.clone()))
        .collect();
    let mut status = 200u16;
    if let Some(ms) = path.strip_prefix("/delay/") {
        let ms: u64 = ms.split('/').next().unwrap_or("0").parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(500);
    }
    if path.strip_prefix("/fail-on/") == Some(name.as_str()) {
        status = 500;
    }
    if path.starts_with("/flaky") {
        let n = FLAKY.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n.is_multiple_of(2) {
            status = 503;
        }
    }
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let traceparent = header("traceparent");
    let request_id = header("x-request-id");
    let grpc = header("content-type").starts_with("application/grpc");
    if req.uri().path().starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = Response::builder()
        .status(status)
        .header("x-seen-path", pq)
        .header("x-seen-host", host)
        .header("x-backend", name.as_str())
        .header("x-seen-traceparent", traceparent)
        .header("x-seen-request-id", request_id)
        .header("x-seen-version", version);
    if grpc {
        resp = resp.header("content-type", "application/grpc");
    }
    for (k, v) in echoed {
        resp = resp.header(k, v);
    }
    Ok(resp.body(Full::new(body)).expect("response"))
}

async fn backend_grpc(
    name: String,
    req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let resp = backend_http(name, req).await?;
    Ok(resp.map(|b| {
        if grpc {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("value"));
            trailers.insert("grpc-message", "ok".parse().expect("value"));
            b.with_trailers(async move { Some(Ok(trailers)) }).boxed()
        } else {
            b.boxed()
        }
    }))
}

async fn serve_backend(name: String, seen: Arc<Mutex<Seen>>, req: InboundRequest) {
    let target = req.target();
    {
        let mut s = seen.lock().unwrap();
        s.connects.push(target);
        s.peers.push(req.peer().to_string());
    }
    let Ok(stream) = req.accept() else { return };
    if target.port() == 9000 {
        let (mut r, mut w) = tokio::io::split(stream);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
        return;
    }
    let seen2 = seen.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        seen2.lock().unwrap().requests += 1;
        let name = name.clone();
        async move {
            if let Some(protocol) = req.headers().get("upgrade").cloned() {
                // Switch to an echo of the new protocol's bytes.
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    if let Ok(upgraded) = on.await {
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                });
                return Ok(Response::builder()
                    .status(101)
                    .header("connection", "upgrade")
                    .header("upgrade", protocol)
                    .body(Full::new(Bytes::new()).boxed())
                    .expect("response"));
            }
            backend_grpc(name, req).await
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

/// Serves HBONE as `identity` for a pod `name` at `ip` (reached through `connector`).
async fn spawn_backend(
    ca: &Arc<TestCa>,
    connector: &MapConnector,
    name: &str,
    ip: &str,
    identity: &Identity,
) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let real = listener.local_addr().expect("addr");
    connector
        .0
        .lock()
        .unwrap()
        .insert(SocketAddr::new(ip.parse().expect("ip"), 15008), real);
    let certs: Arc<dyn ServerCerts> = Arc::new(Arc::new(ca.issue(identity)));
    let server = Arc::new(Server::new(H2Config::default(), certs));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (n, s) = (name.to_string(), seen.clone());
    tokio::spawn(server.serve(listener, move |req| {
        serve_backend(n.clone(), s.clone(), req)
    }));
    Backend {
        name: name.to_string(),
        seen,
    }
}

pub struct Harness {
    pub ca: Arc<TestCa>,
    pub store: Store,
    pub waypoint: Waypoint,
    pub waypoint_addr: SocketAddr,
    pub waypoint_id: Identity,
    pub client_id: Identity,
    pub backends: Vec<Backend>,
    pub connector: Arc<MapConnector>,
    pub client_pool: Pool,
}

impl Harness {
    /// Two echo endpoints (10.0.0.1, 10.0.0.2) behind `echo` (10.96.0.10), a service with no
    /// endpoint (`empty`, 10.96.0.11), a service whose endpoint refuses connections (`dead`,
    /// 10.96.0.12), and a client workload `sleep` at 127.0.0.1.
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ProxyConfig)) -> Harness {
        let ca = TestCa::new("cluster.local", Duration::from_secs(3600));
        let store = Store::new();
        let connector = Arc::new(MapConnector::default());
        let echo_id = id("default", "echo");
        let mut batch = Batch::new();
        batch.upsert_service(service("echo", ECHO_VIP));
        batch.upsert_service(service("empty", EMPTY_VIP));
        batch.upsert_service(service("dead", DEAD_VIP));
        batch.upsert_workload(workload(
            "sleep-1",
            "127.0.0.1",
            id("default", "sleep"),
            None,
        ));
        batch.upsert_workload(workload(
            "dead-1",
            "10.0.0.9",
            echo_id.clone(),
            Some("default/dead.default.svc.cluster.local"),
        ));
        let mut backends = Vec::new();
        for (name, ip) in [("echo-a", "10.0.0.1"), ("echo-b", "10.0.0.2")] {
            batch.upsert_workload(workload(name, ip, echo_id.clone(), Some(ECHO_KEY)));
            backends.push(spawn_backend(&ca, &connector, name, ip, &echo_id).await);
        }
        store.apply(batch);

        let waypoint_id = id("default", "waypoint");
        let certs = CertManager::new(ca.clone(), RenewalConfig::default());
        let mut config = ProxyConfig::new(waypoint_id.clone());
        config.protocol_detect_timeout = Duration::from_secs(1);
        tweak(&mut config);
        let waypoint = Waypoint::with_connector(store.clone(), certs, config, connector.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let waypoint_addr = listener.local_addr().expect("addr");
        let serving = waypoint.clone();
        tokio::spawn(async move { serving.serve(listener).await });
        Harness {
            ca,
            store,
            waypoint,
            waypoint_addr,
            waypoint_id,
            client_id: id("default", "sleep"),
            backends,
            connector,
            client_pool: Pool::new(H2Config::default(), Arc::new(TcpConnector)),
        }
    }

    /// Adds service `name` (key `default/<name>.default.svc.cluster.local`) at `vip` with a
    /// backend pod per `(pod name, ip)`; returns the pods' indexes in `backends`.
    pub async fn add_service(
        &mut self,
        name: &str,
        vip: &str,
        pods: &[(&str, &str)],
    ) -> Vec<usize> {
        let key = format!("default/{name}.default.svc.cluster.local");
        let identity = id("default", name);
        let mut batch = Batch::new();
        batch.upsert_service(service(name, vip));
        let mut indexes = Vec::new();
        for (pod, ip) in pods {
            batch.upsert_workload(workload(pod, ip, identity.clone(), Some(&key)));
            let b = spawn_backend(&self.ca, &self.connector, pod, ip, &identity).await;
            indexes.push(self.backends.len());
            self.backends.push(b);
        }
        self.store.apply(batch);
        indexes
    }

    /// Opens a tunnel to `target` through the waypoint, as the client ztunnel would.
    pub async fn tunnel(&self, target: SocketAddr) -> Result<H2Stream, HboneError> {
        let cert = self.ca.issue(&self.client_id);
        let key = PoolKey::new(
            self.client_id.clone(),
            vec![self.waypoint_id.clone()],
            self.waypoint_addr,
            None,
        );
        self.client_pool
            .connect(&key, &cert, target, &ConnectMeta::default())
            .await
    }

    pub async fn http1(
        &self,
        target: SocketAddr,
    ) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let io = self.tunnel(target).await.expect("tunnel");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        send
    }

    pub async fn http2(
        &self,
        target: SocketAddr,
    ) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let io = self.tunnel(target).await.expect("tunnel");
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        send
    }

    pub fn metrics(&self) -> String {
        self.waypoint.telemetry().encode()
    }

    pub fn seen(&self, backend: usize) -> std::sync::MutexGuard<'_, Seen> {
        self.backends[backend].seen.lock().unwrap()
    }
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

/// Sum of the values of metric lines named `name` that contain every `labels` fragment.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn read_all(mut s: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    out
}
