//! One delta ADS stream's state, without IO: what the proxy holds, what it refused, what is in
//! flight; requests and snapshots in, responses out.
//!
//! Per type:
//! - the first request subscribes (wildcard) and says what the proxy already holds
//!   (`initial_resource_versions`); it is always answered, even with nothing, so the proxy
//!   can ACK and count itself synced;
//! - at most one response is in flight; changes that come meanwhile wait and are folded into
//!   the next response, computed against the latest snapshot when the ACK or NACK arrives;
//! - an ACK (the in-flight nonce, no `error_detail`) makes the response's content held;
//! - a NACK (the in-flight nonce with `error_detail`) leaves what is held as it was, and
//!   remembers every change of that response as refused: it is not sent again until the
//!   snapshot wants something else for that name (mesh's client refuses a response as a whole,
//!   so a good resource that shared a response with a bad one waits for its next change, or
//!   for the next stream, too);
//! - a request with another nonce is stale and ignored, as is a later request without a nonce
//!   (a subscription change: everything is already subscribed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proto::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::time::Instant;

use super::versions::{diff, prune_refused, PreparedSnapshot, Refused};
use super::ResourceType;

/// Makes nonces unique per response: a random per-process prefix and a counter.
#[derive(Debug)]
pub struct NonceSource {
    prefix: String,
    next: AtomicU64,
}

impl NonceSource {
    /// A source with a random prefix, so nonces of different runs differ too.
    pub fn new() -> Self {
        let mut bytes = [0u8; 4];
        // A failing system RNG leaves the prefix zero: nonces stay unique within the process.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        NonceSource {
            prefix: format!("{:08x}", u32::from_be_bytes(bytes)),
            next: AtomicU64::new(1),
        }
    }

    /// The next nonce.
    pub fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Default for NonceSource {
    fn default() -> Self {
        Self::new()
    }
}

/// What a request was, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The first request of a type: subscribed to everything of that type.
    Subscribed {
        /// The type.
        kind: ResourceType,
        /// How many resources the proxy said it holds.
        initial_resources: usize,
        /// How many names it asked for explicitly (treated as a wildcard anyway).
        explicit_names: usize,
    },
    /// The in-flight response was accepted.
    Ack {
        /// The type.
        kind: ResourceType,
        /// Its nonce.
        nonce: String,
    },
    /// The in-flight response was rejected.
    Nack {
        /// The type.
        kind: ResourceType,
        /// Its nonce.
        nonce: String,
        /// The gRPC code the proxy gave.
        code: i32,
        /// Why, in the proxy's words.
        message: String,
    },
    /// A nonce that is not the one in flight (an old or unknown response): ignored.
    Stale {
        /// The type.
        kind: ResourceType,
        /// The nonce received.
        nonce: String,
    },
    /// A later request without a nonce (a subscription change): ignored, all is subscribed.
    Resubscribe {
        /// The type.
        kind: ResourceType,
    },
    /// A type we do not serve: ignored.
    UnknownType {
        /// The type URL received.
        type_url: String,
    },
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its type.
    pub kind: ResourceType,
    /// The response.
    pub response: DeltaDiscoveryResponse,
    /// When the earliest snapshot change it carries arrived; `None` for the answer to a
    /// subscription.
    pub changed_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    /// Name → version the proxy holds (ACKed, or declared when subscribing).
    held: BTreeMap<String, String>,
    /// Changes the proxy NACKed, not to be sent again while still wanted.
    refused: Refused,
    in_flight: Option<InFlight>,
    /// When the earliest change not yet sent arrived.
    pending_since: Option<Instant>,
    /// The last response sent, and the last one ACKed (`/debug/syncz`).
    sent: Option<Sent>,
    acked: Option<Sent>,
    /// The last NACK's nonce and message; cleared by the next ACK.
    nack: Option<(String, String)>,
}

/// A response's `system_version_info` and nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The type's version when it was sent.
    pub version: String,
    /// Its nonce.
    pub nonce: String,
}

