//! `envoy.service.discovery.v3.AggregatedDiscoveryService`: authentication, one task per
//! stream, logs and metrics.
//!
//! A stream is accepted only with `authorization: Bearer <token>` naming a node in the tokens
//! file (else `Unauthenticated`, as for the CA). Its task reads requests, follows the prepared
//! snapshots and sends what [`Connection`] decides, in one tracing span (`xds_stream`: stream
//! id, node, peer). It ends when the proxy goes away or when [`XdsService::stop_streams`] is
//! called at shutdown (the proxy then gets `Unavailable` and reconnects elsewhere or later).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use proto::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use proto::discovery::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::connection::{Connection, NonceSource, Outgoing, Received};
use super::metrics::TypeLabels;
use super::snapshots::spawn_preparer;
use super::syncz::{self, ProxyStatus, SharedConnection, Streams};
use super::versions::PreparedSnapshot;
use super::{XdsMetrics, XdsOptions, XdsSnapshot};
use crate::auth::Authenticator;
use crate::ca_service::UNAUTHENTICATED_MESSAGE;
use crate::tokens::NodeCaller;

/// Largest request accepted: a reconnecting proxy lists every resource it holds.
const MAX_REQUEST_LEN: usize = 16 * 1024 * 1024;

/// Responses queued per stream: at most one per type is in flight, plus the final status.
const RESPONSE_QUEUE: usize = 4;

/// The message sent to every stream at shutdown.
const SHUTDOWN_MESSAGE: &str = "istiod-lite is shutting down";

/// The delta ADS service. Cheap to clone: every clone shares the streams and the snapshots.
#[derive(Clone)]
pub struct XdsService {
    shared: Arc<Shared>,
}

struct Shared {
    auth: Arc<Authenticator>,
    snapshots: watch::Receiver<Arc<PreparedSnapshot>>,
    metrics: XdsMetrics,
    nonces: Arc<NonceSource>,
    stop: watch::Sender<bool>,
    next_stream: AtomicU64,
    streams: Arc<Streams>,
}

impl std::fmt::Debug for XdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsService")
            .field("generation", &self.shared.snapshots.borrow().generation)
            .field("connected", &self.shared.metrics.connected_proxies.get())
            .finish_non_exhaustive()
    }
}

impl XdsService {
    /// A service for callers in `tokens`, serving the snapshots published on `snapshots`
    /// (prepared now for the current value, then debounced by `options.push_debounce`).
    /// Must be called within a tokio runtime: it spawns the task that prepares snapshots.
    pub fn new(
        auth: Arc<Authenticator>,
        snapshots: watch::Receiver<Arc<XdsSnapshot>>,
        options: &XdsOptions,
        metrics: XdsMetrics,
    ) -> Self {
        let prepared = spawn_preparer(snapshots, options.push_debounce, metrics.clone());
        XdsService {
            shared: Arc::new(Shared {
                auth,
                snapshots: prepared,
                metrics,
                nonces: Arc::new(NonceSource::new()),
                stop: watch::Sender::new(false),
                next_stream: AtomicU64::new(1),
                streams: Arc::default(),
            }),
        }
    }

