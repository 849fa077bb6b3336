//! `security.istio.io/v1` AuthorizationPolicy, typed completely and validated as Istio's
//! admission webhook would, since a misread policy could widen access.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{null_as_default, PolicyTargetReference, WorkloadSelector};

/// Annotation that makes a policy evaluate-and-log only (`"true"`).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// What an AuthorizationPolicy applies to and does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    namespaced,
    status = "crate::ObjectStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "An Istio AuthorizationPolicy."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Pods the policy applies to; absent: the whole namespace (the mesh, in the root
    /// namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single form of `targetRefs`.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Objects the policy binds to; such a policy is enforced by a waypoint.
    #[serde(default, deserialize_with = "null_as_default")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// What to do with a matching request; ALLOW when absent.
    #[serde(default, deserialize_with = "null_as_default")]
    pub action: AuthorizationAction,
    /// The external authorizer of a CUSTOM policy.
    #[serde(default)]
    pub provider: Option<ExtensionProvider>,
    /// Rules, OR-ed. None: an ALLOW policy allows nothing, a DENY policy denies nothing.
    #[serde(default, deserialize_with = "null_as_default")]
    pub rules: Vec<PolicyRule>,
}

/// The action of an AuthorizationPolicy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Allow matching requests (and, once any ALLOW applies, only those).
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Mark matching requests for auditing.
    Audit,
    /// Delegate the decision to an external authorizer.
    Custom,
}

impl AuthorizationAction {
    /// The value as written in YAML: `ALLOW`, `DENY`, `AUDIT` or `CUSTOM`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationAction::Allow => "ALLOW",
            AuthorizationAction::Deny => "DENY",
            AuthorizationAction::Audit => "AUDIT",
            AuthorizationAction::Custom => "CUSTOM",
        }
    }
}

/// The external authorizer of a CUSTOM policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Name of a provider in the mesh config.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
}

/// One rule: all of its `from`, `to` and `when` parts must match (each part matches when any
/// of its entries does; an absent part matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Who sends the request.
    #[serde(default, deserialize_with = "null_as_default")]
    pub from: Vec<RuleFrom>,
    /// What the request is for.
    #[serde(default, deserialize_with = "null_as_default")]
    pub to: Vec<RuleTo>,
    /// Further conditions.
    #[serde(default, deserialize_with = "null_as_default")]
    pub when: Vec<Condition>,
}

/// An entry of `from`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source; required.
    #[serde(default)]
    pub source: Option<Source>,
}

/// Conditions on the source of a request; the fields set are AND-ed, the values of one field
/// OR-ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities without the scheme, e.g. `cluster.local/ns/default/sa/sleep`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub principals: Vec<String>,
    /// Negated `principals`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_principals: Vec<String>,
    /// Request (JWT) principals: L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub request_principals: Vec<String>,
    /// Negated `requestPrincipals`: L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_request_principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default, deserialize_with = "null_as_default")]
    pub namespaces: Vec<String>,
    /// Negated `namespaces`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_namespaces: Vec<String>,
    /// Peer IPs or CIDRs.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ip_blocks: Vec<String>,
    /// Negated `ipBlocks`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs (from `X-Forwarded-For`): L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub remote_ip_blocks: Vec<String>,
    /// Negated `remoteIpBlocks`: L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_remote_ip_blocks: Vec<String>,
    /// Peer service accounts, `<namespace>/<name>` (or `<name>` in the policy's namespace).
    #[serde(default, deserialize_with = "null_as_default")]
    pub service_accounts: Vec<String>,
    /// Negated `serviceAccounts`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_service_accounts: Vec<String>,
}

/// An entry of `to`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation; required.
    #[serde(default)]
    pub operation: Option<Operation>,
}

/// Conditions on what a request is for; the fields set are AND-ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// HTTP hosts: L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub hosts: Vec<String>,
    /// Negated `hosts`: L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as decimal strings.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ports: Vec<String>,
    /// Negated `ports`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_ports: Vec<String>,
    /// HTTP methods: L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub methods: Vec<String>,
    /// Negated `methods`: L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_methods: Vec<String>,
    /// HTTP paths: L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub paths: Vec<String>,
    /// Negated `paths`: L7.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_paths: Vec<String>,
}

