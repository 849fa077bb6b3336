//! The typed L7 policy (`ambient.waypoint.v1.L7Policy`), checked once when converted from the
//! wire: string conditions are [`StringMatch`]es, IP blocks [`Cidr`]s, ports `u16`, `when`
//! keys a [`ConditionKey`] with values of the type that key compares. A conversion failure is a
//! [`ModelError`] naming the field (`rules[0].when[1].key`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{
    check_reference, port, required, Cidr, ModelError, ServiceAccountMatch, StringMatch,
};

use proto::waypoint::{self as wire, l7_policy};

/// Which requests an [`L7Policy`] (or a [`RequestAuthn`](super::RequestAuthn)) applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum L7Scope {
    /// Requests through the named waypoints of the policy's namespace (all of them when none
    /// is named).
    #[default]
    Waypoint,
    /// Requests to the named services.
    Service,
    /// Every request through every waypoint (root namespace, no target).
    Root,
}

impl L7Scope {
    pub(crate) fn from_proto(value: i32, field: &str) -> Result<Self, ModelError> {
        match wire::Scope::try_from(value) {
            Ok(wire::Scope::Waypoint) => Ok(L7Scope::Waypoint),
            Ok(wire::Scope::Service) => Ok(L7Scope::Service),
            Ok(wire::Scope::Root) => Ok(L7Scope::Root),
            Err(_) => Err(ModelError::UnknownEnum {
                field: field.to_string(),
                kind: "ambient.waypoint.v1.Scope",
                value,
            }),
        }
    }

    pub(crate) fn to_proto(self) -> i32 {
        match self {
            L7Scope::Waypoint => wire::Scope::Waypoint as i32,
            L7Scope::Service => wire::Scope::Service as i32,
            L7Scope::Root => wire::Scope::Root as i32,
        }
    }
}

/// Where a policy or RequestAuthn applies: its scope and targets, with the matching rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Target {
    /// The kind of target.
    pub scope: L7Scope,
    /// [`L7Scope::Waypoint`]: waypoint (Gateway) names in the object's namespace; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// [`L7Scope::Service`]: service keys `<namespace>/<hostname>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

/// The waypoint handling a request and the service it is for: what decides which policies
/// apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaypointContext<'a> {
    /// The waypoint's namespace.
    pub namespace: &'a str,
    /// The waypoint's name (its Gateway's name).
    pub name: &'a str,
    /// The destination service's key `<namespace>/<hostname>`, when the request is for a
    /// service.
    pub service: Option<&'a str>,
}

impl L7Target {
    /// Whether an object in `namespace` with this target applies at `at`.
    pub fn applies(&self, namespace: &str, at: &WaypointContext<'_>) -> bool {
        match self.scope {
            L7Scope::Root => true,
            L7Scope::Waypoint => {
                namespace == at.namespace
                    && (self.gateways.is_empty() || self.gateways.iter().any(|g| g == at.name))
            }
            L7Scope::Service => at
                .service
                .is_some_and(|s| self.services.iter().any(|k| k == s)),
        }
    }

    pub(crate) fn from_proto(
        scope: i32,
        gateways: Vec<String>,
        services: Vec<String>,
    ) -> Result<Self, ModelError> {
        let scope = L7Scope::from_proto(scope, "scope")?;
        for (i, s) in services.iter().enumerate() {
            check_reference(&format!("services[{i}]"), s)?;
        }
        for (i, g) in gateways.iter().enumerate() {
            required(&format!("gateways[{i}]"), g)?;
        }
        if scope == L7Scope::Service && services.is_empty() {
            return Err(ModelError::Missing {
                field: "services".into(),
            });
        }
        Ok(L7Target {
            scope,
            gateways,
            services,
        })
    }
}

/// What a matching L7 policy does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum L7Action {
    /// Allow matching requests (and, once any ALLOW applies, only those).
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Mark matching requests for audit; never changes the verdict.
    Audit,
}

/// An L7 authorization policy, named `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Policy {
    /// Policy name.
    pub name: String,
    /// Policy namespace.
    pub namespace: String,
    /// Where it applies.
    pub target: L7Target,
    /// What it does with a matching request.
    pub action: L7Action,
    /// Evaluate and report only; never enforce.
    pub dry_run: bool,
    /// OR-ed. A policy without rules matches nothing.
    pub rules: Vec<L7Rule>,
}

