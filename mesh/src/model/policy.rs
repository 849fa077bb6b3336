//! L4 authorization policies (`istio.security.Authorization`), named `<namespace>/<name>`.
//!
//! Structure: a policy matches when any [`Rule`] matches; a rule matches when every
//! [`Clause`] matches; a clause matches when any [`Match`] matches; a match matches when every
//! field it sets matches (values within a field are OR-ed, `not_*` fields match when none of
//! their values do). Evaluation lives elsewhere; the helpers here ([`StringMatch::matches`],
//! [`Cidr::contains`]) are its building blocks.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ip_from_bytes, ip_to_bytes, port, proto_enum, required, ModelError};

/// An L4 authorization policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// Policy namespace; with [`PolicyScope::Namespace`] it applies to this namespace.
    pub namespace: String,
    /// Which workloads it applies to.
    pub scope: PolicyScope,
    /// Allow or deny what matches.
    pub action: PolicyAction,
    /// Rules, OR-ed. A policy without rules matches nothing.
    pub rules: Vec<Rule>,
    /// Evaluate and report only; never enforce.
    pub dry_run: bool,
}

impl Policy {
    /// The key and xDS resource name: `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

proto_enum! {
    /// Which workloads a policy applies to.
    PolicyScope <=> proto::security::Scope {
        /// Every workload of the mesh.
        #[default]
        Global = Global,
        /// Every workload of the policy's namespace.
        Namespace = Namespace,
        /// Workloads that list the policy in their `authorization_policies`.
        WorkloadSelector = WorkloadSelector,
    }
}

proto_enum! {
    /// What a matching policy does.
    PolicyAction <=> proto::security::Action {
        /// Allow matching connections (and, once any ALLOW is in scope, only those).
        #[default]
        Allow = Allow,
        /// Deny matching connections.
        Deny = Deny,
    }
}

/// A rule: every clause must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Clauses, AND-ed.
    pub clauses: Vec<Clause>,
}

/// A clause: any match may match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clause {
    /// Matches, OR-ed.
    pub matches: Vec<Match>,
}

/// One set of conditions on a connection; the fields that are non-empty are AND-ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    /// Source namespace is one of these.
    pub namespaces: Vec<StringMatch>,
    /// Source namespace is none of these.
    pub not_namespaces: Vec<StringMatch>,
    /// Source principal (`td/ns/<ns>/sa/<sa>`) is one of these.
    pub principals: Vec<StringMatch>,
    /// Source principal is none of these.
    pub not_principals: Vec<StringMatch>,
    /// Source IP is in one of these.
    pub source_ips: Vec<Cidr>,
    /// Source IP is in none of these.
    pub not_source_ips: Vec<Cidr>,
    /// Destination IP is in one of these.
    pub destination_ips: Vec<Cidr>,
    /// Destination IP is in none of these.
    pub not_destination_ips: Vec<Cidr>,
    /// Destination port is one of these.
    pub destination_ports: Vec<u16>,
    /// Destination port is none of these.
    pub not_destination_ports: Vec<u16>,
    /// Source service account is one of these.
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Source service account is none of these.
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// An exact service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    /// Namespace of the service account.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
}

/// A string condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// Equal to this.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// Ends with this.
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl StringMatch {
    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// An IP range: an address and a prefix length that fits it (≤ 32 for IPv4, ≤ 128 for IPv6).
///
/// Host bits after the prefix are kept as received and ignored by [`Cidr::contains`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    ip: IpAddr,
    prefix_len: u8,
}

/// Why a CIDR is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The prefix length exceeds the address size.
    #[error("prefix length {len} is longer than the {bits}-bit address {ip}")]
    PrefixTooLong {
        /// The address.
        ip: IpAddr,
        /// The prefix length received.
        len: u32,
        /// Bits in the address: 32 or 128.
        bits: u8,
    },
    /// The text is not `<ip>/<prefix length>` or a bare IP.
    #[error("{0:?} is not a CIDR: expected <ip>/<prefix length> or an IP address")]
    Syntax(String),
}