/// A `when` condition on a request attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute, e.g. `source.ip` or `request.headers[x-token]`.
    pub key: String,
    /// The attribute is one of these.
    #[serde(default, deserialize_with = "null_as_default")]
    pub values: Vec<String>,
    /// The attribute is none of these.
    #[serde(default, deserialize_with = "null_as_default")]
    pub not_values: Vec<String>,
}

impl AuthorizationPolicy {
    /// The policy's name (empty if the document had none; the config source refuses those).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The policy's namespace (the config source fills in `default` when absent).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// Whether the policy binds to targets (`targetRef`/`targetRefs`): then a waypoint
    /// enforces it, not ztunnel.
    pub fn has_target_refs(&self) -> bool {
        self.spec.target_ref.is_some() || !self.spec.target_refs.is_empty()
    }

    /// Whether the `istio.io/dry-run` annotation is true (Go `strconv.ParseBool` spellings).
    pub fn dry_run(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DRY_RUN_ANNOTATION))
            .is_some_and(|v| matches!(v.as_str(), "true" | "True" | "TRUE" | "t" | "T" | "1"))
    }

    /// Checks the values the way Istio's admission webhook does (for the parts that matter
    /// here): selector and targets are exclusive; `provider` goes with CUSTOM only; every
    /// `from` has a non-empty `source`, every `to` a non-empty `operation`, every `when` a key
    /// and values; ports are numbers 0-65535; IP blocks are IPs or CIDRs; string matches use
    /// `*` only as a whole value, a prefix or a suffix; service accounts read `<sa>` or
    /// `<ns>/<sa>`. The error names the field by its path under `spec`.
    pub fn validate(&self) -> Result<(), String> {
        let spec = &self.spec;
        if spec.selector.is_some() && self.has_target_refs() {
            return Err("spec: selector and targetRef/targetRefs cannot both be set".into());
        }
        if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
            return Err("spec: targetRef and targetRefs cannot both be set".into());
        }
        match (spec.action, &spec.provider) {
            (AuthorizationAction::Custom, None) => {
                return Err("spec.provider: required with action CUSTOM".into())
            }
            (AuthorizationAction::Custom, Some(_)) | (_, None) => {}
            (action, Some(_)) => {
                return Err(format!(
                    "spec.provider: only allowed with action CUSTOM, not {}",
                    action.as_str()
                ))
            }
        }
        for (r, rule) in spec.rules.iter().enumerate() {
            let at = format!("spec.rules[{r}]");
            for (i, from) in rule.from.iter().enumerate() {
                let at = format!("{at}.from[{i}].source");
                match &from.source {
                    None => return Err(format!("{at}: required")),
                    Some(source) => validate_source(source, &at)?,
                }
            }
            for (i, to) in rule.to.iter().enumerate() {
                let at = format!("{at}.to[{i}].operation");
                match &to.operation {
                    None => return Err(format!("{at}: required")),
                    Some(op) => validate_operation(op, &at)?,
                }
            }
            for (i, when) in rule.when.iter().enumerate() {
                validate_condition(when, &format!("{at}.when[{i}]"))?;
            }
        }
        Ok(())
    }
}

fn validate_source(s: &Source, at: &str) -> Result<(), String> {
    let fields: [(&str, &[String], Check); 12] = [
        ("principals", &s.principals, Check::StringMatch),
        ("notPrincipals", &s.not_principals, Check::StringMatch),
        ("requestPrincipals", &s.request_principals, Check::NonEmpty),
        (
            "notRequestPrincipals",
            &s.not_request_principals,
            Check::NonEmpty,
        ),
        ("namespaces", &s.namespaces, Check::StringMatch),
        ("notNamespaces", &s.not_namespaces, Check::StringMatch),
        ("ipBlocks", &s.ip_blocks, Check::Cidr),
        ("notIpBlocks", &s.not_ip_blocks, Check::Cidr),
        ("remoteIpBlocks", &s.remote_ip_blocks, Check::Cidr),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks, Check::Cidr),
        (
            "serviceAccounts",
            &s.service_accounts,
            Check::ServiceAccount,
        ),
        (
            "notServiceAccounts",
            &s.not_service_accounts,
            Check::ServiceAccount,
        ),
    ];
    validate_fields(&fields, at)
}

