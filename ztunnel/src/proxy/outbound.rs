//! Outbound (15001): the pod's own outgoing TCP connections.
//!
//! The original destination comes from SO_ORIGINAL_DST. A meshed workload's IP, or a service
//! VIP whose chosen endpoint is meshed, goes over HBONE to that pod's 15008, expecting its
//! identity; a service or workload bound to a waypoint goes over HBONE to the waypoint with
//! the original destination as authority; anything else passes through as plain TCP.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use mesh::copy::Abort;
use mesh::hbone::{Baggage, ConnectMeta, H2Config, H2Stream, Pool, PoolKey};
use mesh::metrics::Reporter;
use mesh::model::{GatewayAddress, HealthStatus, Service, TunnelProtocol, Workload};
use mesh::store::Store;
use mesh::Identity;
use nix::sys::socket::MsgFlags;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::hop::Hop;
use super::limits::Slot;
use super::live::{proxied, Ends, Kind, LiveGuard};
use super::same_node;
use super::source::Source;
use super::{stopped, PodConnector, PodContext, ProxyInputs};
use crate::telemetry::{ConnectionRecord, Direction, FailureReason, Peer};

/// Where an outbound connection goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// Over HBONE.
    Hbone {
        /// The tunnel endpoint (pod or waypoint IP, HBONE port).
        endpoint: SocketAddr,
        /// The CONNECT authority: the destination as the server side must see it.
        authority: SocketAddr,
        /// Identities the endpoint may prove.
        expected: Vec<Identity>,
        /// The destination workload, when known.
        workload: Option<Arc<Workload>>,
        /// The service addressed, if the destination was a VIP.
        service: Option<Arc<Service>>,
        /// Whether this hop is to a waypoint.
        via_waypoint: bool,
    },
    /// Plain TCP to a destination outside the mesh.
    Passthrough {
        /// Where to connect.
        addr: SocketAddr,
        /// The destination workload, when known but not meshed.
        workload: Option<Arc<Workload>>,
        /// The service addressed, if any.
        service: Option<Arc<Service>>,
    },
    /// Nothing can serve it (a service with no healthy endpoint).
    Unreachable(String),
}

static ROUND_ROBIN: AtomicUsize = AtomicUsize::new(0);

/// Decides the route for a connection from `src` to `dst` (pure over the store).
pub fn resolve(store: &Store, src: Option<&Workload>, dst: SocketAddr) -> Route {
    let network = src.map(|w| w.network.as_str()).unwrap_or("");
    if let Some(service) = store.service_by_vip(network, dst.ip()) {
        if let Some(route) =
            via_waypoint(store, src, service.waypoint.as_ref(), dst, Some(&service))
        {
            return route;
        }
        let endpoints: Vec<_> = store
            .endpoints_of(&service.key())
            .into_iter()
            .filter(|e| e.workload.status == HealthStatus::Healthy)
            .filter(|e| {
                e.workload
                    .addresses
                    .iter()
                    .any(|a| a.is_ipv4() == dst.is_ipv4())
            })
            .collect();
        if endpoints.is_empty() {
            return Route::Unreachable(format!(
                "service {} has no healthy endpoint",
                service.key()
            ));
        }
        let pick = &endpoints[ROUND_ROBIN.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
        let port = pick
            .target_port(dst.port())
            .or_else(|| {
                service
                    .ports
                    .iter()
                    .find(|p| p.service_port == dst.port() && p.target_port != 0)
                    .map(|p| p.target_port)
            })
            .unwrap_or(dst.port());
        let ip = pick
            .workload
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == dst.is_ipv4())
            .unwrap_or(dst.ip());
        let mut route = to_workload(pick.workload.clone(), SocketAddr::new(ip, port));
        let sans = service.subject_alt_names.clone();
        match &mut route {
            Route::Hbone {
                service: s,
                expected,
                ..
            } => {
                *s = Some(service.clone());
                if !sans.is_empty() {
                    *expected = sans;
                }
            }
            Route::Passthrough { service: s, .. } => *s = Some(service.clone()),
            Route::Unreachable(_) => {}
        }
        return route;
    }
    if let Some(workload) = store.workload_by_ip(network, dst.ip()) {
        if let Some(route) = via_waypoint(store, src, workload.waypoint.as_ref(), dst, None) {
            return route;
        }
        return to_workload(workload, dst);
    }
    Route::Passthrough {
        addr: dst,
        workload: None,
        service: None,
    }
}