/// Whether a proxy holds the current resources of a type (`/debug/syncz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncStatus {
    /// It never asked for this type.
    NotSent,
    /// It ACKed everything it was sent and holds the current resources.
    Synced,
    /// A response awaits its ACK, or a change is not sent yet.
    Stale,
    /// It refused the last response of this type (Istio's syncz calls this `ERROR`).
    Nack,
}

/// Where one proxy stands on one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSync {
    /// Synced, stale, NACKed or never asked.
    pub status: SyncStatus,
    /// The last response sent.
    pub sent: Option<Sent>,
    /// The last response ACKed.
    pub acked: Option<Sent>,
    /// The proxy's words in the last NACK, until a later ACK.
    pub error: Option<String>,
    /// Resources it holds.
    pub resources: usize,
}

#[derive(Debug)]
struct InFlight {
    nonce: String,
    version: String,
    upserts: Vec<(String, String)>,
    removes: Vec<String>,
}

/// The state of one stream.
#[derive(Debug)]
pub struct Connection {
    snapshot: Arc<PreparedSnapshot>,
    types: [TypeState; 5],
    nonces: Arc<NonceSource>,
}

impl Connection {
    /// A stream that will serve `snapshot` (and later ones) once subscribed.
    pub fn new(snapshot: Arc<PreparedSnapshot>, nonces: Arc<NonceSource>) -> Self {
        Connection {
            snapshot,
            types: Default::default(),
            nonces,
        }
    }

