//! `GET /debug/syncz` on the monitoring port: every connected proxy and, per resource type,
//! the version and nonce last sent and last ACKed, and whether it is synced, stale or NACKed
//! (with the proxy's error). Istio's `/debug/syncz` answers the same question (per proxy,
//! per type `SYNCED`, `NOT_SENT`, `STALE` or `ERROR`); `meshctl proxy-status` prints it.
//!
//! Each stream registers its [`Connection`] here for as long as it lives; the endpoint locks
//! each one briefly to read it (the stream task never holds that lock across an await).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::connection::{Connection, Sent, SyncStatus};
use super::ResourceType;

/// A connection shared by its stream task and the registry.
pub type SharedConnection = Arc<Mutex<Connection>>;

/// Locks a stream's connection; a panic elsewhere does not hide the state.
pub fn lock(c: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// One open stream.
struct Entry {
    node: String,
    peer: String,
    proxy: String,
    connected_since: SystemTime,
    connection: SharedConnection,
}

/// The open streams, by stream id.
#[derive(Default)]
pub struct Streams {
    entries: Mutex<BTreeMap<u64, Entry>>,
}

/// Removes its stream from [`Streams`] when dropped.
pub struct Registration {
    streams: Arc<Streams>,
    id: u64,
}

impl Registration {
    /// Records the proxy id the stream's requests name.
    pub fn set_proxy(&self, proxy: &str) {
        if let Some(e) = self.streams.lock().get_mut(&self.id) {
            e.proxy = proxy.to_string();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.id);
    }
}

/// Where one proxy stands on one type, as `/debug/syncz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    /// `address`, `authorization`, `l7_policy`, `request_authn` or `routes`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The type URL.
    pub type_url: &'static str,
    /// `SYNCED`, `STALE`, `NACK` or `NOT_SENT`.
    pub config_status: SyncStatus,
    /// The type's current version at istiod-lite.
    pub istiod_version: String,
    /// `system_version_info` of the last response sent.
    pub sent_version: Option<String>,
    /// Its nonce.
    pub sent_nonce: Option<String>,
    /// `system_version_info` of the last response ACKed.
    pub acked_version: Option<String>,
    /// Its nonce.
    pub acked_nonce: Option<String>,
    /// The proxy's error in its last NACK (until a later ACK).
    pub error: Option<String>,
    /// Resources the proxy holds.
    pub resources: usize,
}

/// One connected proxy, as `/debug/syncz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyStatus {
    /// The proxy id its requests name (`-` before the first says).
    pub proxy: String,
    /// The node its token was issued for.
    pub node: String,
    /// `ztunnel` or `waypoint` (it subscribes to the waypoint types).
    pub kind: &'static str,
    /// The stream's id (in istiod-lite's logs).
    pub stream: u64,
    /// The proxy's address.
    pub peer: String,
    /// When the stream opened, unix seconds.
    pub connected_since_unix: u64,
    /// Per type served.
    pub xds: Vec<TypeStatus>,
}

impl Streams {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers stream `id` of `node` from `peer` until the returned guard drops.
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        node: &str,
        peer: &str,
        connection: SharedConnection,
    ) -> Registration {
        self.lock().insert(
            id,
            Entry {
                node: node.to_string(),
                peer: peer.to_string(),
                proxy: "-".into(),
                connected_since: SystemTime::now(),
                connection,
            },
        );
        Registration {
            streams: self.clone(),
            id,
        }
    }

    /// Every open stream, by proxy id then stream id.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let mut out: Vec<ProxyStatus> = self
            .lock()
            .iter()
            .map(|(id, e)| {
                let c = lock(&e.connection);
                let waypoint = [
                    ResourceType::L7Policy,
                    ResourceType::RequestAuthn,
                    ResourceType::Routes,
                ]
                .into_iter()
                .any(|t| c.subscribed(t));
                let xds = ResourceType::ALL
                    .into_iter()
                    .map(|t| {
                        let sync = c.sync(t);
                        let (sent_version, sent_nonce) = split(sync.sent);
                        let (acked_version, acked_nonce) = split(sync.acked);
                        TypeStatus {
                            kind: t.label(),
                            type_url: t.type_url(),
                            config_status: sync.status,
                            istiod_version: c.snapshot().of(t).system_version().to_string(),
                            sent_version,
                            sent_nonce,
                            acked_version,
                            acked_nonce,
                            error: sync.error,
                            resources: sync.resources,
                        }
                    })
                    .collect();
                ProxyStatus {
                    proxy: e.proxy.clone(),
                    node: e.node.clone(),
                    kind: if waypoint { "waypoint" } else { "ztunnel" },
                    stream: *id,
                    peer: e.peer.clone(),
                    connected_since_unix: e
                        .connected_since
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    xds,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.proxy, a.stream).cmp(&(&b.proxy, b.stream)));
        out
    }
}