fn to_workload(workload: Arc<Workload>, dst: SocketAddr) -> Route {
    if workload.tunnel_protocol == TunnelProtocol::Hbone {
        Route::Hbone {
            endpoint: SocketAddr::new(dst.ip(), mesh::hbone::HBONE_PORT),
            authority: dst,
            expected: vec![workload.identity.clone()],
            workload: Some(workload),
            service: None,
            via_waypoint: false,
        }
    } else {
        Route::Passthrough {
            addr: dst,
            workload: Some(workload),
            service: None,
        }
    }
}

/// The route through `waypoint`, unless there is none or the source is that waypoint.
fn via_waypoint(
    store: &Store,
    src: Option<&Workload>,
    waypoint: Option<&GatewayAddress>,
    dst: SocketAddr,
    service: Option<&Arc<Service>>,
) -> Option<Route> {
    let gw = waypoint?;
    let network = src.map(|w| w.network.as_str()).unwrap_or("");
    let healthy = super::waypoint::healthy_instances(store, gw);
    if src.is_some_and(|s| healthy.iter().any(|w| w.uid == s.uid)) {
        // The waypoint itself is sending: go straight to the destination.
        return None;
    }
    let Some(pick) =
        healthy.get(ROUND_ROBIN.fetch_add(1, Ordering::Relaxed) % healthy.len().max(1))
    else {
        return Some(Route::Unreachable(
            "waypoint has no healthy instance".into(),
        ));
    };
    let ip = pick
        .addresses
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == dst.is_ipv4())?;
    let _ = network;
    Some(Route::Hbone {
        endpoint: SocketAddr::new(ip, gw.hbone_mtls_port),
        authority: dst,
        expected: vec![pick.identity.clone()],
        workload: None,
        service: service.cloned(),
        via_waypoint: true,
    })
}

/// Drains the pool when dropped: when the pod's proxy stops (or its task is aborted), idle
/// HBONE connections close at once and busy ones when their last stream ends. Not when
/// ztunnel itself is stopping: connections accepted just before the listener closed still
/// need the pool, which drains anyway when their tasks drop its last handle.
struct DrainOnDrop(Pool, watch::Receiver<super::Stop>);

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        if *self.1.borrow() != super::Stop::Shutdown {
            self.0.drain();
        }
    }
}

/// Accepts the pod's outbound connections until told to stop. The pod's HBONE pool counts
/// into the node-wide `inputs.pool_stats` and is drained when this ends.
pub async fn serve(
    inputs: ProxyInputs,
    pod: PodContext,
    listener: TcpListener,
    stop: watch::Receiver<super::Stop>,
) {
    let pool = Pool::with_stats(
        H2Config::default(),
        Arc::new(PodConnector {
            pod: pod.clone(),
            home: inputs.home.clone(),
            store: inputs.store.clone(),
            config: inputs.config.clone(),
        }),
        inputs.pool_stats.clone(),
    );
    let _drain = DrainOnDrop(pool.clone(), stop.clone());
    let accept = async {
        loop {
            let (stream, peer, slot) = inputs
                .limits
                .accept(
                    &inputs.telemetry,
                    &pod,
                    &listener,
                    "outbound",
                    Direction::outbound,
                )
                .await;
            let (inputs, pod, pool) = (inputs.clone(), pod.clone(), pool.clone());
            let span = tracing::debug_span!("outbound", pod = %pod.uid, client = %peer);
            tokio::spawn(handle(inputs, pod, pool, stream, peer, slot).instrument(span));
        }
    };
    tokio::select! {
        () = accept => {}
        () = stopped(stop) => {}
    }
}

/// Where a set-up connection goes on to.
enum Upstream {
    /// Plain TCP (passthrough).
    Tcp(TcpStream),
    /// An HBONE stream.
    Tunnel(H2Stream),
    /// The application of another pod served here, carried in-process ([`same_node`]).
    Direct(TcpStream, same_node::Destination),
}

/// A connection that is set up: its record, where it goes, and its live-connection guard.
struct Ready {
    record: ConnectionRecord,
    upstream: Upstream,
    guard: LiveGuard,
}

