//! The L7 verdict on one request: pure, no IO, no clock.

use std::borrow::Borrow;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::model::{
    ConditionKey, ConditionValue, L7Action, L7Condition, L7Operation, L7Policy, L7Rule, L7Source,
};
use crate::identity::Identity;
use crate::model::{Cidr, StringMatch};
use crate::rbac::DecisionReason;

/// What a valid JWT said about the request (see [`authenticate`](super::authenticate)).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuth {
    /// `<iss>/<sub>`.
    pub principal: String,
    /// The `aud` claim (a single string reads as a list of one).
    pub audiences: Vec<String>,
    /// The `azp` claim.
    pub presenter: Option<String>,
    /// Every claim of the token.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The facts about an HTTP request that L7 policies can check.
#[derive(Debug, Clone)]
pub struct L7Request {
    /// The peer's verified identity (the original client's, at a waypoint); `None` without
    /// mutual TLS.
    pub source_identity: Option<Identity>,
    /// The peer's address.
    pub source_ip: IpAddr,
    /// The original client's address when known (e.g. from `X-Forwarded-For`); `None`: the
    /// peer's.
    pub remote_ip: Option<IpAddr>,
    /// The original destination address, when known.
    pub destination_ip: Option<IpAddr>,
    /// The original destination port (the service port).
    pub destination_port: u16,
    /// The `:authority` (HTTP/2) or `Host` (HTTP/1.1), possibly with a port.
    pub host: String,
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path as received, possibly with a query; normalised by the evaluator.
    pub path: String,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The JWT's facts, when a valid token came with the request.
    pub auth: Option<RequestAuth>,
}

/// A policy and the index of its rule that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// The policy, `<namespace>/<name>`.
    pub policy: String,
    /// The index of its first rule that matched.
    pub rule: usize,
}

/// The verdict on a request and what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L7Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why.
    pub reason: DecisionReason,
    /// The first enforced AUDIT policy that matched: the request is to be audited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<PolicyRule>,
    /// What the dry-run policies in scope say; `None` when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<L7DryRunReport>,
}

impl L7Decision {
    /// Whether the request is to be audited.
    pub fn audited(&self) -> bool {
        self.audit.is_some()
    }
}

impl fmt::Display for L7Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(a) = &self.audit {
            write!(f, "; audited by {} (rule {})", a.policy, a.rule)?;
        }
        if let Some(dry) = &self.dry_run {
            let would = if dry.allowed { "allow" } else { "deny" };
            write!(
                f,
                "; with dry-run policies it would {would}: {}",
                dry.reason
            )?;
        }
        Ok(())
    }
}

/// The dry-run policies in scope and the verdict they would lead to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L7DryRunReport {
    /// The verdict if the dry-run policies were enforced along with the others.
    pub allowed: bool,
    /// Why, under the same assumption.
    pub reason: DecisionReason,
    /// Each dry-run policy in scope, in the order given.
    pub policies: Vec<L7DryRunOutcome>,
}

/// How one dry-run policy judged the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L7DryRunOutcome {
    /// The policy, `<namespace>/<name>`.
    pub policy: String,
    /// Its action.
    pub action: L7Action,
    /// The index of its first rule that matched; `None` when it did not match.
    pub matched_rule: Option<usize>,
}

/// Decides on `request` given the L7 policies in scope (their order only picks which of
/// several matching policies is named): any matching DENY denies; otherwise with no ALLOW
/// policy in scope the request is allowed, else only if an ALLOW policy matches. AUDIT
/// policies only mark ([`L7Decision::audit`]); dry-run policies only report.
pub fn evaluate<P: Borrow<L7Policy>>(policies: &[P], request: &L7Request) -> L7Decision {
    let facts = Facts::new(request);
    let mut enforced = Tally::default();
    let mut with_dry_run = Tally::default();
    let mut dry_run = Vec::new();
    let mut audit = None;
    for (i, policy) in policies.iter().enumerate() {
        let policy = policy.borrow();
        let rule = facts.matching_rule(policy);
        with_dry_run.add(i, policy.action, rule);
        if policy.dry_run {
            dry_run.push(L7DryRunOutcome {
                policy: policy.key(),
                action: policy.action,
                matched_rule: rule,
            });
            continue;
        }
        enforced.add(i, policy.action, rule);
        if policy.action == L7Action::Audit && audit.is_none() {
            audit = rule.map(|rule| PolicyRule {
                policy: policy.key(),
                rule,
            });
        }
    }
    let (allowed, reason) = enforced.decide(policies, |p| !p.dry_run);
    let dry_run = (!dry_run.is_empty()).then(|| {
        let (allowed, reason) = with_dry_run.decide(policies, |_| true);
        L7DryRunReport {
            allowed,
            reason,
            policies: dry_run,
        }
    });
    L7Decision {
        allowed,
        reason,
        audit,
        dry_run,
    }
}

