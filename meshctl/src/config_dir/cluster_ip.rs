//! Cluster IPs for Services, as the API server hands them out: a Service applied without
//! `spec.clusterIP` gets a free address of the service CIDR, written back into the stored
//! object (`clusterIP` and `clusterIPs`); one applied again keeps the address it has; an
//! explicit address must be in the CIDR and not held by another Service; a Service's address
//! never changes (delete the Service to change it). `None` (headless) is kept as is;
//! `ExternalName` Services get no address.
//!
//! The local cluster had no service CIDR before (ztunnel resolves VIPs itself, nothing routes
//! them), so it uses Kubernetes' default, 10.96.0.0/16 (apart from the pod CIDRs 10.244.i.0/24
//! and the underlay 10.250.0.0/24). The first address is left out, as Kubernetes keeps it for
//! the `kubernetes` Service. A new Service's first candidate is a hash of its
//! `<namespace>/<name>`, so a deleted and re-created Service usually gets its old address back;
//! collisions take the next free address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{Map as Mapping, Value};

/// The service CIDR's network address.
pub const SERVICE_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
/// The service CIDR's prefix length.
pub const SERVICE_PREFIX: u8 = 16;

/// The service CIDR as text, for messages and docs.
pub fn service_cidr() -> String {
    format!("{SERVICE_NETWORK}/{SERVICE_PREFIX}")
}

/// The cluster IPs in use, by Service (`<namespace>/<name>` → its `clusterIP`).
#[derive(Debug, Clone, Default)]
pub(super) struct ClusterIps {
    by_service: BTreeMap<String, String>,
}

impl ClusterIps {
    /// Records the address a stored Service holds (`None` for headless is recorded too: the
    /// Service keeps it).
    pub(super) fn record(&mut self, service: &str, ip: &str) {
        self.by_service.insert(service.to_string(), ip.to_string());
    }

    /// The Service holding `ip`, other than `except`.
    fn holder(&self, ip: &str, except: &str) -> Option<&str> {
        self.by_service
            .iter()
            .find(|(svc, held)| held.as_str() == ip && svc.as_str() != except)
            .map(|(svc, _)| svc.as_str())
    }

    /// Gives Service `service` (`<namespace>/<name>`, its document `object`) its cluster IP:
    /// the one it asks for, the one it has, or a free one; writes it into `spec.clusterIP`
    /// and `spec.clusterIPs` and records it. The error names the field and why.
    pub(super) fn assign(&mut self, service: &str, object: &mut Value) -> Result<(), String> {
        let Some(root) = object.as_object_mut() else {
            return Err("not a mapping".into());
        };
        let spec = root
            .entry("spec")
            .or_insert_with(|| Value::Object(Mapping::new()));
        if spec.is_null() {
            *spec = Value::Object(Mapping::new());
        }
        let Some(spec) = spec.as_object_mut() else {
            return Err("spec must be a mapping".into());
        };
        if spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
            return Ok(());
        }
        let requested = requested_ip(spec)?;
        let stored = self.by_service.get(service).cloned();
        let ip = match (requested, stored) {
            (Some(asked), Some(held)) if asked != held => {
                return Err(format!(
                    "spec.clusterIP: {asked:?} cannot replace {held:?}: a Service's cluster IP \
                     never changes (delete the Service first)"
                ))
            }
            (Some(asked), _) => {
                if asked != "None" {
                    check_in_cidr(&asked)?;
                    if let Some(other) = self.holder(&asked, service) {
                        return Err(format!(
                            "spec.clusterIP: {asked} is already allocated to Service {other}"
                        ));
                    }
                }
                asked
            }
            (None, Some(held)) => held,
            (None, None) => self.free_ip(service)?.to_string(),
        };
        spec.insert("clusterIP".into(), ip.as_str().into());
        spec.insert("clusterIPs".into(), Value::Array(vec![ip.as_str().into()]));
        self.record(service, &ip);
        Ok(())
    }

    /// A free address for `service`: its hash's slot, else the next free one.
    fn free_ip(&self, service: &str) -> Result<Ipv4Addr, String> {
        let base = u32::from(SERVICE_NETWORK);
        // Offsets 2 ..= size-2: not the network, not the `kubernetes` Service's .1, not the
        // broadcast address.
        let size = 1u32 << (32 - SERVICE_PREFIX);
        let slots = size - 3;
        let start = u32::try_from(fnv1a(service.as_bytes()) % u64::from(slots)).unwrap_or(0);
        for i in 0..slots {
            let ip = Ipv4Addr::from(base + 2 + (start + i) % slots);
            if self.holder(&ip.to_string(), service).is_none() {
                return Ok(ip);
            }
        }
        Err(format!(
            "no free cluster IP left in the service CIDR {}",
            service_cidr()
        ))
    }
}

/// The address the document asks for, if any: `clusterIP`, or `clusterIPs[0]` (both must
/// agree when both are given).
fn requested_ip(spec: &Mapping<String, Value>) -> Result<Option<String>, String> {
    let single = match spec.get("clusterIP") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("spec.clusterIP must be a string".into()),
    };
    let first = match spec.get("clusterIPs") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ips)) => match ips.first() {
            None => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => return Err("spec.clusterIPs[0] must be a non-empty string".into()),
        },
        Some(_) => return Err("spec.clusterIPs must be a list".into()),
    };
    match (single, first) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "spec.clusterIPs[0] ({b}) must equal spec.clusterIP ({a})"
        )),
        (a, b) => Ok(a.or(b)),
    }
}