/// Sets the connection up, then hands it to a copy task of its own and ends: the set-up's
/// state is freed, and an idle connection holds only what copying needs.
async fn handle(
    inputs: ProxyInputs,
    pod: PodContext,
    pool: Pool,
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let Some(Ready {
        record,
        upstream,
        guard,
    }) = setup(&inputs, &pod, pool, &mut stream, peer).await
    else {
        return;
    };
    match upstream {
        Upstream::Tcp(up) => proxied::spawn(record, stream, up, guard, slot),
        Upstream::Tunnel(t) => proxied::spawn(record, stream, t, guard, slot),
        Upstream::Direct(app, dst) => proxied::spawn((record, dst), stream, app, guard, slot),
    }
}

/// Resolves, authorizes and connects an accepted outbound connection; `None` when it was
/// refused or failed (already counted, and the app's socket aborted where it must be).
async fn setup(
    inputs: &ProxyInputs,
    pod: &PodContext,
    pool: Pool,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Option<Ready> {
    // Refused before a record exists: counted, with no access-log line (as before).
    let failed = || {
        inputs
            .telemetry
            .failure(Direction::outbound, FailureReason::other)
    };
    // Registered before any await: the pod's removal either refuses it or drains it.
    let Some(guard) = inputs.live.register(&pod.key(), Kind::Outbound) else {
        tracing::debug!("connection accepted as the pod left the mesh; dropped");
        failed();
        return None;
    };
    let orig_dst = match socket2::SockRef::from(&*stream).original_dst_v4() {
        Ok(addr) => match addr.as_socket() {
            Some(a) => a,
            None => {
                failed();
                return None;
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no original destination on a captured connection");
            failed();
            return None;
        }
    };
    if orig_dst.port() == mesh::capture::OUTBOUND_PORT && is_local(stream, orig_dst.ip()) {
        // Somebody connected to 15001 directly: there is nowhere to send it.
        tracing::info!(%orig_dst, "refusing a direct connection to the outbound port");
        failed();
        return None;
    }
    let store = &inputs.store;
    let src_workload = pod.workload(store);
    let route = resolve(store, src_workload.as_deref(), orig_dst);
    guard.describe(ends(&route, pod, peer, orig_dst));
    let src = Peer {
        workload: src_workload.clone(),
        identity: Some(pod.identity.clone()),
        addr: Some(peer),
    };
    match route {
        Route::Unreachable(why) => {
            let record = ConnectionRecord::open(
                &inputs.telemetry,
                Reporter::source,
                src,
                Peer {
                    addr: Some(orig_dst),
                    ..Peer::default()
                },
                None,
                false,
            )
            .for_pod(&pod.metrics);
            // The app's connect() succeeded against our listener: a reset is how it learns
            // that the destination cannot be reached.
            stream.abort();
            record.fail(FailureReason::no_healthy_upstream, &why);
            None
        }
        Route::Passthrough {
            addr,
            workload,
            service,
        } => {
            let dst = Peer {
                workload,
                identity: None,
                addr: Some(addr),
            };
            let record = ConnectionRecord::open(
                &inputs.telemetry,
                Reporter::source,
                src,
                dst,
                service.as_deref(),
                false,
            )
            .for_pod(&pod.metrics);
            match inputs
                .limits
                .connect(pod, &inputs.home, addr, Hop::Network, Source::Pod)
                .await
            {
                Ok(up) => Some(Ready {
                    record,
                    upstream: Upstream::Tcp(up),
                    guard,
                }),
                Err(e) => {
                    stream.abort();
                    record.fail(FailureReason::of_io(&e), &e);
                    None
                }
            }
        }
        Route::Hbone {
            endpoint,
            authority,
            expected,
            workload,
            service,
            via_waypoint,
        } => {
            let dst = Peer {
                workload: workload.clone(),
                identity: expected.first().cloned(),
                addr: Some(authority),
            };
            let record = ConnectionRecord::open(
                &inputs.telemetry,
                Reporter::source,
                src,
                dst,
                service.as_deref(),
                true,
            )
            .for_pod(&pod.metrics);
            if let Some(w) = workload.as_ref().filter(|_| !via_waypoint) {
                let direct = same_node::connect(
                    inputs,
                    pod,
                    src_workload.clone(),
                    &guard,
                    peer,
                    w,
                    authority,
                )
                .await;
                if let Some((app, dst)) = direct {
                    return Some(Ready {
                        record,
                        upstream: Upstream::Direct(app, dst),
                        guard,
                    });
                }
            }
            let cert = match inputs.certs.get(&pod.identity).await {
                Ok(c) => c,
                Err(e) => {
                    stream.abort();
                    // No certificate to present: mutual TLS cannot be set up.
                    record.fail(FailureReason::tls_handshake, &e);
                    return None;
                }
            };
            let src_ip = src_workload
                .as_ref()
                .and_then(|w| w.addresses.first().copied());
            let key = PoolKey::new(pod.identity.clone(), expected, endpoint, src_ip);
            let meta = ConnectMeta {
                baggage: src_workload.as_deref().map(baggage),
                forwarded_for: Some(peer),
                traceparent: None,
                origin: None,
            };
            tracing::debug!(%endpoint, %authority, via_waypoint, "HBONE");
            let first = match first_bytes(stream) {
                Ok(first) => first,
                Err(e) => {
                    // Reset (or failed) before anything was sent on: the error was this
                    // read's to report, so the connection ends here, as a reset.
                    stream.abort();
                    record.fail(FailureReason::of_io(&e), &e);
                    return None;
                }
            };
            guard.read_before_copy(first.len());
            match pool
                .connect_with(&key, &cert, authority, &meta, first)
                .await
            {
                Ok(tunnel) => Some(Ready {
                    record,
                    upstream: Upstream::Tunnel(tunnel),
                    guard,
                }),
                Err(e) => {
                    // Refused (401, 503) or unreachable after the app's own connect()
                    // succeeded: a reset, never a clean close the app could mistake for an
                    // empty answer.
                    stream.abort();
                    record.fail(FailureReason::of_hbone(&e), &e);
                    None
                }
            }
        }
    }
}

/// Most of the client's first bytes sent with the CONNECT: one TLS record's worth.
const FIRST_BYTES: usize = 16 * 1024;

thread_local! {
    /// Where [`first_bytes`] reads: a connection's future never holds the buffer.
    static FIRST: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; FIRST_BYTES].into_boxed_slice());
}