impl L7Policy {
    /// The key and xDS resource name: `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A rule: `from` AND `to` AND `when`; the entries of each OR-ed; an empty part matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Rule {
    /// Who sends the request.
    #[serde(default)]
    pub from: Vec<L7Source>,
    /// What the request is for.
    #[serde(default)]
    pub to: Vec<L7Operation>,
    /// Further conditions, each of which must hold.
    #[serde(default)]
    pub when: Vec<L7Condition>,
}

/// Conditions on the sender; the fields set are AND-ed, the values of one field OR-ed, a
/// `not_` field holds when none of its values does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Source {
    /// Peer principal (`td/ns/<ns>/sa/<sa>`) is one of these.
    #[serde(default)]
    pub principals: Vec<StringMatch>,
    /// Peer principal is none of these.
    #[serde(default)]
    pub not_principals: Vec<StringMatch>,
    /// Peer namespace is one of these.
    #[serde(default)]
    pub namespaces: Vec<StringMatch>,
    /// Peer namespace is none of these.
    #[serde(default)]
    pub not_namespaces: Vec<StringMatch>,
    /// Peer IP is in one of these.
    #[serde(default)]
    pub ip_blocks: Vec<Cidr>,
    /// Peer IP is in none of these.
    #[serde(default)]
    pub not_ip_blocks: Vec<Cidr>,
    /// JWT principal `<iss>/<sub>` is one of these.
    #[serde(default)]
    pub request_principals: Vec<StringMatch>,
    /// JWT principal is none of these.
    #[serde(default)]
    pub not_request_principals: Vec<StringMatch>,
    /// Original client IP is in one of these.
    #[serde(default)]
    pub remote_ip_blocks: Vec<Cidr>,
    /// Original client IP is in none of these.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<Cidr>,
    /// Peer service account is one of these.
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Peer service account is none of these.
    #[serde(default)]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// Conditions on what the request is for; the fields set are AND-ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Operation {
    /// Host, lower-cased, compared with and without the request's port.
    #[serde(default)]
    pub hosts: Vec<StringMatch>,
    /// Host is none of these.
    #[serde(default)]
    pub not_hosts: Vec<StringMatch>,
    /// Destination port is one of these.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Destination port is none of these.
    #[serde(default)]
    pub not_ports: Vec<u16>,
    /// Method is one of these (case-sensitive).
    #[serde(default)]
    pub methods: Vec<StringMatch>,
    /// Method is none of these.
    #[serde(default)]
    pub not_methods: Vec<StringMatch>,
    /// Normalised path (no query) is one of these.
    #[serde(default)]
    pub paths: Vec<StringMatch>,
    /// Normalised path is none of these.
    #[serde(default)]
    pub not_paths: Vec<StringMatch>,
}

/// A request attribute a `when` condition can check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConditionKey {
    /// `request.headers[<name>]` (name lower-cased).
    RequestHeader(String),
    /// `source.ip`: the peer's address.
    SourceIp,
    /// `remote.ip`: the original client's address.
    RemoteIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `request.auth.principal`: `<iss>/<sub>`.
    AuthPrincipal,
    /// `request.auth.audiences`.
    AuthAudiences,
    /// `request.auth.presenter`: the `azp` claim.
    AuthPresenter,
    /// `request.auth.claims[a][b]...`: a claim, nested by each further name.
    AuthClaim(Vec<String>),
}

impl ConditionKey {
    /// The kind of value the key compares.
    fn kind(&self) -> ValueKind {
        match self {
            ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
                ValueKind::Cidr
            }
            ConditionKey::DestinationPort => ValueKind::Port,
            _ => ValueKind::String,
        }
    }
}

/// Parses `name[a][b]` brackets after a known prefix: the names inside, each non-empty.
fn brackets(rest: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        names.push(name.to_string());
        rest = &inner[end + 1..];
    }
    (!names.is_empty()).then_some(names)
}

