//! Resource versions and deltas: each resource's bytes and version, and what a proxy must be
//! sent to hold the current snapshot.
//!
//! A resource's version is the first 128 bits of the SHA-256 of its encoded body, in hex. The
//! encoding is canonical: prost writes map fields in `HashMap` order, which differs between
//! processes, so `Workload.services` entries are written sorted by key (a protobuf decoder
//! accepts map entries in any order and position). Identical content therefore has the
//! identical version across restarts, and a proxy that reconnects to a restarted control plane
//! is sent only what really changed.

use std::collections::BTreeMap;

use prost::Message;
use proto::discovery::Resource;
use ring::digest::{digest, Context, SHA256};
use tokio::time::Instant;

use super::{ResourceType, XdsSnapshot};

/// Hex digits of a resource version (128 bits).
const VERSION_HEX_LEN: usize = 32;
/// Hex digits of a type's system version (64 bits).
const SYSTEM_VERSION_HEX_LEN: usize = 16;

/// The version of a resource whose canonical encoding is `encoded`.
pub fn version_of(encoded: &[u8]) -> String {
    hex(digest(&SHA256, encoded).as_ref(), VERSION_HEX_LEN)
}

/// `Workload.services` (field 22) entries, written as a protobuf map field in key order.
#[derive(Clone, PartialEq, Message)]
struct SortedServices {
    #[prost(message, repeated, tag = "22")]
    entries: Vec<ServicesEntry>,
}

/// One map entry: `key = 1`, `value = 2`, as protobuf encodes maps.
#[derive(Clone, PartialEq, Message)]
struct ServicesEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<proto::workload::PortList>,
}

/// `Address { workload = 1 }` with the workload already encoded: a bytes field and an
/// embedded message are the same on the wire.
#[derive(Clone, PartialEq, Message)]
struct EncodedWorkloadAddress {
    #[prost(bytes = "vec", tag = "1")]
    workload: Vec<u8>,
}

/// Encodes an `Address` canonically (a workload's services in key order).
pub fn encode_address(address: &proto::workload::Address) -> Vec<u8> {
    use proto::workload::address::Type;
    match &address.r#type {
        Some(Type::Workload(workload)) if workload.services.len() > 1 => {
            let mut rest = workload.clone();
            let services = std::mem::take(&mut rest.services);
            let mut entries: Vec<ServicesEntry> = services
                .into_iter()
                .map(|(key, value)| ServicesEntry {
                    key,
                    value: Some(value),
                })
                .collect();
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            let mut bytes = rest.encode_to_vec();
            bytes.extend(SortedServices { entries }.encode_to_vec());
            EncodedWorkloadAddress { workload: bytes }.encode_to_vec()
        }
        // Without a map of two or more entries, prost's encoding is deterministic.
        _ => address.encode_to_vec(),
    }
}

/// Encodes any message without map fields (prost's encoding is then deterministic).
pub fn encode_plain<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

/// Encodes an `Authorization` (no map fields: prost's encoding is deterministic).
pub fn encode_authorization(authorization: &proto::security::Authorization) -> Vec<u8> {
    authorization.encode_to_vec()
}

/// One type's resources, encoded and versioned, ready to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeResources {
    resources: BTreeMap<String, Resource>,
    system_version: String,
}

impl TypeResources {
    /// Builds the wire resources of one type from (name, canonical bytes) pairs.
    fn new(type_url: &str, encoded: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let resources: BTreeMap<String, Resource> = encoded
            .into_iter()
            .map(|(name, value)| {
                let resource = Resource {
                    name: name.clone(),
                    version: version_of(&value),
                    resource: Some(prost_types::Any {
                        type_url: type_url.to_string(),
                        value,
                    }),
                    ..Default::default()
                };
                (name, resource)
            })
            .collect();
        let mut context = Context::new(&SHA256);
        for (name, resource) in &resources {
            context.update(name.as_bytes());
            context.update(&[0]);
            context.update(resource.version.as_bytes());
            context.update(&[0]);
        }
        let system_version = hex(context.finish().as_ref(), SYSTEM_VERSION_HEX_LEN);
        TypeResources {
            resources,
            system_version,
        }
    }

    /// The resource named `name`.
    pub fn get(&self, name: &str) -> Option<&Resource> {
        self.resources.get(name)
    }

