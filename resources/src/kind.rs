//! The kinds the mesh reads, by API group and kind name: one table for every reader (the
//! control plane's config sources, `meshctl apply`, the CNI agent).

use std::fmt;

use crate::{GATEWAY_API_GROUP, ISTIO_NETWORKING_GROUP, ISTIO_SECURITY_GROUP};

/// API group of EndpointSlices.
pub const DISCOVERY_GROUP: &str = "discovery.k8s.io";

/// A kind the mesh reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Namespace (cluster-scoped).
    Namespace,
    /// `v1` Pod.
    Pod,
    /// `v1` Service.
    Service,
    /// `v1` ServiceAccount.
    ServiceAccount,
    /// `discovery.k8s.io/v1` EndpointSlice (the endpoints of a Service without a selector).
    EndpointSlice,
    /// `security.istio.io/{v1,v1beta1}` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io/{v1,v1beta1}` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io/{v1,v1beta1}` RequestAuthentication.
    RequestAuthentication,
    /// `gateway.networking.k8s.io/{v1,v1beta1}` Gateway.
    Gateway,
    /// `gateway.networking.k8s.io/{v1,v1beta1}` HTTPRoute.
    HttpRoute,
    /// `gateway.networking.k8s.io/{v1,v1beta1}` GRPCRoute.
    GrpcRoute,
    /// `networking.istio.io/{v1,v1beta1,v1alpha3}` VirtualService.
    VirtualService,
    /// `networking.istio.io/{v1,v1beta1,v1alpha3}` DestinationRule.
    DestinationRule,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 13] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::ServiceAccount,
        Kind::EndpointSlice,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::VirtualService,
        Kind::DestinationRule,
    ];

    /// The kind named `kind` in API group `group` (`""`: core), if the mesh reads it.
    pub fn find(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.name() == kind)
    }

    /// The `kind` field's value.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
        }
    }

    /// Its API group; `""` for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::ServiceAccount => "",
            Kind::EndpointSlice => DISCOVERY_GROUP,
            Kind::AuthorizationPolicy | Kind::PeerAuthentication | Kind::RequestAuthentication => {
                ISTIO_SECURITY_GROUP
            }
            Kind::Gateway | Kind::HttpRoute | Kind::GrpcRoute => GATEWAY_API_GROUP,
            Kind::VirtualService | Kind::DestinationRule => ISTIO_NETWORKING_GROUP,
        }
    }

    /// The API versions read (their schemas are the same for the fields the mesh reads).
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            "" | DISCOVERY_GROUP => &["v1"],
            ISTIO_NETWORKING_GROUP => &["v1", "v1beta1", "v1alpha3"],
            _ => &["v1", "v1beta1"],
        }
    }

    /// Each accepted `apiVersion` value, e.g. `security.istio.io/v1`.
    pub fn api_versions(self) -> Vec<String> {
        self.versions()
            .iter()
            .map(|v| match self.group() {
                "" => v.to_string(),
                group => format!("{group}/{v}"),
            })
            .collect()
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// Whether an invalid object of this kind is refused alone, keeping its last good version,
    /// instead of making the whole new configuration unusable (the routing kinds).
    pub fn keeps_last_good(self) -> bool {
        matches!(
            self,
            Kind::HttpRoute | Kind::GrpcRoute | Kind::VirtualService | Kind::DestinationRule
        )
    }

    /// `<kind>` or `<kind>.<group>`, lower case, as kubectl names resources.
    pub fn resource(self) -> String {
        let kind = self.name().to_ascii_lowercase();
        match self.group() {
            "" => kind,
            group => format!("{kind}.{group}"),
        }
    }

    /// How the names of its objects are spelled: Namespaces, Pods and Services become DNS
    /// names (host names, SPIFFE ids) and must be labels; other objects may use dots.
    pub fn name_rule(self) -> NameRule {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service => NameRule::Label,
            _ => NameRule::Subdomain,
        }
    }

    /// Every kind with its versions, for "supported kinds" messages.
    pub fn supported() -> String {
        Kind::ALL
            .iter()
            .map(|k| format!("{} ({})", k.name(), k.api_versions().join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The plural resource name the API serves kind `kind` under (`AuthorizationPolicy` →
/// `authorizationpolicies`, `Gateway` → `gateways`, `GatewayClass` → `gatewayclasses`).
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    let vowel_y = ["ay", "ey", "oy", "uy"].iter().any(|e| lower.ends_with(e));
    if lower == "endpoints" {
        lower
    } else if lower.ends_with("ss") || lower.ends_with("sh") {
        format!("{lower}es")
    } else if lower.ends_with('y') && !vowel_y {
        format!("{}ies", &lower[..lower.len() - 1])
    } else {
        format!("{lower}s")
    }
}

/// How an object name is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 label: at most 63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric.
    Label,
    /// DNS-1123 subdomain: at most 253, labels joined by dots.
    Subdomain,
}

impl NameRule {
    /// Whether `name` follows the rule; the error says how it does not.
    pub fn check(self, name: &str) -> Result<(), NameError> {
        let (max, what) = match self {
            NameRule::Label => (63, "a DNS-1123 label"),
            NameRule::Subdomain => (253, "a DNS-1123 subdomain"),
        };
        let labels_ok = match self {
            NameRule::Label => is_label(name),
            NameRule::Subdomain => name.split('.').all(is_label),
        };
        if name.is_empty() || name.len() > max || !labels_ok {
            return Err(NameError(format!(
                "{name:?} is not {what} (at most {max} characters: lower-case letters, digits{}, \
                 starting and ending with a letter or digit)",
                if self == NameRule::Label {
                    " and '-'"
                } else {
                    ", '-' and '.'"
                }
            )));
        }
        Ok(())
    }
}

/// How a name breaks its [`NameRule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(String);

fn is_label(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| ok(c) || c == '-')
        && s.starts_with(ok)
        && s.ends_with(ok)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_found_by_group_and_name_and_named_like_kubectl() {
        for kind in Kind::ALL {
            assert_eq!(Kind::find(kind.group(), kind.name()), Some(kind));
        }
        assert_eq!(
            Kind::find("gateway.networking.k8s.io", "HTTPRoute"),
            Some(Kind::HttpRoute)
        );
        assert_eq!(Kind::find("", "HTTPRoute"), None);
        assert_eq!(
            Kind::AuthorizationPolicy.resource(),
            "authorizationpolicy.security.istio.io"
        );
        assert_eq!(Kind::Pod.resource(), "pod");
        assert_eq!(
            Kind::VirtualService.api_versions(),
            [
                "networking.istio.io/v1",
                "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3"
            ]
        );
    }

    #[test]
    fn plurals_are_the_apis() {
        for (kind, plural_) in [
            ("AuthorizationPolicy", "authorizationpolicies"),
            ("HTTPRoute", "httproutes"),
            ("Gateway", "gateways"),
            ("GatewayClass", "gatewayclasses"),
            ("CustomResourceDefinition", "customresourcedefinitions"),
            ("PodDisruptionBudget", "poddisruptionbudgets"),
            ("Endpoints", "endpoints"),
            ("Pod", "pods"),
        ] {
            assert_eq!(plural(kind), plural_, "{kind}");
        }
    }

    #[test]
    fn names_follow_dns_rules() {
        assert!(NameRule::Label.check("web-1").is_ok());
        assert!(NameRule::Label.check("web.1").is_err());
        assert!(NameRule::Subdomain.check("web.1").is_ok());
        assert!(NameRule::Subdomain.check("Web").is_err());
        assert!(NameRule::Label.check(&"a".repeat(64)).is_err());
        assert!(NameRule::Label.check("-a").is_err());
    }
}