/// The index of the first rule of `policy` that `request` matches; `None` if none does.
/// Ignores the action and the dry-run flag.
pub fn matching_rule(policy: &L7Policy, request: &L7Request) -> Option<usize> {
    Facts::new(request).matching_rule(policy)
}

#[derive(Default)]
struct Tally {
    any: bool,
    any_allow: bool,
    denied_by: Option<(usize, usize)>,
    allowed_by: Option<(usize, usize)>,
}

impl Tally {
    fn add(&mut self, index: usize, action: L7Action, rule: Option<usize>) {
        let slot = match action {
            L7Action::Audit => return,
            L7Action::Deny => &mut self.denied_by,
            L7Action::Allow => {
                self.any_allow = true;
                &mut self.allowed_by
            }
        };
        self.any = true;
        if slot.is_none() {
            *slot = rule.map(|r| (index, r));
        }
    }

    fn decide<P: Borrow<L7Policy>>(
        &self,
        policies: &[P],
        counted: impl Fn(&L7Policy) -> bool,
    ) -> (bool, DecisionReason) {
        let key = |i: usize| policies[i].borrow().key();
        if let Some((i, rule)) = self.denied_by {
            let policy = key(i);
            return (false, DecisionReason::DeniedBy { policy, rule });
        }
        if !self.any_allow {
            let reason = if self.any {
                DecisionReason::NoAllowPolicies
            } else {
                DecisionReason::NoPolicies
            };
            return (true, reason);
        }
        if let Some((i, rule)) = self.allowed_by {
            let policy = key(i);
            return (true, DecisionReason::AllowedBy { policy, rule });
        }
        let allow_policies = policies
            .iter()
            .map(Borrow::borrow)
            .filter(|p| p.action == L7Action::Allow && counted(p))
            .map(L7Policy::key)
            .collect();
        (false, DecisionReason::NoAllowMatched { allow_policies })
    }
}

/// The request's attributes, derived once.
struct Facts<'a> {
    request: &'a L7Request,
    principal: Option<String>,
    /// Host lower-cased, and without its port.
    host: String,
    host_without_port: String,
    path: String,
}

impl<'a> Facts<'a> {
    fn new(request: &'a L7Request) -> Self {
        let host = request.host.to_ascii_lowercase();
        let host_without_port = strip_port(&host).to_string();
        Facts {
            principal: request.source_identity.as_ref().map(Identity::principal),
            host,
            host_without_port,
            path: normalize_path(&request.path),
            request,
        }
    }

    fn matching_rule(&self, policy: &L7Policy) -> Option<usize> {
        policy.rules.iter().position(|r| self.rule_matches(r))
    }

    fn rule_matches(&self, rule: &L7Rule) -> bool {
        (rule.from.is_empty() || rule.from.iter().any(|s| self.source_matches(s)))
            && (rule.to.is_empty() || rule.to.iter().any(|o| self.operation_matches(o)))
            && rule.when.iter().all(|c| self.condition_matches(c))
    }

    fn namespace(&self) -> Option<&str> {
        self.request.source_identity.as_ref().map(|i| i.namespace())
    }

    fn remote_ip(&self) -> IpAddr {
        self.request.remote_ip.unwrap_or(self.request.source_ip)
    }

    fn request_principal(&self) -> Option<&str> {
        self.request.auth.as_ref().map(|a| a.principal.as_str())
    }

    fn source_matches(&self, s: &L7Source) -> bool {
        let principal = self.principal.as_deref();
        let ns = self.namespace();
        let rp = self.request_principal();
        let src = self.request.source_ip;
        let remote = self.remote_ip();
        field(&s.principals, &s.not_principals, |m| opt(m, principal))
            && field(&s.namespaces, &s.not_namespaces, |m| opt(m, ns))
            && field(&s.ip_blocks, &s.not_ip_blocks, |c: &Cidr| c.contains(src))
            && field(&s.request_principals, &s.not_request_principals, |m| {
                opt(m, rp)
            })
            && field(&s.remote_ip_blocks, &s.not_remote_ip_blocks, |c: &Cidr| {
                c.contains(remote)
            })
            && field(&s.service_accounts, &s.not_service_accounts, |sa| {
                self.request.source_identity.as_ref().is_some_and(|id| {
                    sa.namespace == id.namespace() && sa.service_account == id.service_account()
                })
            })
    }

    fn operation_matches(&self, o: &L7Operation) -> bool {
        let r = self.request;
        field(&o.hosts, &o.not_hosts, |m| {
            m.matches(&self.host) || m.matches(&self.host_without_port)
        }) && field(&o.ports, &o.not_ports, |p| *p == r.destination_port)
            && field(&o.methods, &o.not_methods, |m| m.matches(&r.method))
            && field(&o.paths, &o.not_paths, |m| m.matches(&self.path))
    }