fn validate_operation(o: &Operation, at: &str) -> Result<(), String> {
    let fields: [(&str, &[String], Check); 8] = [
        ("hosts", &o.hosts, Check::NonEmpty),
        ("notHosts", &o.not_hosts, Check::NonEmpty),
        ("ports", &o.ports, Check::Port),
        ("notPorts", &o.not_ports, Check::Port),
        ("methods", &o.methods, Check::NonEmpty),
        ("notMethods", &o.not_methods, Check::NonEmpty),
        ("paths", &o.paths, Check::NonEmpty),
        ("notPaths", &o.not_paths, Check::NonEmpty),
    ];
    validate_fields(&fields, at)
}

fn validate_condition(c: &Condition, at: &str) -> Result<(), String> {
    if c.key.is_empty() {
        return Err(format!("{at}.key: required"));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(format!("{at}: one of values or notValues is required"));
    }
    let check = match c.key.as_str() {
        "source.ip" | "destination.ip" | "remote.ip" => Check::Cidr,
        "destination.port" => Check::Port,
        "source.namespace" | "source.principal" => Check::StringMatch,
        _ => Check::NonEmpty,
    };
    validate_fields(
        &[
            ("values", &c.values, check),
            ("notValues", &c.not_values, check),
        ],
        at,
    )
}

/// What each value of a field must look like.
#[derive(Clone, Copy)]
enum Check {
    NonEmpty,
    StringMatch,
    Cidr,
    Port,
    ServiceAccount,
}

fn validate_fields(fields: &[(&str, &[String], Check)], at: &str) -> Result<(), String> {
    if fields.iter().all(|(_, values, _)| values.is_empty()) {
        return Err(format!("{at}: must set at least one field"));
    }
    for (name, values, check) in fields {
        for (i, value) in values.iter().enumerate() {
            check_value(value, *check)
                .map_err(|reason| format!("{at}.{name}[{i}]: {value:?} {reason}"))?;
        }
    }
    Ok(())
}