    /// The version of the resource named `name`.
    pub fn version(&self, name: &str) -> Option<&str> {
        self.resources.get(name).map(|r| r.version.as_str())
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// A digest of every (name, version): equal for equal content. Sent as
    /// `system_version_info`.
    pub fn system_version(&self) -> &str {
        &self.system_version
    }

    /// Every resource, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Resource)> {
        self.resources.iter()
    }
}

/// A snapshot encoded and versioned once, shared by every stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreparedSnapshot {
    /// Counts the snapshots published since start (0 = the first).
    pub generation: u64,
    /// When the first change folded into this snapshot arrived (`None` for the first
    /// snapshot): the start of the push latency.
    pub changed_at: Option<Instant>,
    types: [TypeResources; 5],
}

impl PreparedSnapshot {
    /// Encodes and versions every resource of `snapshot`.
    pub fn prepare(snapshot: &XdsSnapshot, generation: u64, changed_at: Option<Instant>) -> Self {
        let addresses = TypeResources::new(
            proto::ADDRESS_TYPE_URL,
            snapshot
                .addresses
                .iter()
                .map(|(name, a)| (name.clone(), encode_address(a))),
        );
        let authorizations = TypeResources::new(
            proto::AUTHORIZATION_TYPE_URL,
            snapshot
                .authorizations
                .iter()
                .map(|(name, a)| (name.clone(), encode_authorization(a))),
        );
        let l7_policies = TypeResources::new(
            proto::L7_POLICY_TYPE_URL,
            snapshot
                .l7_policies
                .iter()
                .map(|(name, p)| (name.clone(), encode_plain(p))),
        );
        let request_authns = TypeResources::new(
            proto::REQUEST_AUTHN_TYPE_URL,
            snapshot
                .request_authns
                .iter()
                .map(|(name, r)| (name.clone(), encode_plain(r))),
        );
        // No map fields in ServiceRoutes: prost's encoding is deterministic.
        let routes = TypeResources::new(
            proto::ROUTES_TYPE_URL,
            snapshot
                .routes
                .iter()
                .map(|(name, r)| (name.clone(), r.encode_to_vec())),
        );
        PreparedSnapshot {
            generation,
            changed_at,
            types: [
                addresses,
                authorizations,
                l7_policies,
                request_authns,
                routes,
            ],
        }
    }

    /// The resources of one type.
    pub fn of(&self, kind: ResourceType) -> &TypeResources {
        &self.types[kind.index()]
    }

    /// Whether both hold the same resources at the same versions.
    pub fn same_content(&self, other: &PreparedSnapshot) -> bool {
        ResourceType::ALL
            .into_iter()
            .all(|t| self.of(t).system_version() == other.of(t).system_version())
    }
}

/// What a proxy must be sent, for one type, to hold the current resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Resources it lacks or holds at another version.
    pub upserts: Vec<Resource>,
    /// Names it holds that no longer exist.
    pub removes: Vec<String>,
}

impl Delta {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty()
    }
}

/// A change the proxy refused (NACKed): the version it was sent, or `None` for a removal.
/// Not sent again while it is still what the snapshot wants.
pub type Refused = BTreeMap<String, Option<String>>;

/// Forgets refusals that no longer describe what `current` wants for that name: once the
/// resource changed again (or came back as the proxy holds it), the refusal is moot.
pub fn prune_refused(refused: &mut Refused, current: &TypeResources) {
    refused.retain(|name, version| current.version(name) == version.as_deref());
}

/// What a proxy holding `held` (name → version) must be sent to hold `current`, leaving out
/// what it refused.
pub fn diff(held: &BTreeMap<String, String>, refused: &Refused, current: &TypeResources) -> Delta {
    let upserts = current
        .iter()
        .filter(|(name, resource)| {
            held.get(*name) != Some(&resource.version)
                && refused.get(*name) != Some(&Some(resource.version.clone()))
        })
        .map(|(_, resource)| resource.clone())
        .collect();
    let removes = held
        .keys()
        .filter(|name| current.get(name).is_none() && refused.get(*name) != Some(&None))
        .cloned()
        .collect();
    Delta { upserts, removes }
}

