//! `security.istio.io` AuthorizationPolicy and PeerAuthentication, checked as istiod-lite
//! reads them (its `resources` module): every field typed, unknown fields refused, values
//! checked the way Istio's admission webhook checks them. A copy of those light checks, since
//! istiod-lite is a binary crate; the field tables below follow its types.
//!
//! On top of what istiod-lite refuses, `apply` refuses what the mesh does not support —
//! action CUSTOM, and AUDIT on a policy that is not bound to a waypoint (`targetRefs`), which
//! istiod-lite would only skip with a warning — and warns about rules that are enforced
//! differently from what they say: L7 conditions (HTTP hosts, methods, paths, request
//! principals, remote IPs, `request.*` keys, ...) cannot be checked at L4, so ztunnel fails
//! closed on them; a waypoint fails closed on `when` keys it does not know.

use std::collections::BTreeMap;

use mesh::model::Cidr;
use serde::{Deserialize, Deserializer};

/// API group of Istio's security kinds.
pub(super) const GROUP: &str = "security.istio.io";

/// Deserializes `null` (e.g. `rules:` with nothing after it) as the type's default, as
/// Kubernetes and istiod-lite do.
pub(super) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Decodes and checks an AuthorizationPolicy document; returns its warnings.
pub(super) fn check_authorization_policy<'de, D>(document: D) -> Result<Vec<String>, String>
where
    D: Deserializer<'de, Error = serde_yaml::Error>,
{
    let policy = AuthorizationPolicy::deserialize(document)
        .map_err(|e| format!("not a valid AuthorizationPolicy: {e}"))?;
    let spec = policy.spec;
    match spec.action {
        Action::Custom => {
            return Err(
                "spec.action CUSTOM: not supported by this mesh (no external authorizers); refused"
                    .into(),
            )
        }
        Action::Audit if !spec.has_target_refs() => {
            return Err(
                "spec.action AUDIT: only waypoints audit requests; bind the policy to a waypoint \
                 or a service with targetRefs (ztunnel would skip it); refused"
                    .into(),
            )
        }
        _ => {}
    }
    spec.validate()?;
    let mut warnings = spec.l7_warnings();
    warnings.extend(spec.waypoint_warnings());
    Ok(warnings)
}

/// Decodes and checks a PeerAuthentication document; returns its warnings.
pub(super) fn check_peer_authentication<'de, D>(document: D) -> Result<Vec<String>, String>
where
    D: Deserializer<'de, Error = serde_yaml::Error>,
{
    let pa = PeerAuthentication::deserialize(document)
        .map_err(|e| format!("not a valid PeerAuthentication: {e}"))?;
    let spec = pa.spec;
    if let Some(key) = spec.port_level_mtls.keys().find(|k| !k.is_port()) {
        let key = match key {
            PortKey::Number(n) => n.to_string(),
            PortKey::Text(s) => format!("{s:?}"),
        };
        return Err(format!(
            "spec.portLevelMtls: key {key} is not a port number (1-65535)"
        ));
    }
    let selects = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !selects {
        return Ok(vec![
            "spec.portLevelMtls needs a selector; istiod-lite drops the port settings, and if \
             any says STRICT the whole scope becomes STRICT"
                .into(),
        ]);
    }
    Ok(Vec::new())
}