    /// The tonic server for this service, with a request size limit.
    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_LEN)
    }

    /// Ends every open stream (with `Unavailable`) and refuses new ones, so a graceful server
    /// shutdown does not wait for proxies that never hang up.
    pub fn stop_streams(&self) {
        self.shared.stop.send_replace(true);
    }

    /// Every connected proxy and where it stands per type (`/debug/syncz`).
    pub fn syncz(&self) -> Vec<ProxyStatus> {
        self.shared.streams.status()
    }

    /// The generation of the snapshot streams are being brought to (0 = the first).
    pub fn generation(&self) -> u64 {
        self.shared.snapshots.borrow().generation
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "istiod-lite serves delta ADS only (DeltaAggregatedResources)",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let authenticated = match header {
            Some(header) => self.shared.auth.authenticate_header(&header).await,
            None => Err("no authorization header".to_string()),
        };
        let caller = match authenticated {
            Ok(caller) => caller,
            Err(reason) => {
                tracing::warn!(peer = %peer, %reason, "xDS stream refused: {UNAUTHENTICATED_MESSAGE}");
                return Err(Status::unauthenticated(UNAUTHENTICATED_MESSAGE));
            }
        };
        if *self.shared.stop.borrow() {
            return Err(Status::unavailable(SHUTDOWN_MESSAGE));
        }
        let id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("xds_stream", id, node = %caller.node, peer = %peer);
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let stream = Stream {
            id,
            peer,
            caller,
            requests: request.into_inner(),
            tx,
        };
        tokio::spawn(run_stream(self.shared.clone(), stream).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Counts a stream as connected for as long as it lives.
struct Connected(Gauge);

impl Connected {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Connected(gauge.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

type ResponseSender = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// One accepted stream.
struct Stream {
    id: u64,
    peer: String,
    caller: NodeCaller,
    requests: Streaming<DeltaDiscoveryRequest>,
    tx: ResponseSender,
}

/// Serves one stream until either side ends it.
async fn run_stream(shared: Arc<Shared>, stream: Stream) {
    let Stream {
        id,
        peer,
        caller,
        mut requests,
        tx,
    } = stream;
    let _connected = Connected::new(&shared.metrics.connected_proxies);
    let started = tokio::time::Instant::now();
    let mut snapshots = shared.snapshots.clone();
    let mut stop = shared.stop.subscribe();
    let connection: SharedConnection = Arc::new(std::sync::Mutex::new(Connection::new(
        snapshots.borrow_and_update().clone(),
        shared.nonces.clone(),
    )));
    let registration = shared
        .streams
        .register(id, &caller.node, &peer, connection.clone());
    let mut proxy = String::from("-");
    let mut snapshots_open = true;
    tracing::info!("xDS stream opened");
    let reason: String = loop {
        let outgoing: Vec<Outgoing> = tokio::select! {
            () = stopped(&mut stop) => {
                let _ = tx.send(Err(Status::unavailable(SHUTDOWN_MESSAGE))).await;
                break "the server is shutting down".into();
            }
            () = tx.closed() => break "the proxy went away".into(),
            message = requests.message() => match message {
                Ok(Some(request)) => {
                    if let Some(node) = request.node.as_ref().filter(|n| !n.id.is_empty()) {
                        if proxy != node.id {
                            proxy.clone_from(&node.id);
                            registration.set_proxy(&proxy);
                            tracing::info!(proxy = %proxy, "proxy identified itself");
                        }
                    }
                    let (received, out) = syncz::lock(&connection).on_request(request);
                    log_received(&shared.metrics, &caller, &proxy, received);
                    out.into_iter().collect()
                }
                Ok(None) => break "the proxy closed the stream".into(),
                Err(status) => break format!("the stream failed: {:?}: {}", status.code(), status.message()),
            },
            changed = snapshots.changed(), if snapshots_open => match changed {
                Ok(()) => syncz::lock(&connection).on_snapshot(snapshots.borrow_and_update().clone()),
                Err(_) => {
                    snapshots_open = false;
                    Vec::new()
                }
            },
        };
        let mut gone = false;
        for out in outgoing {
            if !send(&shared.metrics, &tx, out).await {
                gone = true;
                break;
            }
        }
        if gone {
            break "the proxy went away".into();
        }
    };
    tracing::info!(
        proxy = %proxy,
        reason = %reason,
        duration_secs = started.elapsed().as_secs(),
        "xDS stream closed"
    );
}

/// Completes once the service is stopping.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The sender lives in `Shared`, which the caller holds: this cannot fail.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Sends one response and records it; false when the proxy is gone.
async fn send(metrics: &XdsMetrics, tx: &ResponseSender, out: Outgoing) -> bool {
    let Outgoing {
        kind,
        response,
        changed_at,
    } = out;
    let (resources, removed) = (response.resources.len(), response.removed_resources.len());
    let nonce = response.nonce.clone();
    if tx.send(Ok(response)).await.is_err() {
        return false;
    }
    let labels = TypeLabels::of(kind);
    metrics.pushes.get_or_create(&labels).inc();
    if let Some(at) = changed_at {
        metrics
            .push_latency
            .get_or_create(&labels)
            .observe(at.elapsed().as_secs_f64());
    }
    tracing::debug!(
        type_url = kind.type_url(),
        nonce,
        resources,
        removed,
        latency_ms = changed_at.map(|at| millis(at.elapsed())),
        "xDS response sent"
    );
    true
}

fn log_received(metrics: &XdsMetrics, caller: &NodeCaller, proxy: &str, received: Received) {
    match received {
        Received::Subscribed {
            kind,
            initial_resources,
            explicit_names,
        } => {
            tracing::info!(
                type_url = kind.type_url(),
                initial_resources,
                "proxy subscribed (wildcard)"
            );
            if explicit_names > 0 {
                tracing::debug!(
                    type_url = kind.type_url(),
                    explicit_names,
                    "explicit resource names are served as a wildcard subscription"
                );
            }
        }
        Received::Ack { kind, nonce } => {
            tracing::debug!(type_url = kind.type_url(), nonce, "ACK");
        }
        Received::Nack {
            kind,
            nonce,
            code,
            message,
        } => {
            metrics.nacks.get_or_create(&TypeLabels::of(kind)).inc();
            tracing::warn!(
                node = %caller.node,
                proxy = %proxy,
                type_url = kind.type_url(),
                nonce,
                code,
                error = %message,
                "proxy rejected an xDS response (NACK); it keeps its previous version of those resources, which are sent again when they change"
            );
        }
        Received::Stale { kind, nonce } => {
            tracing::debug!(
                type_url = kind.type_url(),
                nonce,
                "ignoring a request with a nonce that is not in flight"
            );
        }
        Received::Resubscribe { kind } => {
            tracing::debug!(
                type_url = kind.type_url(),
                "ignoring a subscription change: every resource is already subscribed"
            );
        }
        Received::UnknownType { type_url } => {
            tracing::warn!(
                type_url,
                "ignoring a request for a resource type that is not served"
            );
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
