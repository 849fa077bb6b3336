//! The per-pod proxy: three listeners inside the pod's network namespace.
//!
//! - 15001 ([`outbound`]): the pod's outgoing TCP, redirected by the capture rules; carried as
//!   HBONE to the destination (or passed through when the destination is not in the mesh).
//! - 15006 ([`inbound`]): plaintext arriving from outside the mesh, redirected to us.
//! - 15008 ([`inbound`]): HBONE from other tunnels.
//!
//! Every socket ztunnel opens in the pod namespace carries mark 0x539 so the capture rules let
//! it pass, and leaves with the pod's own IP. Every connection proxied for the pod is registered
//! in [`live`] under the pod's key, so policy changes and the pod's removal can close it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh::capture::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT, ZTUNNEL_MARK};
use mesh::cert_manager::CertManager;
use mesh::hbone::{ConnectFuture, Connector, PoolStats};
use mesh::model::Workload;
use mesh::store::Store;
use mesh::Identity;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::netns::Netns;
use crate::telemetry::{PodConnections, Telemetry};
use hop::{Hop, SocketSettings};
use source::Source;

pub mod authz;
pub mod hop;
pub mod inbound;
pub mod limits;
pub mod live;
pub mod outbound;
pub mod same_node;
pub mod source;
pub mod waypoint;

/// What every pod proxy shares.
#[derive(Clone)]
pub struct ProxyInputs {
    /// Process configuration.
    pub config: Arc<Config>,
    /// Workloads, services and policies from the control plane.
    pub store: Store,
    /// Certificates per identity.
    pub certs: Arc<CertManager>,
    /// Metrics and access logs.
    pub telemetry: Arc<Telemetry>,
    /// ztunnel's own network namespace, to return to after creating pod sockets.
    pub home: Netns,
    /// Every live connection by pod: re-checked when policy changes, drained when its pod goes.
    pub live: Arc<live::LiveConnections>,
    /// Node-wide counters of every pod's HBONE pool.
    pub pool_stats: PoolStats,
    /// Descriptor, per-pod and set-up limits ([`limits`]).
    pub limits: Arc<limits::Limits>,
    /// Keepalive and congestion control of pod sockets, by [`Hop`].
    pub sockets: SocketSettings,
    /// The pods served now, for connections between two of them ([`same_node`]).
    pub served: Arc<same_node::ServedPods>,
}

/// The pod a proxy serves.
#[derive(Debug, Clone)]
pub struct PodContext {
    /// Its workload uid (the xDS resource name); shared, as every connection carries it.
    pub uid: Arc<str>,
    /// Its identity (from ZDS workload info, or from the store).
    pub identity: Identity,
    /// Its network namespace.
    pub netns: Netns,
    /// Keepalive and congestion control of every socket opened for it, by [`Hop`].
    pub sockets: SocketSettings,
    /// Its connection counts (`ztunnel_connections_*`), resolved once for the pod.
    pub metrics: Arc<PodConnections>,
    /// Its place under `--max-connections-per-pod`, resolved once for the pod.
    pub cap: limits::PodCap,
}

impl PodContext {
    /// The pod's workload, when the control plane has told us about it.
    pub fn workload(&self, store: &Store) -> Option<Arc<Workload>> {
        store.workload(&self.uid)
    }

    /// Where a tunnel to or from `ip` (looked up on the pod's network) ends: [`Hop::Node`] when
    /// that is a workload on `node`.
    pub fn tunnel_hop(&self, store: &Store, ip: IpAddr, node: &str) -> Hop {
        let src = self.workload(store);
        let network = src.as_deref().map_or("", |w| w.network.as_str());
        hop::toward(store, network, ip, node)
    }

    /// The key its connections are registered under.
    pub fn key(&self) -> live::PodKey {
        live::PodKey {
            uid: self.uid.clone(),
            netns: self.netns.inode(),
        }
    }