/// What the client has sent already (a request, a TLS ClientHello), without waiting: it goes out
/// with the CONNECT ([`Pool::connect_with`]). Empty when nothing has arrived (a server-first
/// protocol, or a client slower than the set-up) and at EOF (which the copy meets again). An
/// error (a reset) is reported once by the kernel, so it is returned. Read past tokio: its
/// readiness for the socket is only cleared by a read of its own that finds nothing, so the
/// copy's first read still finds whatever is left. Costs one `recv` per HBONE connection when
/// nothing is there yet; when something is, it is the copy's first read, done earlier.
fn first_bytes(stream: &TcpStream) -> std::io::Result<Bytes> {
    use std::os::fd::AsRawFd as _;
    FIRST.with_borrow_mut(|buf| {
        match nix::sys::socket::recv(stream.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
            Err(nix::errno::Errno::EAGAIN) => Ok(Bytes::new()),
            Err(e) => Err(e.into()),
        }
    })
}

/// The connection's ends as the admin endpoint's `/connections` shows them.
fn ends(route: &Route, pod: &PodContext, peer: SocketAddr, orig_dst: SocketAddr) -> Ends {
    let (dst_identity, waypoint) = match route {
        Route::Hbone {
            expected,
            workload,
            endpoint,
            via_waypoint: true,
            ..
        } => (
            workload.as_ref().map(|w| w.identity.clone()),
            Some(
                expected
                    .first()
                    .map_or(endpoint.ip().to_string(), ToString::to_string),
            ),
        ),
        Route::Hbone { expected, .. } => (expected.first().cloned(), None),
        Route::Passthrough { .. } | Route::Unreachable(_) => (None, None),
    };
    Ends {
        src: Some(peer.to_string()),
        dst: Some(orig_dst),
        src_identity: Some(pod.identity.clone()),
        dst_identity,
        waypoint,
    }
}

fn is_local(stream: &TcpStream, ip: IpAddr) -> bool {
    stream.local_addr().map(|a| a.ip() == ip).unwrap_or(false) || ip.is_loopback()
}

/// The source's `baggage` for the CONNECT request.
pub fn baggage(w: &Workload) -> Baggage {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Baggage {
        cluster: some(&w.cluster_id),
        namespace: some(w.namespace()),
        workload_type: Some(format!("{:?}", w.workload_type).to_lowercase()),
        workload_name: some(if w.workload_name.is_empty() {
            &w.name
        } else {
            &w.workload_name
        }),
        service: some(&w.canonical_name),
        revision: some(&w.canonical_revision),
    }
}

#[cfg(test)]
mod tests;