impl Cidr {
    /// A range, checking that the prefix length fits the address.
    pub fn new(ip: IpAddr, prefix_len: u32) -> Result<Self, CidrError> {
        let bits = bits_of(ip);
        match u8::try_from(prefix_len) {
            Ok(len) if len <= bits => Ok(Cidr {
                ip,
                prefix_len: len,
            }),
            _ => Err(CidrError::PrefixTooLong {
                ip,
                len: prefix_len,
                bits,
            }),
        }
    }

    /// The range holding exactly `ip` (/32 or /128).
    pub fn host(ip: IpAddr) -> Self {
        Cidr {
            ip,
            prefix_len: bits_of(ip),
        }
    }

    /// The address as received.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn bits_of(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || CidrError::Syntax(s.to_string());
        match s.split_once('/') {
            Some((ip, len)) => Cidr::new(
                ip.parse().map_err(|_| syntax())?,
                len.parse().map_err(|_| syntax())?,
            ),
            None => Ok(Cidr::host(s.parse().map_err(|_| syntax())?)),
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl TryFrom<proto::security::Authorization> for Policy {
    type Error = ModelError;

    fn try_from(p: proto::security::Authorization) -> Result<Self, Self::Error> {
        required("name", &p.name)?;
        required("namespace", &p.namespace)?;
        let rules = p
            .rules
            .into_iter()
            .enumerate()
            .map(|(r, rule)| {
                let clauses = rule
                    .clauses
                    .into_iter()
                    .enumerate()
                    .map(|(c, clause)| {
                        let matches = clause
                            .matches
                            .into_iter()
                            .enumerate()
                            .map(|(m, wire)| {
                                match_from_proto(wire).map_err(|e| {
                                    e.within(&format!("rules[{r}].clauses[{c}].matches[{m}]"))
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(Clause { matches })
                    })
                    .collect::<Result<Vec<_>, ModelError>>()?;
                Ok(Rule { clauses })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Policy {
            name: p.name,
            namespace: p.namespace,
            scope: PolicyScope::from_proto(p.scope, "scope")?,
            action: PolicyAction::from_proto(p.action, "action")?,
            rules,
            dry_run: p.dry_run,
        })
    }
}

fn match_from_proto(m: proto::security::Match) -> Result<Match, ModelError> {
    Ok(Match {
        namespaces: strings("namespaces", m.namespaces)?,
        not_namespaces: strings("not_namespaces", m.not_namespaces)?,
        principals: strings("principals", m.principals)?,
        not_principals: strings("not_principals", m.not_principals)?,
        source_ips: cidrs("source_ips", m.source_ips)?,
        not_source_ips: cidrs("not_source_ips", m.not_source_ips)?,
        destination_ips: cidrs("destination_ips", m.destination_ips)?,
        not_destination_ips: cidrs("not_destination_ips", m.not_destination_ips)?,
        destination_ports: ports("destination_ports", &m.destination_ports)?,
        not_destination_ports: ports("not_destination_ports", &m.not_destination_ports)?,
        service_accounts: accounts(m.service_accounts),
        not_service_accounts: accounts(m.not_service_accounts),
    })
}

fn strings(
    field: &str,
    wire: Vec<proto::security::StringMatch>,
) -> Result<Vec<StringMatch>, ModelError> {
    use proto::security::string_match::MatchType;
    wire.into_iter()
        .enumerate()
        .map(|(i, s)| match s.match_type {
            Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v)),
            Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v)),
            Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v)),
            Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
            None => Err(ModelError::Missing {
                field: format!("{field}[{i}].match_type"),
            }),
        })
        .collect()
}

fn cidrs(field: &str, wire: Vec<proto::security::Address>) -> Result<Vec<Cidr>, ModelError> {
    wire.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let ip = ip_from_bytes(&format!("{field}[{i}].address"), &a.address)?;
            Cidr::new(ip, a.length).map_err(|source| ModelError::Cidr {
                field: format!("{field}[{i}].length"),
                source,
            })
        })
        .collect()
}

fn ports(field: &str, wire: &[u32]) -> Result<Vec<u16>, ModelError> {
    wire.iter()
        .enumerate()
        .map(|(i, p)| port(&format!("{field}[{i}]"), *p))
        .collect()
}

fn accounts(wire: Vec<proto::security::ServiceAccountMatch>) -> Vec<ServiceAccountMatch> {
    wire.into_iter()
        .map(|s| ServiceAccountMatch {
            namespace: s.namespace,
            service_account: s.service_account,
        })
        .collect()
}