    /// Creates a TCP socket inside the pod namespace toward `hop`, marked so it is not captured.
    pub fn socket(&self, home: &Netns, v6: bool, hop: Hop) -> io::Result<Socket> {
        self.netns.run(home, || {
            let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
            // Non-blocking from creation: two fewer syscalls per connection than fcntl after.
            let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
            socket.set_mark(ZTUNNEL_MARK)?;
            socket.set_tcp_nodelay(true)?;
            self.sockets.apply(&socket, hop)?;
            Ok(socket)
        })
    }

    /// Binds a listener on `port` (all addresses) inside the pod namespace, whose clients are
    /// at `hop`. Accepted connections inherit its no-delay, keepalive and congestion control
    /// (no setsockopt per accept).
    pub fn listen(&self, home: &Netns, port: u16, hop: Hop) -> io::Result<TcpListener> {
        let socket = self.netns.run(home, || {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_mark(ZTUNNEL_MARK)?;
            socket.set_tcp_nodelay(true)?;
            self.sockets.apply(&socket, hop)?;
            socket.set_reuse_address(true)?;
            // A restarted ztunnel binds beside the old one before it goes away.
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
            socket.listen(1024)?;
            Ok(socket)
        })?;
        TcpListener::from_std(socket.into())
    }

    /// Connects from inside the pod namespace to `dst` at `hop` from `source`, or from the next
    /// source when the kernel refuses that one's address or port ([`source`] says why and in
    /// what order).
    pub async fn connect(
        &self,
        home: &Netns,
        dst: SocketAddr,
        hop: Hop,
        mut source: Source,
    ) -> io::Result<TcpStream> {
        loop {
            let socket = self.socket(home, dst.is_ipv6(), hop)?;
            let error = match source.bind(&socket) {
                Ok(()) => {
                    let socket = TcpSocket::from_std_stream(socket.into());
                    match socket.connect(dst).await {
                        Err(e) if source::is_address_clash(&e) => e,
                        done => return done,
                    }
                }
                Err(e) => e,
            };
            let Some(next) = source.fallback() else {
                return Err(error);
            };
            tracing::debug!(error = %error, ?source, %dst, "source refused; trying the next");
            source = next;
        }
    }
}

/// HBONE's TCP connections, opened from inside the source pod's namespace.
pub struct PodConnector {
    pod: PodContext,
    home: Netns,
    store: Store,
    /// For this node's name: a tunnel to a workload on it is a [`Hop::Node`].
    config: Arc<Config>,
}

impl Connector for PodConnector {
    fn connect(&self, dst: SocketAddr, _src_ip: Option<IpAddr>) -> ConnectFuture<'_> {
        let hop = self
            .pod
            .tunnel_hop(&self.store, dst.ip(), &self.config.node_name);
        Box::pin(self.pod.connect(&self.home, dst, hop, Source::Pod))
    }
}

/// A running pod proxy. Dropping it stops the listeners at once and drains the pod's live
/// connections: those still open after the configured drain period are closed, unless the same
/// pod (uid and network namespace) is started again before that.
pub struct PodProxy {
    pod: PodContext,
    shutdown: watch::Sender<Stop>,
    tasks: Vec<JoinHandle<()>>,
    live: Arc<live::LiveConnections>,
    served: Arc<same_node::ServedPods>,
    /// The drain period of its live connections once stopped; `None`: ztunnel itself is
    /// stopping and closes them at its own drain deadline.
    drain: Option<Duration>,
}

impl std::fmt::Debug for PodProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodProxy")
            .field("uid", &self.pod.uid)
            .field("identity", &self.pod.identity.to_string())
            .field("netns_inode", &self.pod.netns.inode())
            .finish()
    }
}