    fn condition_matches(&self, c: &L7Condition) -> bool {
        field(&c.values, &c.not_values, |v| self.value_holds(&c.key, v))
    }

    /// Whether the attribute `key` of the request satisfies `value`. An absent attribute
    /// satisfies nothing.
    fn value_holds(&self, key: &ConditionKey, value: &ConditionValue) -> bool {
        let r = self.request;
        match (key, value) {
            (ConditionKey::SourceIp, ConditionValue::Cidr(c)) => c.contains(r.source_ip),
            (ConditionKey::RemoteIp, ConditionValue::Cidr(c)) => c.contains(self.remote_ip()),
            (ConditionKey::DestinationIp, ConditionValue::Cidr(c)) => {
                r.destination_ip.is_some_and(|ip| c.contains(ip))
            }
            (ConditionKey::DestinationPort, ConditionValue::Port(p)) => *p == r.destination_port,
            (key, ConditionValue::String(m)) => self.string_holds(key, m),
            _ => false,
        }
    }

    fn string_holds(&self, key: &ConditionKey, m: &StringMatch) -> bool {
        let auth = self.request.auth.as_ref();
        match key {
            ConditionKey::RequestHeader(name) => self
                .request
                .headers
                .get_all(name.as_str())
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.matches(v))),
            ConditionKey::SourceNamespace => opt(m, self.namespace()),
            ConditionKey::SourcePrincipal => opt(m, self.principal.as_deref()),
            ConditionKey::AuthPrincipal => opt(m, self.request_principal()),
            ConditionKey::AuthAudiences => {
                auth.is_some_and(|a| a.audiences.iter().any(|aud| m.matches(aud)))
            }
            ConditionKey::AuthPresenter => opt(m, auth.and_then(|a| a.presenter.as_deref())),
            ConditionKey::AuthClaim(path) => auth.is_some_and(|a| claim_holds(&a.claims, path, m)),
            ConditionKey::SourceIp
            | ConditionKey::RemoteIp
            | ConditionKey::DestinationIp
            | ConditionKey::DestinationPort => false,
        }
    }
}

/// A claim at `path` (nested objects) satisfies `m`: a string, any string of a list, or the
/// JSON text of a number or boolean.
fn claim_holds(
    claims: &serde_json::Map<String, serde_json::Value>,
    path: &[String],
    m: &StringMatch,
) -> bool {
    use serde_json::Value;
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let mut value = claims.get(first);
    for name in rest {
        value = value.and_then(|v| v.get(name));
    }
    let scalar = |v: &Value| match v {
        Value::String(s) => m.matches(s),
        Value::Bool(_) | Value::Number(_) => m.matches(&v.to_string()),
        _ => false,
    };
    match value {
        Some(Value::Array(items)) => items.iter().any(scalar),
        Some(v) => scalar(v),
        None => false,
    }
}

fn opt(m: &StringMatch, value: Option<&str>) -> bool {
    value.is_some_and(|v| m.matches(v))
}

/// One field and its `not_` form: some of `any_of` (when given) and none of `none_of` hold.
fn field<T>(any_of: &[T], none_of: &[T], holds: impl Fn(&T) -> bool) -> bool {
    (any_of.is_empty() || any_of.iter().any(&holds)) && !none_of.iter().any(&holds)
}

/// The host without its `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The path policies compare: without query or fragment, `\` read as `/`, percent-encoded
/// unreserved characters decoded (other escapes upper-cased, `%2F` kept), and `.` and `..`
/// segments resolved (RFC 3986 section 5.2.4). The waypoint should route on the same form.
pub fn normalize_path(raw: &str) -> String {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let raw = &raw[..end];
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 1);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escaped = (b == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok().map(|v| (hex, v)));
        match escaped {
            Some((_, v)) if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                out.push(v);
                i += 3;
            }
            Some((hex, _)) => {
                out.push(b'%');
                out.extend(hex.to_ascii_uppercase().bytes());
                i += 3;
            }
            // A `%` that starts no escape is written as one (`%25`): left bare, the characters
            // decoded after it could form an escape the next normalisation would read.
            None if b == b'%' => {
                out.extend_from_slice(b"%25");
                i += 1;
            }
            None => {
                out.push(if b == b'\\' { b'/' } else { b });
                i += 1;
            }
        }
    }
    // Only ASCII escapes were decoded, so the bytes are as valid UTF-8 as `raw` was.
    let mut decoded = String::from_utf8_lossy(&out).into_owned();
    if !decoded.starts_with('/') {
        decoded.insert(0, '/');
    }
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                kept.pop();
                trailing_slash = i == last;
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut path = format!("/{}", kept.join("/"));
    if trailing_slash && !path.ends_with('/') {
        path.push('/');
    }
    path
}