fn hex(bytes: &[u8], digits: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(digits);
    for b in bytes.iter().take(digits.div_ceil(2)) {
        // Writing into a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use proto::workload::{address, Address, Port, PortList, Workload};

    pub(crate) fn workload(uid: &str, services: &[&str]) -> Address {
        Address {
            r#type: Some(address::Type::Workload(Workload {
                uid: uid.into(),
                name: "pod".into(),
                namespace: "ns".into(),
                addresses: vec![vec![10, 0, 0, 1]],
                services: services
                    .iter()
                    .map(|s| {
                        (
                            s.to_string(),
                            PortList {
                                ports: vec![Port {
                                    service_port: 80,
                                    target_port: 8080,
                                    app_protocol: 0,
                                }],
                            },
                        )
                    })
                    .collect(),
                ..Default::default()
            })),
        }
    }

    fn snapshot(addresses: &[(&str, Address)]) -> XdsSnapshot {
        XdsSnapshot {
            addresses: addresses
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect(),
            authorizations: BTreeMap::new(),
            ..Default::default()
        }
    }

    #[test]
    fn canonical_encoding_decodes_to_the_same_message_and_ignores_map_order() {
        let services: Vec<String> = (0..20).map(|i| format!("ns/svc-{i}.ns.svc")).collect();
        let names: Vec<&str> = services.iter().map(String::as_str).collect();
        let a = workload("w", &names);
        let mut reversed = names.clone();
        reversed.reverse();
        let b = workload("w", &reversed);
        let bytes = encode_address(&a);
        assert_eq!(bytes, encode_address(&b));
        assert_eq!(Address::decode(bytes.as_slice()).unwrap(), a);
        // Rebuilding the HashMap (new random order) gives the same version.
        for _ in 0..5 {
            assert_eq!(version_of(&encode_address(&a.clone())), version_of(&bytes));
        }
        let one = workload("w", &["ns/a"]);
        assert_eq!(encode_address(&one), one.encode_to_vec());
    }

    #[test]
    fn versions_follow_content_only() {
        let a = PreparedSnapshot::prepare(&snapshot(&[("w", workload("w", &["x"]))]), 0, None);
        let b = PreparedSnapshot::prepare(&snapshot(&[("w", workload("w", &["x"]))]), 7, None);
        let c = PreparedSnapshot::prepare(&snapshot(&[("w", workload("w", &["y"]))]), 1, None);
        let t = ResourceType::Address;
        assert_eq!(a.of(t).version("w"), b.of(t).version("w"));
        assert_ne!(a.of(t).version("w"), c.of(t).version("w"));
        assert_eq!(a.of(t).version("w").map(str::len), Some(VERSION_HEX_LEN));
        assert!(a.same_content(&b));
        assert!(!a.same_content(&c));
        let r = a.of(t).get("w").unwrap();
        assert_eq!(r.name, "w");
        assert_eq!(
            r.resource.as_ref().map(|a| a.type_url.as_str()),
            Some(proto::ADDRESS_TYPE_URL)
        );
    }

    #[test]
    fn diff_sends_changes_and_removals_but_not_refusals() {
        let current = PreparedSnapshot::prepare(
            &snapshot(&[
                ("same", workload("same", &[])),
                ("changed", workload("changed", &["new"])),
                ("added", workload("added", &[])),
            ]),
            1,
            None,
        );
        let current = current.of(ResourceType::Address);
        let held: BTreeMap<String, String> = [
            ("same", current.version("same").unwrap()),
            ("changed", "old"),
            ("gone", "v"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let delta = diff(&held, &Refused::new(), current);
        let names: Vec<&str> = delta.upserts.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["added", "changed"]);
        assert_eq!(delta.removes, ["gone"]);

        // Refused at these very versions (and the removal refused): nothing to send.
        let mut refused: Refused = [
            ("added", current.version("added").map(String::from)),
            ("changed", current.version("changed").map(String::from)),
            ("gone", None),
            ("stale", Some("v0".to_string())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        prune_refused(&mut refused, current);
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(diff(&held, &refused, current).is_empty());

        // Refused an older version: the new one is sent.
        let refused: Refused = [("changed".to_string(), Some("older".to_string()))].into();
        let delta = diff(&held, &refused, current);
        assert!(delta.upserts.iter().any(|r| r.name == "changed"));
    }
}