impl PodProxy {
    /// Binds 15001, 15006 and 15008 in the pod's namespace and starts serving.
    pub fn start(inputs: &ProxyInputs, pod: PodContext) -> io::Result<PodProxy> {
        // 15001's clients are the pod's own applications; 15006's and 15008's are elsewhere.
        let outbound_listener = pod.listen(&inputs.home, OUTBOUND_PORT, Hop::App)?;
        let inbound_listener = pod.listen(&inputs.home, INBOUND_PORT, Hop::Network)?;
        let hbone_listener = pod.listen(&inputs.home, HBONE_PORT, Hop::Network)?;
        inputs.certs.prefetch(&pod.identity);
        if let Some(kept) = inputs.live.pod_started(&pod.key()) {
            tracing::info!(uid = %pod.uid, netns = pod.netns.inode(), connections = kept, "pod handed over again before its drain ended; its connections stay");
        }
        inputs.served.serve(&pod);
        let (shutdown, rx) = watch::channel(Stop::Running);
        let tasks = vec![
            tokio::spawn(outbound::serve(
                inputs.clone(),
                pod.clone(),
                outbound_listener,
                rx.clone(),
            )),
            tokio::spawn(inbound::serve_plaintext(
                inputs.clone(),
                pod.clone(),
                inbound_listener,
                rx.clone(),
            )),
            tokio::spawn(inbound::serve_hbone(
                inputs.clone(),
                pod.clone(),
                hbone_listener,
                rx,
            )),
        ];
        tracing::info!(uid = %pod.uid, identity = %pod.identity, netns = pod.netns.inode(), "pod proxy started");
        Ok(PodProxy {
            pod,
            shutdown,
            tasks,
            live: inputs.live.clone(),
            served: inputs.served.clone(),
            drain: Some(inputs.config.pod_drain()),
        })
    }

    /// The pod served.
    pub fn pod(&self) -> &PodContext {
        &self.pod
    }

    /// Stops the proxy as part of ztunnel's own shutdown: listeners close and HBONE
    /// connections get GOAWAY as on a removal, but the live connections get no drain timer of
    /// their own (the shutdown closes them at its deadline).
    pub fn stop_for_shutdown(mut self) {
        self.drain = None;
    }
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        let _ = self.shutdown.send(match self.drain {
            Some(_) => Stop::Removed,
            None => Stop::Shutdown,
        });
        for task in &self.tasks {
            task.abort();
        }
        self.served.leave(&self.pod);
        let key = self.pod.key();
        let draining = match self.drain {
            Some(drain) => self.live.pod_removed(&key, drain),
            None => self.live.pod_stopping(&key),
        };
        let drain_secs = self.drain.map(|d| d.as_secs_f64());
        tracing::info!(uid = %self.pod.uid, netns = self.pod.netns.inode(), draining, drain_secs = ?drain_secs, "pod proxy stopped; new connections refused, live ones drain");
    }
}

/// What a pod proxy's tasks are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Serving.
    Running,
    /// The pod left the mesh: stop accepting; its connections drain for the pod drain period.
    Removed,
    /// ztunnel itself is stopping: stop accepting; connections already accepted are served to
    /// their end (the outbound HBONE pool stays usable for them).
    Shutdown,
}