impl From<&Policy> for proto::security::Authorization {
    fn from(p: &Policy) -> Self {
        proto::security::Authorization {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            scope: p.scope.to_proto(),
            action: p.action.to_proto(),
            rules: p
                .rules
                .iter()
                .map(|r| proto::security::Rule {
                    clauses: r
                        .clauses
                        .iter()
                        .map(|c| proto::security::Clause {
                            matches: c.matches.iter().map(match_to_proto).collect(),
                        })
                        .collect(),
                })
                .collect(),
            dry_run: p.dry_run,
        }
    }
}

fn match_to_proto(m: &Match) -> proto::security::Match {
    use proto::security::string_match::MatchType;
    let strings = |v: &[StringMatch]| {
        v.iter()
            .map(|s| proto::security::StringMatch {
                match_type: Some(match s {
                    StringMatch::Exact(v) => MatchType::Exact(v.clone()),
                    StringMatch::Prefix(v) => MatchType::Prefix(v.clone()),
                    StringMatch::Suffix(v) => MatchType::Suffix(v.clone()),
                    StringMatch::Presence => MatchType::Presence(()),
                }),
            })
            .collect()
    };
    let cidrs = |v: &[Cidr]| {
        v.iter()
            .map(|c| proto::security::Address {
                address: ip_to_bytes(c.ip),
                length: u32::from(c.prefix_len),
            })
            .collect()
    };
    let ports = |v: &[u16]| v.iter().map(|p| u32::from(*p)).collect();
    let accounts = |v: &[ServiceAccountMatch]| {
        v.iter()
            .map(|s| proto::security::ServiceAccountMatch {
                namespace: s.namespace.clone(),
                service_account: s.service_account.clone(),
            })
            .collect()
    };
    proto::security::Match {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: cidrs(&m.source_ips),
        not_source_ips: cidrs(&m.not_source_ips),
        destination_ips: cidrs(&m.destination_ips),
        not_destination_ips: cidrs(&m.not_destination_ips),
        destination_ports: ports(&m.destination_ports),
        not_destination_ports: ports(&m.not_destination_ports),
        service_accounts: accounts(&m.service_accounts),
        not_service_accounts: accounts(&m.not_service_accounts),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    /// A policy using every kind of condition, for round-trip and store tests.
    pub(crate) fn sample(namespace: &str, name: &str, scope: PolicyScope) -> Policy {
        Policy {
            name: name.into(),
            namespace: namespace.into(),
            scope,
            action: PolicyAction::Deny,
            rules: vec![Rule {
                clauses: vec![
                    Clause {
                        matches: vec![Match {
                            namespaces: vec![StringMatch::Exact("default".into())],
                            not_namespaces: vec![StringMatch::Prefix("kube-".into())],
                            principals: vec![StringMatch::Suffix("/sa/sleep".into())],
                            not_principals: vec![StringMatch::Presence],
                            source_ips: vec![cidr("10.0.0.0/8"), cidr("fd00::/64")],
                            not_source_ips: vec![cidr("10.1.2.3")],
                            destination_ips: vec![cidr("0.0.0.0/0")],
                            not_destination_ips: vec![cidr("::1/128")],
                            destination_ports: vec![80, 443],
                            not_destination_ports: vec![15008],
                            service_accounts: vec![ServiceAccountMatch {
                                namespace: "default".into(),
                                service_account: "sleep".into(),
                            }],
                            not_service_accounts: vec![],
                        }],
                    },
                    Clause {
                        matches: vec![Match::default(), Match::default()],
                    },
                ],
            }],
            dry_run: true,
        }
    }

    fn wire() -> proto::security::Authorization {
        (&sample("ns", "p", PolicyScope::Namespace)).into()
    }

    #[test]
    fn round_trips_model_to_proto_and_back() {
        let p = sample("ns", "deny-all", PolicyScope::WorkloadSelector);
        assert_eq!(p.key(), "ns/deny-all");
        let wire = proto::security::Authorization::from(&p);
        let m = &wire.rules[0].clauses[0].matches[0];
        assert_eq!(m.source_ips[0].address, vec![10, 0, 0, 0]);
        assert_eq!(m.source_ips[0].length, 8);
        assert_eq!(m.not_source_ips[0].length, 32);
        assert_eq!(Policy::try_from(wire), Ok(p));
    }

    #[test]
    fn cidr_prefix_length_must_fit_the_address() {
        let v4 = "10.0.0.0".parse().expect("ip");
        let v6 = "fd00::".parse().expect("ip");
        assert!(Cidr::new(v4, 32).is_ok());
        assert!(Cidr::new(v4, 0).is_ok());
        assert!(matches!(
            Cidr::new(v4, 33),
            Err(CidrError::PrefixTooLong {
                bits: 32,
                len: 33,
                ..
            })
        ));
        assert!(Cidr::new(v6, 128).is_ok());
        assert!(Cidr::new(v6, 129).is_err());
        assert!(Cidr::new(v6, 1 << 20).is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert_eq!(cidr("10.1.0.0/16").to_string(), "10.1.0.0/16");
    }

    #[test]
    fn cidr_contains_masks_host_bits_and_families() {
        let net = cidr("10.1.2.3/16");
        assert!(net.contains("10.1.200.1".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.0.9".parse().expect("ip")));
        assert!(!net.contains("fd00::1".parse().expect("ip")));
        assert!(cidr("0.0.0.0/0").contains("192.168.1.1".parse().expect("ip")));
        assert!(cidr("::/0").contains("fd00::1".parse().expect("ip")));
        assert!(cidr("fd00::/64").contains("fd00::abcd".parse().expect("ip")));
        assert!(!cidr("fd00::/64").contains("fd00:0:0:1::1".parse().expect("ip")));
        assert!(cidr("10.0.0.1").contains("10.0.0.1".parse().expect("ip")));
        assert!(!cidr("10.0.0.1").contains("10.0.0.2".parse().expect("ip")));
    }

    #[test]
    fn string_matches() {
        assert!(StringMatch::Exact("a".into()).matches("a"));
        assert!(!StringMatch::Exact("a".into()).matches("ab"));
        assert!(StringMatch::Prefix("a".into()).matches("ab"));
        assert!(StringMatch::Suffix("b".into()).matches("ab"));
        assert!(StringMatch::Presence.matches("x"));
        assert!(!StringMatch::Presence.matches(""));
    }

    #[test]
    fn rejects_bad_fields_with_their_path() {
        type Mutate = fn(&mut proto::security::Match);
        let at = "rules[0].clauses[0].matches[0]";
        let cases: [(Mutate, &str); 5] = [
            (|m| m.source_ips[1].length = 129, "source_ips[1].length"),
            (
                |m| m.not_destination_ips[0].address = vec![1, 2],
                "not_destination_ips[0].address",
            ),
            (|m| m.destination_ports[1] = 70_000, "destination_ports[1]"),
            (
                |m| m.principals[0].match_type = None,
                "principals[0].match_type",
            ),
            (|m| m.source_ips[0].length = 33, "source_ips[0].length"),
        ];
        for (mutate, field) in cases {
            let mut p = wire();
            mutate(&mut p.rules[0].clauses[0].matches[0]);
            let err = Policy::try_from(p).expect_err(field);
            assert_eq!(err.field(), format!("{at}.{field}"), "{err}");
        }
        let mut p = wire();
        p.action = 5;
        assert_eq!(Policy::try_from(p).expect_err("action").field(), "action");
        let mut p = wire();
        p.name.clear();
        assert_eq!(Policy::try_from(p).expect_err("name").field(), "name");
        let mut p = wire();
        p.namespace.clear();
        assert_eq!(
            Policy::try_from(p).expect_err("namespace").field(),
            "namespace"
        );
    }

    #[test]
    fn serializes_cidrs_as_text() {
        let p = sample("ns", "p", PolicyScope::Global);
        let json = serde_json::to_value(&p).expect("json");
        let m = &json["rules"][0]["clauses"][0]["matches"][0];
        assert_eq!(m["sourceIps"][0], "10.0.0.0/8");
        assert_eq!(json["action"], "DENY");
        let back: Policy = serde_json::from_value(json).expect("parse");
        assert_eq!(back, p);
    }
}