fn check_value(value: &str, check: Check) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("is empty");
    }
    match check {
        Check::NonEmpty => Ok(()),
        Check::StringMatch => {
            let inner = value.trim_start_matches('*').trim_end_matches('*');
            let stars = value.matches('*').count();
            if value == "*" {
                Ok(())
            } else if inner.contains('*') || stars > 1 {
                Err("may use `*` only as the whole value, a prefix or a suffix")
            } else {
                Ok(())
            }
        }
        Check::Cidr => {
            if crate::is_cidr(value) {
                Ok(())
            } else {
                Err("is not an IP address or CIDR")
            }
        }
        Check::Port => value
            .parse::<u16>()
            .map(|_| ())
            .map_err(|_| "is not a port number (0-65535)"),
        Check::ServiceAccount => {
            let mut parts = value.split('/');
            let ok = match (parts.next(), parts.next(), parts.next()) {
                (Some(sa), None, None) => !sa.is_empty(),
                (Some(ns), Some(sa), None) => !ns.is_empty() && !sa.is_empty(),
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err("must read <service-account> or <namespace>/<service-account>")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> AuthorizationPolicy {
        crate::from_yaml(yaml).expect("parses")
    }

    #[test]
    fn parses_every_field_and_defaults_action_to_allow() {
        let p = policy(
            r#"
metadata: {name: p, namespace: ns, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from:
    - source:
        principals: [a]
        notPrincipals: [b]
        requestPrincipals: [c]
        notRequestPrincipals: [d]
        namespaces: [e]
        notNamespaces: [f]
        ipBlocks: [10.0.0.0/8]
        notIpBlocks: [10.0.0.1]
        remoteIpBlocks: [1.2.3.4]
        notRemoteIpBlocks: [fd00::/8]
        serviceAccounts: [ns/sa]
        notServiceAccounts: [sa]
    to:
    - operation: {hosts: [h], notHosts: [h], ports: ["80"], notPorts: ["81"], methods: [GET], notMethods: [PUT], paths: [/a], notPaths: [/b]}
    when:
    - {key: source.ip, values: [10.0.0.0/8], notValues: [10.0.0.1]}
"#,
        );
        assert_eq!(p.spec.action, AuthorizationAction::Allow);
        assert!(p.dry_run());
        assert!(!p.has_target_refs());
        assert_eq!(p.name(), "p");
        assert_eq!(p.namespace(), "ns");
        let source = p.spec.rules[0].from[0].source.as_ref().expect("source");
        assert_eq!(source.not_service_accounts, ["sa"]);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_and_actions_are_refused() {
        let typo = "spec: {rules: [{from: [{source: {principal: [a]}}]}]}";
        let err = crate::from_yaml::<AuthorizationPolicy>(typo).expect_err("typo");
        assert!(
            err.to_string().contains("unknown field `principal`"),
            "{err}"
        );
        let action = "spec: {action: REJECT}";
        assert!(crate::from_yaml::<AuthorizationPolicy>(action).is_err());
        // Null lists read as empty, as Kubernetes does.
        let p = policy("spec: {rules: }\n");
        assert!(p.spec.rules.is_empty());
    }

    #[test]
    fn validate_refuses_what_the_istio_webhook_refuses() {
        let cases = [
            (
                "spec: {selector: {matchLabels: {a: b}}, targetRefs: [{kind: Gateway, name: w}]}",
                "selector and targetRef",
            ),
            ("spec: {action: CUSTOM}", "spec.provider: required"),
            ("spec: {action: DENY, provider: {name: x}}", "only allowed"),
            (
                "spec: {rules: [{from: [{}]}]}",
                "spec.rules[0].from[0].source: required",
            ),
            (
                "spec: {rules: [{from: [{source: {}}]}]}",
                "at least one field",
            ),
            (
                "spec: {rules: [{to: [{operation: {ports: [http]}}]}]}",
                "to[0].operation.ports[0]: \"http\" is not a port",
            ),
            (
                "spec: {rules: [{to: [{operation: {notPorts: [\"70000\"]}}]}]}",
                "notPorts[0]",
            ),
            (
                "spec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}",
                "ipBlocks[0]",
            ),
            (
                "spec: {rules: [{from: [{source: {principals: [\"a*b\"]}}]}]}",
                "`*` only",
            ),
            (
                "spec: {rules: [{from: [{source: {namespaces: [\"*a*\"]}}]}]}",
                "`*` only",
            ),
            (
                "spec: {rules: [{from: [{source: {namespaces: [\"\"]}}]}]}",
                "is empty",
            ),
            (
                "spec: {rules: [{from: [{source: {serviceAccounts: [a/b/c]}}]}]}",
                "serviceAccounts[0]",
            ),
            (
                "spec: {rules: [{when: [{key: source.ip}]}]}",
                "when[0]: one of values",
            ),
            (
                "spec: {rules: [{when: [{key: destination.port, values: [x]}]}]}",
                "when[0].values[0]",
            ),
            (
                "spec: {rules: [{when: [{key: \"\", values: [x]}]}]}",
                "when[0].key",
            ),
        ];
        for (yaml, expected) in cases {
            let err = policy(yaml).validate().expect_err(yaml);
            assert!(err.contains(expected), "{yaml}: {err}");
        }
        for ok in [
            "spec: {rules: [{from: [{source: {principals: [\"*\", \"*/sa/x\", \"td/ns/a/*\"]}}]}]}",
            "spec: {rules: [{}]}",
            "spec: {}",
            "spec: {action: CUSTOM, provider: {name: ext}}",
            "spec: {targetRefs: [{kind: Service, group: \"\", name: s}]}",
        ] {
            assert_eq!(policy(ok).validate(), Ok(()), "{ok}");
        }
    }
}
