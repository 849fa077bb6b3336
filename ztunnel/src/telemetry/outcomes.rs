//! Connection failures by reason and authorization decisions by policy: bounded label sets,
//! counters resolved once so recording is an atomic add.

use mesh::metrics::Reporter;
use mesh::rbac::{Decision, DecisionReason};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Which way a connection goes, seen from the captured pod.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// To the pod (ztunnel reports as `destination`).
    inbound,
    /// From the pod (ztunnel reports as `source`).
    outbound,
}

impl Direction {
    /// Both directions, in index order.
    pub const ALL: [Direction; 2] = [Direction::inbound, Direction::outbound];

    /// The direction of a connection ztunnel reports as `reporter`.
    pub fn of(reporter: Reporter) -> Self {
        match reporter {
            Reporter::destination => Direction::inbound,
            Reporter::source => Direction::outbound,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::inbound => "inbound",
            Direction::outbound => "outbound",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a connection could not be set up. A bounded set: every value is exported from the
/// start, so dashboards and alerts see zeros rather than missing series.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FailureReason {
    /// Refused by policy (ours, the destination's, or a waypoint bypass).
    denied,
    /// The next hop (application, passthrough destination, HBONE endpoint) refused or was
    /// unreachable.
    upstream_connect,
    /// A service with no healthy endpoint, or a waypoint with no healthy instance.
    no_healthy_upstream,
    /// Mutual TLS could not be set up, including no certificate to present.
    tls_handshake,
    /// The HBONE tunnel failed: HTTP/2 errors, a refused CONNECT.
    hbone,
    /// The target is not ours to serve (another pod's address, an unknown workload).
    unknown_destination,
    /// A connect or handshake deadline passed.
    timeout,
    /// The pod already had `--max-connections-per-pod` live connections.
    connection_limit,
    /// Anything else (the pod left as the connection arrived, no original destination).
    other,
}

impl FailureReason {
    /// Every reason, in index order.
    pub const ALL: [FailureReason; 9] = [
        FailureReason::denied,
        FailureReason::upstream_connect,
        FailureReason::no_healthy_upstream,
        FailureReason::tls_handshake,
        FailureReason::hbone,
        FailureReason::unknown_destination,
        FailureReason::timeout,
        FailureReason::connection_limit,
        FailureReason::other,
    ];

    /// The reason for a failed HBONE connect.
    pub fn of_hbone(e: &mesh::hbone::HboneError) -> Self {
        use mesh::hbone::HboneError as E;
        match e {
            E::Connect { source, .. } => FailureReason::of_io(source),
            E::Tls { .. } | E::Alpn | E::NoCertificate(_) => FailureReason::tls_handshake,
            E::Status(s) if *s == http::StatusCode::UNAUTHORIZED => FailureReason::denied,
            E::Status(s) if *s == http::StatusCode::FORBIDDEN => FailureReason::denied,
            E::Status(_) | E::H2(_) | E::Refused(_) => FailureReason::hbone,
            E::Timeout(_) => FailureReason::timeout,
            E::PoolClosed => FailureReason::other,
        }
    }

    /// The reason for a failed TCP connect.
    pub fn of_io(e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::TimedOut {
            FailureReason::timeout
        } else {
            FailureReason::upstream_connect
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    direction: Direction,
    reason: FailureReason,
}

/// `ztunnel_connection_failures_total{direction,reason}`: one counter per pair, resolved at
/// start.
#[derive(Debug, Clone)]
pub struct Failures {
    counters: [[Counter; FailureReason::ALL.len()]; Direction::ALL.len()],
}

impl Failures {
    /// Registers the family with every series at zero.
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<FailureLabels, Counter>::default();
        let counters = Direction::ALL.map(|direction| {
            FailureReason::ALL
                .map(|reason| family.get_or_create_owned(&FailureLabels { direction, reason }))
        });
        registry.register(
            "ztunnel_connection_failures",
            "Connections ztunnel could not set up, by direction and reason",
            family,
        );
        Failures { counters }
    }

    /// Counts one failed connection.
    pub fn record(&self, direction: Direction, reason: FailureReason) {
        self.counters[direction.index()][reason.index()].inc();
    }
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Verdict {
    allow,
    deny,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    namespace: String,
    policy: String,
    decision: Verdict,
}

/// `ztunnel_authorization_decisions_total{namespace,policy,decision}`. The policy is bounded
/// by the policies in the cluster; `default` when no single policy decided (none in scope,
/// none matched).
#[derive(Debug, Clone, Default)]
pub struct Decisions {
    family: Family<DecisionLabels, Counter>,
}

impl Decisions {
    /// Registers the family.
    pub fn register(registry: &mut Registry) -> Self {
        let d = Decisions::default();
        registry.register(
            "ztunnel_authorization_decisions",
            "L4 authorization decisions on new connections, by destination namespace, deciding policy and decision",
            d.family.clone(),
        );
        d
    }

    /// Counts the decision on a connection to a workload in `namespace`.
    pub fn record(&self, namespace: &str, decision: &Decision) {
        let policy = match &decision.reason {
            DecisionReason::DeniedBy { policy, .. } | DecisionReason::AllowedBy { policy, .. } => {
                policy.clone()
            }
            DecisionReason::NoAllowMatched { .. }
            | DecisionReason::NoAllowPolicies
            | DecisionReason::NoPolicies => "default".to_string(),
        };
        let labels = DecisionLabels {
            namespace: namespace.to_string(),
            policy,
            decision: if decision.allowed {
                Verdict::allow
            } else {
                Verdict::deny
            },
        };
        self.family.get_or_create(&labels).inc();
    }
}