/// Resolves when `rx` says stop (or its sender is gone).
pub(crate) async fn stopped(mut rx: watch::Receiver<Stop>) {
    while *rx.borrow_and_update() == Stop::Running {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;
    use mesh::tcp_keepalive::TcpKeepalive;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A pod context whose namespace is the test's own (opening sockets needs root, for the
    /// mark, as ztunnel itself does).
    fn own_pod(sockets: SocketSettings) -> PodContext {
        let limits =
            limits::Limits::new(mesh::limits::Acceptor::new(), None, Duration::from_secs(1));
        let uid: Arc<str> = "pod-uid".into();
        PodContext {
            metrics: Telemetry::default().pod(&uid, None),
            cap: limits.pod_cap(&uid),
            identity: "spiffe://cluster.local/ns/default/sa/default"
                .parse()
                .expect("identity"),
            netns: Netns::current().expect("own netns"),
            uid,
            sockets,
        }
    }

    fn keepalive_and_reno() -> SocketSettings {
        SocketSettings {
            keepalive: Some(TcpKeepalive::default()),
            local_congestion: Some("reno".parse().expect("reno")),
        }
    }

    fn congestion(socket: &socket2::SockRef<'_>) -> String {
        let name = socket.tcp_congestion().expect("TCP_CONGESTION");
        String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string()
    }

    #[tokio::test]
    async fn accepted_connections_come_with_the_listeners_settings_already_set() {
        let pod = own_pod(keepalive_and_reno());
        let home = Netns::current().expect("own netns");
        let default = congestion(&socket2::SockRef::from(
            &TcpSocket::new_v4().expect("socket"),
        ));
        for (hop, keepalive, cc) in [
            (Hop::Network, true, default.as_str()),
            (Hop::App, false, "reno"),
        ] {
            let listener = pod.listen(&home, 0, hop).expect("listen");
            let port = listener.local_addr().expect("addr").port();
            let _client = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            let (accepted, _) = listener.accept().await.expect("accept");
            assert!(accepted.nodelay().expect("TCP_NODELAY"), "{hop:?}");
            let socket = socket2::SockRef::from(&accepted);
            assert_eq!(
                socket.keepalive().expect("SO_KEEPALIVE"),
                keepalive,
                "{hop:?}"
            );
            assert_eq!(congestion(&socket), cc, "{hop:?}");
        }
    }

    #[tokio::test]
    async fn connections_to_the_app_take_the_local_congestion_control_and_no_keepalive() {
        let pod = own_pod(keepalive_and_reno());
        let home = Netns::current().expect("own netns");
        let (_listener, dst, _) = listener_and_free_port().await;
        let app = pod
            .connect(&home, dst, Hop::App, Source::Pod)
            .await
            .expect("connect");
        let socket = socket2::SockRef::from(&app);
        assert_eq!(congestion(&socket), "reno");
        assert!(!socket.keepalive().expect("SO_KEEPALIVE"));
    }

    /// A loopback listener and a port on 127.0.0.1 that nothing holds.
    async fn listener_and_free_port() -> (TcpListener, SocketAddr, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let dst = listener.local_addr().expect("addr");
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        (listener, dst, free)
    }

    #[tokio::test]
    async fn the_clients_port_is_kept_and_its_time_wait_taken_over() {
        let pod = own_pod(SocketSettings::default());
        let home = Netns::current().expect("own netns");
        let (listener, dst, client) = listener_and_free_port().await;
        for round in 0..2 {
            let mut app = pod
                .connect(&home, dst, Hop::App, Source::Client(client))
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(app.local_addr().expect("local"), client, "round {round}");
            let (mut accepted, _) = listener.accept().await.expect("accept");
            // We close first, as when the client does: the TIME_WAIT is ours.
            app.shutdown().await.expect("shutdown");
            let mut rest = Vec::new();
            accepted.read_to_end(&mut rest).await.expect("eof");
            drop(accepted);
            app.read_to_end(&mut rest).await.expect("app eof");
        }
    }

    #[tokio::test]
    async fn a_client_port_already_in_use_falls_back_to_the_client_ip() {
        let pod = own_pod(SocketSettings::default());
        let home = Netns::current().expect("own netns");
        let (_listener, dst, _) = listener_and_free_port().await;
        // This 4-tuple is taken: the connection must leave from another port of the same IP.
        let held = TcpStream::connect(dst).await.expect("held");
        let taken = held.local_addr().expect("local");
        let app = pod
            .connect(&home, dst, Hop::App, Source::Client(taken))
            .await
            .expect("fallback connect");
        let local = app.local_addr().expect("local");
        assert_eq!(local.ip(), taken.ip());
        assert_ne!(local.port(), taken.port());
    }
}