#[derive(Deserialize)]
struct AuthorizationPolicy {
    #[serde(default, deserialize_with = "null_as_default")]
    spec: AuthorizationPolicySpec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthorizationPolicySpec {
    #[serde(default)]
    selector: Option<Selector>,
    #[serde(default)]
    target_ref: Option<TargetRef>,
    #[serde(default, deserialize_with = "null_as_default")]
    target_refs: Vec<TargetRef>,
    #[serde(default, deserialize_with = "null_as_default")]
    action: Action,
    #[serde(default)]
    provider: Option<Provider>,
    #[serde(default, deserialize_with = "null_as_default")]
    rules: Vec<Rule>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    #[serde(default, deserialize_with = "null_as_default")]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // read only to check the types
struct TargetRef {
    #[serde(default, deserialize_with = "null_as_default")]
    group: String,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only to check the types
struct Provider {
    #[serde(default, deserialize_with = "null_as_default")]
    name: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default, deserialize_with = "null_as_default")]
    from: Vec<RuleFrom>,
    #[serde(default, deserialize_with = "null_as_default")]
    to: Vec<RuleTo>,
    #[serde(default, deserialize_with = "null_as_default")]
    when: Vec<Condition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFrom {
    #[serde(default)]
    source: Option<Fields<SourceField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTo {
    #[serde(default)]
    operation: Option<Fields<OperationField>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Condition {
    #[serde(default, deserialize_with = "null_as_default")]
    key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    values: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    not_values: Vec<String>,
}

/// A `source` or `operation`: lists of strings keyed by field name. Keyed by an enum, so an
/// unknown (e.g. misspelt) field is refused with the list of valid ones.
type Fields<F> = BTreeMap<F, Strings>;

/// A list of strings where `null` reads as empty.
#[derive(Default, Deserialize)]
#[serde(from = "Option<Vec<String>>")]
struct Strings(Vec<String>);

impl From<Option<Vec<String>>> for Strings {
    fn from(v: Option<Vec<String>>) -> Self {
        Strings(v.unwrap_or_default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "camelCase")]
enum SourceField {
    Principals,
    NotPrincipals,
    RequestPrincipals,
    NotRequestPrincipals,
    Namespaces,
    NotNamespaces,
    IpBlocks,
    NotIpBlocks,
    RemoteIpBlocks,
    NotRemoteIpBlocks,
    ServiceAccounts,
    NotServiceAccounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "camelCase")]
enum OperationField {
    Hosts,
    NotHosts,
    Ports,
    NotPorts,
    Methods,
    NotMethods,
    Paths,
    NotPaths,
}

/// What a field of a `source` or `operation` is.
trait Field: Copy + std::fmt::Debug {
    /// How its values are checked.
    fn check(self) -> Check;
    /// Whether it needs HTTP (ztunnel cannot check it).
    fn l7(self) -> bool;
    /// Its YAML name.
    fn name(self) -> String {
        let debug = format!("{self:?}");
        let mut chars = debug.chars();
        chars
            .next()
            .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
            .unwrap_or_default()
    }
}

impl Field for SourceField {
    fn check(self) -> Check {
        use SourceField::*;
        match self {
            Principals | NotPrincipals | Namespaces | NotNamespaces => Check::StringMatch,
            RequestPrincipals | NotRequestPrincipals => Check::NonEmpty,
            IpBlocks | NotIpBlocks | RemoteIpBlocks | NotRemoteIpBlocks => Check::Cidr,
            ServiceAccounts | NotServiceAccounts => Check::ServiceAccount,
        }
    }

    fn l7(self) -> bool {
        use SourceField::*;
        matches!(
            self,
            RequestPrincipals | NotRequestPrincipals | RemoteIpBlocks | NotRemoteIpBlocks
        )
    }
}

impl Field for OperationField {
    fn check(self) -> Check {
        match self {
            OperationField::Ports | OperationField::NotPorts => Check::Port,
            _ => Check::NonEmpty,
        }
    }

    fn l7(self) -> bool {
        !matches!(self, OperationField::Ports | OperationField::NotPorts)
    }
}

/// The `when` keys ztunnel checks, and how their values are checked; other keys are L7.
fn l4_condition(key: &str) -> Option<Check> {
    match key {
        "source.ip" | "destination.ip" => Some(Check::Cidr),
        "destination.port" => Some(Check::Port),
        "source.namespace" | "source.principal" => Some(Check::StringMatch),
        _ => None,
    }
}

impl AuthorizationPolicySpec {
    fn has_target_refs(&self) -> bool {
        self.target_ref.is_some() || !self.target_refs.is_empty()
    }

    /// istiod-lite's `AuthorizationPolicy::validate`; the error names the field by its path.
    fn validate(&self) -> Result<(), String> {
        if self.selector.is_some() && self.has_target_refs() {
            return Err("spec: selector and targetRef/targetRefs cannot both be set".into());
        }
        if self.target_ref.is_some() && !self.target_refs.is_empty() {
            return Err("spec: targetRef and targetRefs cannot both be set".into());
        }
        if self.provider.is_some() {
            return Err(format!(
                "spec.provider: only allowed with action CUSTOM, not {}",
                self.action.as_str()
            ));
        }
        for (r, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{r}]");
            for (i, from) in rule.from.iter().enumerate() {
                check_fields(from.source.as_ref(), &format!("{at}.from[{i}].source"))?;
            }
            for (i, to) in rule.to.iter().enumerate() {
                check_fields(to.operation.as_ref(), &format!("{at}.to[{i}].operation"))?;
            }
            for (i, when) in rule.when.iter().enumerate() {
                let at = format!("{at}.when[{i}]");
                if when.key.is_empty() {
                    return Err(format!("{at}.key: required"));
                }
                if when.values.is_empty() && when.not_values.is_empty() {
                    return Err(format!("{at}: one of values or notValues is required"));
                }
                let check = l4_condition(&when.key).unwrap_or(Check::NonEmpty);
                check_values("values", &when.values, check, &at)?;
                check_values("notValues", &when.not_values, check, &at)?;
            }
        }
        Ok(())
    }

    /// For policies bound with `targetRefs`: targets waypoints do not enforce, and `when`
    /// keys the waypoint cannot check (it fails closed on them).
    fn waypoint_warnings(&self) -> Vec<String> {
        if !self.has_target_refs() {
            return Vec::new();
        }
        let mut warnings = Vec::new();
        for (i, t) in self.target_ref.iter().chain(&self.target_refs).enumerate() {
            let supported = matches!(
                (t.group.as_str(), t.kind.as_str()),
                ("gateway.networking.k8s.io" | "", "Gateway") | ("" | "core", "Service")
            );
            if !supported {
                warnings.push(format!(
                    "spec.targetRefs[{i}]: kind {} (group {:?}) is not enforced by waypoints; \
                     only Gateway (gateway.networking.k8s.io) and Service are",
                    t.kind, t.group
                ));
            }
        }
        for (r, rule) in self.rules.iter().enumerate() {
            for (i, when) in rule.when.iter().enumerate() {
                if when.key.parse::<mesh::l7authz::ConditionKey>().is_err() {
                    let effect = match self.action {
                        Action::Allow => "this ALLOW rule matches nothing",
                        _ => "the rule is enforced without it, so it matches more than written",
                    };
                    warnings.push(format!(
                        "spec.rules[{r}].when[{i}].key: waypoints cannot check {:?}; {effect}",
                        when.key
                    ));
                }
            }
        }
        warnings
    }

    /// One warning per rule with L7 conditions, saying what ztunnel makes of it. Policies
    /// bound to a waypoint (`targetRefs`) are enforced at L7 and get none.
    fn l7_warnings(&self) -> Vec<String> {
        if self.has_target_refs() {
            return Vec::new();
        }
        let mut warnings = Vec::new();
        for (r, rule) in self.rules.iter().enumerate() {
            let mut l7: Vec<String> = Vec::new();
            for source in rule.from.iter().filter_map(|f| f.source.as_ref()) {
                l7.extend(l7_fields(source));
            }
            for op in rule.to.iter().filter_map(|t| t.operation.as_ref()) {
                l7.extend(l7_fields(op));
            }
            for when in &rule.when {
                if l4_condition(&when.key).is_none() {
                    l7.push(format!("when {}", when.key));
                }
            }
            if l7.is_empty() {
                continue;
            }
            l7.sort_unstable();
            l7.dedup();
            let effect = match self.action {
                Action::Deny => {
                    "the DENY rule is enforced without them, so it denies more than written"
                }
                _ => "ztunnel fails closed: this ALLOW rule matches nothing",
            };
            warnings.push(format!(
                "spec.rules[{r}] uses L7 attributes ztunnel cannot check ({}); {effect} \
                 (bind the policy to a waypoint with targetRefs to enforce them)",
                l7.join(", ")
            ));
        }
        warnings
    }
}

fn l7_fields<F: Field>(fields: &Fields<F>) -> impl Iterator<Item = String> + '_ {
    fields
        .iter()
        .filter(|(f, v)| f.l7() && !v.0.is_empty())
        .map(|(f, _)| f.name())
}

/// A `source` or `operation`: present, with at least one value, each value well formed.
fn check_fields<F: Field>(fields: Option<&Fields<F>>, at: &str) -> Result<(), String> {
    let Some(fields) = fields else {
        return Err(format!("{at}: required"));
    };
    if fields.values().all(|v| v.0.is_empty()) {
        return Err(format!("{at}: must set at least one field"));
    }
    for (field, values) in fields {
        check_values(&field.name(), &values.0, field.check(), at)?;
    }
    Ok(())
}

/// What each value of a field must look like.
#[derive(Debug, Clone, Copy)]
enum Check {
    NonEmpty,
    /// `*` only as the whole value, a prefix or a suffix.
    StringMatch,
    Cidr,
    Port,
    /// `<sa>` or `<ns>/<sa>`.
    ServiceAccount,
}

fn check_values(name: &str, values: &[String], check: Check, at: &str) -> Result<(), String> {
    for (i, value) in values.iter().enumerate() {
        check_value(value, check).map_err(|why| format!("{at}.{name}[{i}]: {value:?} {why}"))?;
    }
    Ok(())
}

fn check_value(value: &str, check: Check) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    let ok = match check {
        Check::NonEmpty => true,
        Check::StringMatch => {
            let inner = value.trim_start_matches('*').trim_end_matches('*');
            value == "*" || (!inner.contains('*') && value.matches('*').count() <= 1)
        }
        Check::Cidr => value.parse::<Cidr>().is_ok(),
        Check::Port => value.parse::<u16>().is_ok(),
        Check::ServiceAccount => {
            let parts: Vec<&str> = value.split('/').collect();
            parts.len() <= 2 && parts.iter().all(|p| !p.is_empty())
        }
    };
    if ok {
        return Ok(());
    }
    Err(match check {
        Check::StringMatch => "may use `*` only as the whole value, a prefix or a suffix",
        Check::Cidr => "is not an IP address or CIDR",
        Check::Port => "is not a port number (0-65535)",
        Check::ServiceAccount => "must read <service-account> or <namespace>/<service-account>",
        Check::NonEmpty => "is empty",
    })
}

#[derive(Deserialize)]
struct PeerAuthentication {
    #[serde(default, deserialize_with = "null_as_default")]
    spec: PeerAuthenticationSpec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PeerAuthenticationSpec {
    #[serde(default)]
    selector: Option<Selector>,
    #[serde(default)]
    #[allow(dead_code)] // read only to check its type
    mtls: Option<MutualTls>,
    #[serde(default, deserialize_with = "null_as_default")]
    port_level_mtls: BTreeMap<PortKey, MutualTls>,
}

/// A `portLevelMtls` key as written (a YAML number or string); checked as a port after.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(untagged)]
enum PortKey {
    Number(i64),
    Text(String),
}

impl PortKey {
    fn is_port(&self) -> bool {
        let n = match self {
            PortKey::Number(n) => Some(*n),
            PortKey::Text(s) => s.parse().ok(),
        };
        n.is_some_and(|n| (1..=65535).contains(&n))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only to check its type
struct MutualTls {
    #[serde(default, deserialize_with = "null_as_default")]
    mode: MtlsMode,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum MtlsMode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}