impl FromStr for ConditionKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = match s {
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            "request.auth.principal" => ConditionKey::AuthPrincipal,
            "request.auth.audiences" => ConditionKey::AuthAudiences,
            "request.auth.presenter" => ConditionKey::AuthPresenter,
            _ => {
                let bad = || format!("{s:?} is not a supported condition key");
                if let Some(rest) = s.strip_prefix("request.headers") {
                    match brackets(rest).as_deref() {
                        Some([name]) => ConditionKey::RequestHeader(name.to_ascii_lowercase()),
                        _ => return Err(bad()),
                    }
                } else if let Some(rest) = s.strip_prefix("request.auth.claims") {
                    ConditionKey::AuthClaim(brackets(rest).ok_or_else(bad)?)
                } else {
                    return Err(bad());
                }
            }
        };
        Ok(key)
    }
}

impl fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConditionKey::RequestHeader(h) => write!(f, "request.headers[{h}]"),
            ConditionKey::SourceIp => f.write_str("source.ip"),
            ConditionKey::RemoteIp => f.write_str("remote.ip"),
            ConditionKey::SourceNamespace => f.write_str("source.namespace"),
            ConditionKey::SourcePrincipal => f.write_str("source.principal"),
            ConditionKey::DestinationIp => f.write_str("destination.ip"),
            ConditionKey::DestinationPort => f.write_str("destination.port"),
            ConditionKey::AuthPrincipal => f.write_str("request.auth.principal"),
            ConditionKey::AuthAudiences => f.write_str("request.auth.audiences"),
            ConditionKey::AuthPresenter => f.write_str("request.auth.presenter"),
            ConditionKey::AuthClaim(path) => {
                f.write_str("request.auth.claims")?;
                for p in path {
                    write!(f, "[{p}]")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Copy)]
enum ValueKind {
    String,
    Cidr,
    Port,
}

/// One value of a `when` condition, typed by its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConditionValue {
    /// A string condition (`x`, `x*`, `*x`, `*`).
    String(StringMatch),
    /// An IP block.
    Cidr(Cidr),
    /// A port.
    Port(u16),
}

impl ConditionValue {
    fn parse(kind: ValueKind, s: &str) -> Result<Self, String> {
        match kind {
            ValueKind::String => Ok(ConditionValue::String(istio_string_match(s))),
            ValueKind::Cidr => s
                .parse()
                .map(ConditionValue::Cidr)
                .map_err(|e: crate::model::CidrError| e.to_string()),
            ValueKind::Port => s
                .parse()
                .map(ConditionValue::Port)
                .map_err(|_| format!("{s:?} is not a port number (0-65535)")),
        }
    }
}

impl fmt::Display for ConditionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConditionValue::String(m) => f.write_str(&istio_string(m)),
            ConditionValue::Cidr(c) => write!(f, "{c}"),
            ConditionValue::Port(p) => write!(f, "{p}"),
        }
    }
}

/// A `when` condition: the attribute holds one of `values` (if any) and none of `not_values`.
/// Serialized as Istio writes it: `{key, values, notValues}` strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCondition", into = "RawCondition")]
pub struct L7Condition {
    /// The attribute.
    pub key: ConditionKey,
    /// It holds one of these.
    pub values: Vec<ConditionValue>,
    /// It holds none of these.
    pub not_values: Vec<ConditionValue>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCondition {
    key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    not_values: Vec<String>,
}

impl From<L7Condition> for RawCondition {
    fn from(c: L7Condition) -> Self {
        RawCondition {
            key: c.key.to_string(),
            values: c.values.iter().map(ToString::to_string).collect(),
            not_values: c.not_values.iter().map(ToString::to_string).collect(),
        }
    }
}

impl TryFrom<RawCondition> for L7Condition {
    type Error = ModelError;