fn split(sent: Option<Sent>) -> (Option<String>, Option<String>) {
    match sent {
        Some(Sent { version, nonce }) => (Some(version), Some(nonce)),
        None => (None, None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::xds::versions::PreparedSnapshot;
    use crate::xds::XdsSnapshot;
    use proto::discovery::DeltaDiscoveryRequest;

    fn subscribe(kind: ResourceType) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            ..Default::default()
        }
    }

    #[test]
    fn streams_are_listed_while_registered_with_kind_and_per_type_status() {
        let streams = Arc::new(Streams::default());
        let snapshot = Arc::new(PreparedSnapshot::prepare(&XdsSnapshot::default(), 0, None));
        let ztunnel: SharedConnection = Arc::new(Mutex::new(Connection::new(
            snapshot.clone(),
            Arc::default(),
        )));
        let waypoint: SharedConnection =
            Arc::new(Mutex::new(Connection::new(snapshot, Arc::default())));
        let z = streams.register(1, "n1", "10.0.0.1:5000", ztunnel.clone());
        z.set_proxy("ztunnel~n1");
        let w = streams.register(2, "n2", "10.0.0.2:5000", waypoint.clone());
        w.set_proxy("waypoint~shop");

        let (_, out) = lock(&ztunnel).on_request(subscribe(ResourceType::Address));
        let out = out.unwrap();
        lock(&ztunnel).on_request(DeltaDiscoveryRequest {
            type_url: out.response.type_url.clone(),
            response_nonce: out.response.nonce.clone(),
            ..Default::default()
        });
        lock(&waypoint).on_request(subscribe(ResourceType::Routes));

        let all = streams.status();
        assert_eq!(all.len(), 2);
        let (w_status, z_status) = (&all[0], &all[1]);
        assert_eq!(
            (
                z_status.proxy.as_str(),
                z_status.node.as_str(),
                z_status.kind
            ),
            ("ztunnel~n1", "n1", "ztunnel")
        );
        assert_eq!(w_status.kind, "waypoint");
        let address = &z_status.xds[ResourceType::Address.index()];
        assert_eq!(address.config_status, SyncStatus::Synced);
        assert_eq!(
            address.acked_nonce.as_deref(),
            Some(out.response.nonce.as_str())
        );
        assert_eq!(
            address.acked_version.as_deref(),
            Some(address.istiod_version.as_str())
        );
        assert_eq!(
            z_status.xds[ResourceType::Routes.index()].config_status,
            SyncStatus::NotSent
        );
        assert_eq!(
            w_status.xds[ResourceType::Routes.index()].config_status,
            SyncStatus::Stale
        );
        let json = serde_json::to_value(&all).unwrap();
        assert_eq!(json[1]["xds"][0]["config_status"], "SYNCED");
        assert_eq!(json[1]["xds"][0]["type"], "address");

        drop(z);
        assert_eq!(streams.status().len(), 1, "a closed stream is not listed");
        drop(w);
        assert!(streams.status().is_empty());
    }
}