    /// Handles one request; returns what it was and the response to send, if any.
    pub fn on_request(&mut self, request: DeltaDiscoveryRequest) -> (Received, Option<Outgoing>) {
        let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
            return (
                Received::UnknownType {
                    type_url: request.type_url,
                },
                None,
            );
        };
        let state = &mut self.types[kind.index()];
        if !state.subscribed {
            state.subscribed = true;
            state.held = request.initial_resource_versions.into_iter().collect();
            let received = Received::Subscribed {
                kind,
                initial_resources: state.held.len(),
                explicit_names: request.resource_names_subscribe.len(),
            };
            return (received, self.push(kind, true));
        }
        let nonce = request.response_nonce;
        if nonce.is_empty() {
            return (Received::Resubscribe { kind }, None);
        }
        let flight = match state.in_flight.take() {
            Some(flight) if flight.nonce == nonce => flight,
            other => {
                state.in_flight = other;
                return (Received::Stale { kind, nonce }, None);
            }
        };
        let sent = Sent {
            version: flight.version.clone(),
            nonce: nonce.clone(),
        };
        let received = match request.error_detail {
            Some(status) => {
                state.nack = Some((nonce.clone(), status.message.clone()));
                for (name, version) in flight.upserts {
                    state.refused.insert(name, Some(version));
                }
                for name in flight.removes {
                    state.refused.insert(name, None);
                }
                Received::Nack {
                    kind,
                    nonce,
                    code: status.code,
                    message: status.message,
                }
            }
            None => {
                for (name, version) in flight.upserts {
                    state.refused.remove(&name);
                    state.held.insert(name, version);
                }
                for name in flight.removes {
                    state.refused.remove(&name);
                    state.held.remove(&name);
                }
                state.acked = Some(sent);
                state.nack = None;
                Received::Ack { kind, nonce }
            }
        };
        (received, self.push(kind, false))
    }

    /// Moves to a new snapshot; returns the responses to send now (types with nothing in
    /// flight and something changed).
    pub fn on_snapshot(&mut self, snapshot: Arc<PreparedSnapshot>) -> Vec<Outgoing> {
        let previous = std::mem::replace(&mut self.snapshot, snapshot);
        let mut out = Vec::new();
        // Policies before addresses: a workload that starts naming a new policy must never reach
        // a proxy before the policy itself (it would be enforced without it for a moment).
        for kind in [
            ResourceType::RequestAuthn,
            ResourceType::L7Policy,
            ResourceType::Authorization,
            ResourceType::Address,
            // Routes last: they name services and backends that must be known first.
            ResourceType::Routes,
        ] {
            let state = &mut self.types[kind.index()];
            if !state.subscribed {
                continue;
            }
            let changed =
                previous.of(kind).system_version() != self.snapshot.of(kind).system_version();
            if let (true, Some(at)) = (changed, self.snapshot.changed_at) {
                state.pending_since.get_or_insert(at);
            }
            out.extend(self.push(kind, false));
        }
        out
    }

    /// Whether a response of this type awaits its ACK or NACK.
    pub fn in_flight(&self, kind: ResourceType) -> bool {
        self.types[kind.index()].in_flight.is_some()
    }

    /// Where the proxy stands on `kind`: NACK while its last refusal is not followed by an
    /// ACK; stale while a response is in flight or the current snapshot has changes for it;
    /// else synced.
    pub fn sync(&self, kind: ResourceType) -> TypeSync {
        let state = &self.types[kind.index()];
        let status = if !state.subscribed {
            SyncStatus::NotSent
        } else if state.in_flight.is_some() {
            SyncStatus::Stale
        } else if state.nack.is_some() {
            SyncStatus::Nack
        } else if diff(&state.held, &state.refused, self.snapshot.of(kind)).is_empty() {
            SyncStatus::Synced
        } else {
            SyncStatus::Stale
        };
        TypeSync {
            status,
            sent: state.sent.clone(),
            acked: state.acked.clone(),
            error: state.nack.as_ref().map(|(_, message)| message.clone()),
            resources: state.held.len(),
        }
    }

    /// Whether the proxy ever asked for `kind`.
    pub fn subscribed(&self, kind: ResourceType) -> bool {
        self.types[kind.index()].subscribed
    }

    /// The snapshot the stream is being brought to.
    pub fn snapshot(&self) -> &PreparedSnapshot {
        &self.snapshot
    }

    /// Name → version the proxy holds, as far as we know.
    pub fn held(&self, kind: ResourceType) -> &BTreeMap<String, String> {
        &self.types[kind.index()].held
    }

    /// The response that brings the proxy to the current snapshot, unless one is in flight or
    /// there is nothing to send (and `always` is false).
    fn push(&mut self, kind: ResourceType, always: bool) -> Option<Outgoing> {
        let current = self.snapshot.of(kind);
        let state = &mut self.types[kind.index()];
        if state.in_flight.is_some() {
            return None;
        }
        prune_refused(&mut state.refused, current);
        let delta = diff(&state.held, &state.refused, current);
        if delta.is_empty() {
            state.pending_since = None;
            if !always {
                return None;
            }
        }
        let nonce = self.nonces.next();
        state.sent = Some(Sent {
            version: current.system_version().to_string(),
            nonce: nonce.clone(),
        });
        state.in_flight = Some(InFlight {
            nonce: nonce.clone(),
            version: current.system_version().to_string(),
            upserts: delta
                .upserts
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect(),
            removes: delta.removes.clone(),
        });
        let changed_at = state.pending_since.take();
        Some(Outgoing {
            kind,
            response: DeltaDiscoveryResponse {
                system_version_info: current.system_version().to_string(),
                type_url: kind.type_url().to_string(),
                resources: delta.upserts,
                removed_resources: delta.removes,
                nonce,
                ..Default::default()
            },
            changed_at,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::xds::versions::tests::workload;
    use crate::xds::XdsSnapshot;

    fn prepared(names: &[(&str, &[&str])], generation: u64) -> Arc<PreparedSnapshot> {
        let snapshot = XdsSnapshot {
            addresses: names
                .iter()
                .map(|(n, s)| (n.to_string(), workload(n, s)))
                .collect(),
            ..Default::default()
        };
        Arc::new(PreparedSnapshot::prepare(
            &snapshot,
            generation,
            Some(Instant::now()),
        ))
    }

    fn subscribe(kind: ResourceType, initial: &[(&str, &str)]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: kind.type_url().into(),
            initial_resource_versions: initial
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn ack(out: &Outgoing) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: out.response.type_url.clone(),
            response_nonce: out.response.nonce.clone(),
            ..Default::default()
        }
    }

    fn nack(out: &Outgoing) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            error_detail: Some(proto::google::rpc::Status {
                code: 3,
                message: "bad".into(),
                details: vec![],
            }),
            ..ack(out)
        }
    }

    fn names(out: &Outgoing) -> Vec<&str> {
        out.response
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect()
    }

    const A: ResourceType = ResourceType::Address;

    #[test]
    fn policies_go_out_before_the_addresses_that_name_them() {
        let mut c = Connection::new(prepared(&[], 0), Arc::default());
        for kind in ResourceType::ALL {
            let (_, out) = c.on_request(subscribe(kind, &[]));
            c.on_request(ack(&out.unwrap()));
        }
        let mut snapshot = XdsSnapshot {
            addresses: [("w1".to_string(), workload("w1", &[]))].into(),
            ..Default::default()
        };
        snapshot.authorizations.insert(
            "ns/p".into(),
            proto::security::Authorization {
                name: "p".into(),
                namespace: "ns".into(),
                ..Default::default()
            },
        );
        let both = Arc::new(PreparedSnapshot::prepare(
            &snapshot,
            1,
            Some(Instant::now()),
        ));
        let out = c.on_snapshot(both);
        let order: Vec<&str> = out.iter().map(|o| o.response.type_url.as_str()).collect();
        assert_eq!(
            order,
            [proto::AUTHORIZATION_TYPE_URL, proto::ADDRESS_TYPE_URL]
        );
    }

    #[test]
    fn subscription_is_always_answered_and_only_one_response_is_in_flight() {
        let mut c = Connection::new(prepared(&[], 0), Arc::default());
        let (received, out) = c.on_request(subscribe(ResourceType::Authorization, &[]));
        assert!(matches!(received, Received::Subscribed { .. }));
        let out = out.unwrap();
        assert!(out.response.resources.is_empty() && out.changed_at.is_none());

        let (_, first) = c.on_request(subscribe(A, &[]));
        let first = first.unwrap();
        // Changes while the first response is in flight wait for its ACK...
        assert!(c.on_snapshot(prepared(&[("w1", &[])], 1)).is_empty());
        assert!(c
            .on_snapshot(prepared(&[("w1", &[]), ("w2", &[])], 2))
            .is_empty());
        // ...and then go out together.
        let (received, next) = c.on_request(ack(&first));
        assert!(matches!(received, Received::Ack { .. }));
        let next = next.unwrap();
        assert_eq!(names(&next), ["w1", "w2"]);
        assert!(next.changed_at.is_some());
        assert_ne!(next.response.nonce, first.response.nonce);
        let (_, none) = c.on_request(ack(&next));
        assert!(none.is_none());
        assert_eq!(c.held(A).len(), 2);
    }

    #[test]
    fn reconnect_sends_only_the_difference() {
        let snap = prepared(&[("same", &[]), ("changed", &["x"]), ("new", &[])], 0);
        let same_version = snap.of(A).version("same").unwrap().to_string();
        let mut c = Connection::new(snap, Arc::default());
        let (_, out) = c.on_request(subscribe(
            A,
            &[("same", &same_version), ("changed", "old"), ("gone", "v")],
        ));
        let out = out.unwrap();
        assert_eq!(names(&out), ["changed", "new"]);
        assert_eq!(out.response.removed_resources, ["gone"]);
    }

    #[test]
    fn nack_keeps_the_previous_state_and_does_not_resend_the_same_content() {
        let mut c = Connection::new(prepared(&[("w1", &["a"])], 0), Arc::default());
        let (_, out) = c.on_request(subscribe(A, &[]));
        let out = out.unwrap();
        c.on_request(ack(&out));
        let v1 = c.held(A)["w1"].clone();

        let out = c.on_snapshot(prepared(&[("w1", &["bad"])], 1)).remove(0);
        let (received, again) = c.on_request(nack(&out));
        assert!(matches!(received, Received::Nack { code: 3, .. }));
        assert!(again.is_none(), "the refused content is not sent again");
        assert_eq!(c.held(A)["w1"], v1);
        // An unrelated snapshot does not resend it either.
        assert!(c.on_snapshot(prepared(&[("w1", &["bad"])], 2)).is_empty());

        // A later change of that resource is sent.
        let out = c.on_snapshot(prepared(&[("w1", &["good"])], 3)).remove(0);
        assert_eq!(names(&out), ["w1"]);
        c.on_request(ack(&out));
        assert_ne!(c.held(A)["w1"], v1);
    }

    #[test]
    fn refused_removal_is_not_repeated() {
        let mut c = Connection::new(prepared(&[("w1", &[])], 0), Arc::default());
        let (_, out) = c.on_request(subscribe(A, &[]));
        c.on_request(ack(&out.unwrap()));
        let out = c.on_snapshot(prepared(&[], 1)).remove(0);
        assert_eq!(out.response.removed_resources, ["w1"]);
        let (_, again) = c.on_request(nack(&out));
        assert!(again.is_none());
        assert!(c.held(A).contains_key("w1"));
    }

    #[test]
    fn stale_nonces_resubscriptions_and_unknown_types_are_ignored() {
        let mut c = Connection::new(prepared(&[("w1", &[])], 0), Arc::default());
        let (_, out) = c.on_request(subscribe(A, &[]));
        let out = out.unwrap();
        let mut stale = ack(&out);
        stale.response_nonce = "nope".into();
        assert!(matches!(
            c.on_request(stale),
            (Received::Stale { .. }, None)
        ));
        assert!(c.in_flight(A));
        assert!(matches!(
            c.on_request(subscribe(A, &[])),
            (Received::Resubscribe { .. }, None)
        ));
        let unknown = DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/other".into(),
            ..Default::default()
        };
        assert!(matches!(
            c.on_request(unknown),
            (Received::UnknownType { .. }, None)
        ));
        assert!(matches!(
            c.on_request(ack(&out)),
            (Received::Ack { .. }, None)
        ));
    }

    #[test]
    fn sync_status_follows_sends_acks_and_nacks() {
        let mut c = Connection::new(prepared(&[("w1", &["a"])], 0), Arc::default());
        assert_eq!(c.sync(A).status, SyncStatus::NotSent);
        let (_, out) = c.on_request(subscribe(A, &[]));
        let out = out.unwrap();
        let sync = c.sync(A);
        assert_eq!(sync.status, SyncStatus::Stale, "in flight");
        assert_eq!(sync.sent.as_ref().unwrap().nonce, out.response.nonce);
        assert_eq!(sync.acked, None);
        c.on_request(ack(&out));
        let sync = c.sync(A);
        assert_eq!(sync.status, SyncStatus::Synced);
        assert_eq!(sync.acked, sync.sent);
        assert_eq!(
            sync.acked.unwrap().version,
            out.response.system_version_info
        );
        assert_eq!(sync.resources, 1);

        let bad = c.on_snapshot(prepared(&[("w1", &["bad"])], 1)).remove(0);
        c.on_request(nack(&bad));
        let sync = c.sync(A);
        assert_eq!(sync.status, SyncStatus::Nack);
        assert_eq!(sync.error.as_deref(), Some("bad"));
        assert_eq!(
            sync.acked.unwrap().nonce,
            out.response.nonce,
            "still the old ACK"
        );

        let good = c.on_snapshot(prepared(&[("w1", &["good"])], 2)).remove(0);
        c.on_request(ack(&good));
        let sync = c.sync(A);
        assert_eq!((sync.status, sync.error), (SyncStatus::Synced, None));
        assert_eq!(
            sync.acked.unwrap().version,
            good.response.system_version_info
        );
    }

    #[test]
    fn nonces_are_unique() {
        let nonces = NonceSource::new();
        let all: std::collections::BTreeSet<String> = (0..1000).map(|_| nonces.next()).collect();
        assert_eq!(all.len(), 1000);
    }
}