    fn try_from(raw: RawCondition) -> Result<Self, Self::Error> {
        let key: ConditionKey = raw.key.parse().map_err(|reason| ModelError::Invalid {
            field: "key".into(),
            reason,
        })?;
        if raw.values.is_empty() && raw.not_values.is_empty() {
            return Err(ModelError::Missing {
                field: "values".into(),
            });
        }
        let kind = key.kind();
        let parse = |field: &str, values: Vec<String>| {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if v.is_empty() {
                        return Err(ModelError::Missing {
                            field: format!("{field}[{i}]"),
                        });
                    }
                    ConditionValue::parse(kind, v).map_err(|reason| ModelError::Invalid {
                        field: format!("{field}[{i}]"),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(L7Condition {
            values: parse("values", raw.values)?,
            not_values: parse("not_values", raw.not_values)?,
            key,
        })
    }
}

/// Istio's string rules: `*` any non-empty value, `*x` suffix, `x*` prefix, else exact.
pub fn istio_string_match(value: &str) -> StringMatch {
    if value == "*" {
        StringMatch::Presence
    } else if let Some(suffix) = value.strip_prefix('*') {
        StringMatch::Suffix(suffix.to_string())
    } else if let Some(prefix) = value.strip_suffix('*') {
        StringMatch::Prefix(prefix.to_string())
    } else {
        StringMatch::Exact(value.to_string())
    }
}

/// The Istio spelling of a string condition (inverse of [`istio_string_match`]).
pub fn istio_string(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(v) => v.clone(),
        StringMatch::Prefix(v) => format!("{v}*"),
        StringMatch::Suffix(v) => format!("*{v}"),
        StringMatch::Presence => "*".into(),
    }
}

fn string_matches(
    field: &str,
    values: Vec<String>,
    lowercase: bool,
) -> Result<Vec<StringMatch>, ModelError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if v.is_empty() {
                return Err(ModelError::Missing {
                    field: format!("{field}[{i}]"),
                });
            }
            let inner = v.trim_start_matches('*').trim_end_matches('*');
            if v != "*" && (inner.contains('*') || v.matches('*').count() > 1) {
                return Err(ModelError::Invalid {
                    field: format!("{field}[{i}]"),
                    reason: format!(
                        "{v:?} may use `*` only as the whole value, a prefix or a suffix"
                    ),
                });
            }
            let v = if lowercase { v.to_ascii_lowercase() } else { v };
            Ok(istio_string_match(&v))
        })
        .collect()
}

fn cidrs(field: &str, values: Vec<String>) -> Result<Vec<Cidr>, ModelError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.parse().map_err(|source| ModelError::Cidr {
                field: format!("{field}[{i}]"),
                source,
            })
        })
        .collect()
}

fn ports(field: &str, values: &[u32]) -> Result<Vec<u16>, ModelError> {
    values
        .iter()
        .enumerate()
        .map(|(i, p)| port(&format!("{field}[{i}]"), *p))
        .collect()
}

fn accounts(field: &str, values: Vec<String>) -> Result<Vec<ServiceAccountMatch>, ModelError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            check_reference(&format!("{field}[{i}]"), v)?;
            let (ns, sa) = v.split_once('/').unwrap_or_default();
            Ok(ServiceAccountMatch {
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            })
        })
        .collect()
}

fn account_strings(v: &[ServiceAccountMatch]) -> Vec<String> {
    v.iter()
        .map(|s| format!("{}/{}", s.namespace, s.service_account))
        .collect()
}

fn source_from_proto(s: l7_policy::Source) -> Result<L7Source, ModelError> {
    Ok(L7Source {
        principals: string_matches("principals", s.principals, false)?,
        not_principals: string_matches("not_principals", s.not_principals, false)?,
        namespaces: string_matches("namespaces", s.namespaces, false)?,
        not_namespaces: string_matches("not_namespaces", s.not_namespaces, false)?,
        ip_blocks: cidrs("ip_blocks", s.ip_blocks)?,
        not_ip_blocks: cidrs("not_ip_blocks", s.not_ip_blocks)?,
        request_principals: string_matches("request_principals", s.request_principals, false)?,
        not_request_principals: string_matches(
            "not_request_principals",
            s.not_request_principals,
            false,
        )?,
        remote_ip_blocks: cidrs("remote_ip_blocks", s.remote_ip_blocks)?,
        not_remote_ip_blocks: cidrs("not_remote_ip_blocks", s.not_remote_ip_blocks)?,
        service_accounts: accounts("service_accounts", s.service_accounts)?,
        not_service_accounts: accounts("not_service_accounts", s.not_service_accounts)?,
    })
}

fn operation_from_proto(o: l7_policy::Operation) -> Result<L7Operation, ModelError> {
    Ok(L7Operation {
        hosts: string_matches("hosts", o.hosts, true)?,
        not_hosts: string_matches("not_hosts", o.not_hosts, true)?,
        ports: ports("ports", &o.ports)?,
        not_ports: ports("not_ports", &o.not_ports)?,
        methods: string_matches("methods", o.methods, false)?,
        not_methods: string_matches("not_methods", o.not_methods, false)?,
        paths: string_matches("paths", o.paths, false)?,
        not_paths: string_matches("not_paths", o.not_paths, false)?,
    })
}