fn check_in_cidr(ip: &str) -> Result<(), String> {
    let Ok(addr) = ip.parse::<Ipv4Addr>() else {
        return Err(format!(
            "spec.clusterIP: {ip:?} is not an IPv4 address or \"None\" (the local cluster is \
             IPv4 only)"
        ));
    };
    let mask = u32::MAX << (32 - SERVICE_PREFIX);
    if u32::from(addr) & mask != u32::from(SERVICE_NETWORK) {
        return Err(format!(
            "spec.clusterIP: {ip} is not in the service CIDR {} (leave clusterIP out to get one)",
            service_cidr()
        ));
    }
    Ok(())
}

/// FNV-1a, 64 bit: a stable hash (std's is randomized per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: &str) -> Value {
        resources::yaml_parse(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {spec}\n"
        ))
        .expect("yaml")
    }

    fn cluster_ip(v: &Value) -> String {
        v["spec"]["clusterIP"]
            .as_str()
            .expect("clusterIP")
            .to_string()
    }

    #[test]
    fn a_service_without_a_cluster_ip_gets_a_free_one_in_the_cidr_written_back() {
        let mut ips = ClusterIps::default();
        let mut a = service("{ports: [{port: 80}]}");
        ips.assign("demo/a", &mut a).expect("assigned");
        let ip: Ipv4Addr = cluster_ip(&a).parse().expect("an IPv4 address");
        assert_eq!(ip.octets()[..2], [10, 96]);
        assert_ne!(ip, Ipv4Addr::new(10, 96, 0, 1), "kept for `kubernetes`");
        assert_eq!(
            a["spec"]["clusterIPs"][0].as_str(),
            Some(ip.to_string().as_str())
        );
        assert_eq!(
            a["spec"]["ports"][0]["port"].as_u64(),
            Some(80),
            "the rest kept"
        );
        // A spec-less Service gets one too.
        let mut bare: Value =
            resources::yaml_parse("apiVersion: v1\nkind: Service\nmetadata: {name: b}\n")
                .expect("yaml");
        ips.assign("demo/b", &mut bare).expect("assigned");
        assert_ne!(cluster_ip(&bare), ip.to_string(), "unique");
    }

    #[test]
    fn the_same_service_keeps_its_address_and_the_first_candidate_is_stable() {
        let mut first = ClusterIps::default();
        let mut v = service("{}");
        first.assign("demo/web", &mut v).expect("assigned");
        let ip = cluster_ip(&v);
        // Applied again (the stored one is known): same address.
        let mut again = service("{}");
        first.assign("demo/web", &mut again).expect("assigned");
        assert_eq!(cluster_ip(&again), ip);
        // A fresh allocator (Service deleted, re-created) picks the same slot.
        let mut fresh = ClusterIps::default();
        let mut v2 = service("{}");
        fresh.assign("demo/web", &mut v2).expect("assigned");
        assert_eq!(cluster_ip(&v2), ip);
        // Its slot taken by another Service: the next free one, still unique.
        let mut taken = ClusterIps::default();
        taken.record("other/x", &ip);
        let mut v3 = service("{}");
        taken.assign("demo/web", &mut v3).expect("assigned");
        assert_ne!(cluster_ip(&v3), ip);
    }

    #[test]
    fn explicit_addresses_are_checked() {
        let mut ips = ClusterIps::default();
        ips.record("demo/a", "10.96.0.10");
        let mut dup = service("{clusterIP: 10.96.0.10}");
        let err = ips.assign("demo/b", &mut dup).expect_err("in use");
        assert_eq!(
            err,
            "spec.clusterIP: 10.96.0.10 is already allocated to Service demo/a"
        );
        let mut own = service("{clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10]}");
        ips.assign("demo/a", &mut own).expect("its own address");
        let mut change = service("{clusterIP: 10.96.0.11}");
        let err = ips.assign("demo/a", &mut change).expect_err("immutable");
        assert!(err.contains("never changes"), "{err}");
        let mut outside = service("{clusterIP: 10.0.0.1}");
        let err = ips.assign("demo/c", &mut outside).expect_err("outside");
        assert!(
            err.contains("not in the service CIDR 10.96.0.0/16"),
            "{err}"
        );
        let mut garbage = service("{clusterIP: ten}");
        assert!(ips.assign("demo/c", &mut garbage).is_err());
        let mut mismatch = service("{clusterIP: 10.96.0.20, clusterIPs: [10.96.0.21]}");
        assert!(ips.assign("demo/c", &mut mismatch).is_err());
        let mut ok = service("{clusterIPs: [10.96.0.20]}");
        ips.assign("demo/c", &mut ok).expect("free and in range");
        assert_eq!(cluster_ip(&ok), "10.96.0.20");
    }

    #[test]
    fn headless_and_external_name_services_get_no_address() {
        let mut ips = ClusterIps::default();
        let mut headless = service("{clusterIP: None}");
        ips.assign("demo/h", &mut headless).expect("headless");
        assert_eq!(cluster_ip(&headless), "None");
        let mut external = service("{type: ExternalName, externalName: example.com}");
        ips.assign("demo/e", &mut external).expect("external");
        assert!(external["spec"].get("clusterIP").is_none());
    }
}