fn indexed<T, U>(
    field: &str,
    items: Vec<T>,
    convert: impl Fn(T) -> Result<U, ModelError>,
) -> Result<Vec<U>, ModelError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| convert(item).map_err(|e| e.within(&format!("{field}[{i}]"))))
        .collect()
}

impl TryFrom<wire::L7Policy> for L7Policy {
    type Error = ModelError;

    fn try_from(p: wire::L7Policy) -> Result<Self, Self::Error> {
        required("name", &p.name)?;
        required("namespace", &p.namespace)?;
        let action = match l7_policy::Action::try_from(p.action) {
            Ok(l7_policy::Action::Allow) => L7Action::Allow,
            Ok(l7_policy::Action::Deny) => L7Action::Deny,
            Ok(l7_policy::Action::Audit) => L7Action::Audit,
            Err(_) => {
                return Err(ModelError::UnknownEnum {
                    field: "action".into(),
                    kind: "ambient.waypoint.v1.L7Policy.Action",
                    value: p.action,
                })
            }
        };
        let rules = indexed("rules", p.rules, |r| {
            Ok(L7Rule {
                from: indexed("from", r.from, source_from_proto)?,
                to: indexed("to", r.to, operation_from_proto)?,
                when: indexed("when", r.when, |c| {
                    L7Condition::try_from(RawCondition {
                        key: c.key,
                        values: c.values,
                        not_values: c.not_values,
                    })
                })?,
            })
        })?;
        Ok(L7Policy {
            target: L7Target::from_proto(p.scope, p.gateways, p.services)?,
            name: p.name,
            namespace: p.namespace,
            action,
            dry_run: p.dry_run,
            rules,
        })
    }
}

fn strings(v: &[StringMatch]) -> Vec<String> {
    v.iter().map(istio_string).collect()
}

fn cidr_strings(v: &[Cidr]) -> Vec<String> {
    v.iter().map(ToString::to_string).collect()
}

impl From<&L7Policy> for wire::L7Policy {
    fn from(p: &L7Policy) -> Self {
        wire::L7Policy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            scope: p.target.scope.to_proto(),
            gateways: p.target.gateways.clone(),
            services: p.target.services.clone(),
            action: match p.action {
                L7Action::Allow => l7_policy::Action::Allow,
                L7Action::Deny => l7_policy::Action::Deny,
                L7Action::Audit => l7_policy::Action::Audit,
            } as i32,
            dry_run: p.dry_run,
            rules: p
                .rules
                .iter()
                .map(|r| l7_policy::Rule {
                    from: r
                        .from
                        .iter()
                        .map(|s| l7_policy::Source {
                            principals: strings(&s.principals),
                            not_principals: strings(&s.not_principals),
                            namespaces: strings(&s.namespaces),
                            not_namespaces: strings(&s.not_namespaces),
                            ip_blocks: cidr_strings(&s.ip_blocks),
                            not_ip_blocks: cidr_strings(&s.not_ip_blocks),
                            request_principals: strings(&s.request_principals),
                            not_request_principals: strings(&s.not_request_principals),
                            remote_ip_blocks: cidr_strings(&s.remote_ip_blocks),
                            not_remote_ip_blocks: cidr_strings(&s.not_remote_ip_blocks),
                            service_accounts: account_strings(&s.service_accounts),
                            not_service_accounts: account_strings(&s.not_service_accounts),
                        })
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .map(|o| l7_policy::Operation {
                            hosts: strings(&o.hosts),
                            not_hosts: strings(&o.not_hosts),
                            ports: o.ports.iter().map(|p| u32::from(*p)).collect(),
                            not_ports: o.not_ports.iter().map(|p| u32::from(*p)).collect(),
                            methods: strings(&o.methods),
                            not_methods: strings(&o.not_methods),
                            paths: strings(&o.paths),
                            not_paths: strings(&o.not_paths),
                        })
                        .collect(),
                    when: r
                        .when
                        .iter()
                        .map(|c| {
                            let raw = RawCondition::from(c.clone());
                            l7_policy::Condition {
                                key: raw.key,
                                values: raw.values,
                                not_values: raw.not_values,
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
