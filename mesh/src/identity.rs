//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! An [`Identity`] can only be built from valid parts, so code that holds one never has to
//! re-check it. Authorization policies name identities without the scheme (the *principal*
//! form, `cluster.local/ns/default/sa/sleep`); metric labels and certificates carry the full
//! URI.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The URI scheme of every SPIFFE ID.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// The trust domain used when the operator configures none.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// SPIFFE caps the whole ID at 2048 bytes.
const MAX_LEN: usize = 2048;

/// Why a string is not a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The string does not start with `spiffe://`.
    #[error("identity {0:?} does not start with \"spiffe://\"")]
    MissingScheme(String),
    /// The trust domain is empty.
    #[error("identity {0:?} has an empty trust domain")]
    EmptyTrustDomain(String),
    /// The trust domain has a character SPIFFE does not allow (lowercase letters, digits, `.-_`).
    #[error("trust domain {domain:?} has the character {ch:?}; only lowercase letters, digits, '.', '-' and '_' are allowed")]
    InvalidTrustDomain {
        /// The offending trust domain.
        domain: String,
        /// The first character that is not allowed.
        ch: char,
    },
    /// The path is not exactly `/ns/<namespace>/sa/<service-account>`.
    #[error("identity {0:?} must have the path /ns/<namespace>/sa/<service-account>")]
    BadPath(String),
    /// A namespace or service account segment is empty or has a character outside `[A-Za-z0-9._-]`.
    #[error("{what} {value:?} is not a valid name: it must be non-empty and use only letters, digits, '.', '-' and '_'")]
    InvalidSegment {
        /// Which part: `namespace` or `service account`.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// Longer than SPIFFE's 2048-byte limit.
    #[error("identity is {0} bytes long; SPIFFE IDs are at most 2048 bytes")]
    TooLong(usize),
}

/// A workload identity: trust domain, namespace and service account.
///
/// Cheap to clone (one shared allocation): every connection carries a few.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<Parts>);

/// The parts, and the URI they make (so formatting one never allocates).
#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    trust_domain: String,
    namespace: String,
    service_account: String,
    uri: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Identity").field(&self.0.uri).finish()
    }
}

/// Assembles checked parts.
fn assemble(trust_domain: String, namespace: String, service_account: String) -> Identity {
    let uri = format!("{SPIFFE_SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
    Identity(Arc::new(Parts {
        trust_domain,
        namespace,
        service_account,
        uri,
    }))
}

impl Identity {
    /// Builds an identity from its parts, checking each.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let id = assemble(
            trust_domain.into(),
            namespace.into(),
            service_account.into(),
        );
        check_trust_domain(id.trust_domain(), || id.to_string())?;
        check_segment("namespace", id.namespace())?;
        check_segment("service account", id.service_account())?;
        let len = id.as_uri().len();
        if len > MAX_LEN {
            return Err(IdentityError::TooLong(len));
        }
        Ok(id)
    }

    /// Parses the principal form used in policies: `<trust-domain>/ns/<ns>/sa/<sa>`.
    pub fn from_principal(principal: &str) -> Result<Self, IdentityError> {
        format!("{SPIFFE_SCHEME}{principal}").parse()
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.0.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }

    /// The SPIFFE URI, `spiffe://cluster.local/ns/default/sa/sleep` (what `Display` writes),
    /// without allocating.
    pub fn as_uri(&self) -> &str {
        &self.0.uri
    }

    /// The principal form, without the scheme: `cluster.local/ns/default/sa/sleep`.
    pub fn principal(&self) -> String {
        self.principal_str().to_string()
    }

    /// The principal form, borrowed.
    pub fn principal_str(&self) -> &str {
        &self.0.uri[SPIFFE_SCHEME.len()..]
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.uri)
    }
}

/// Serialized as its URI.
impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_uri())
    }
}

/// Deserialized from its URI, checked.
impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_LEN {
            return Err(IdentityError::TooLong(s.len()));
        }
        let rest = s
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or_else(|| IdentityError::MissingScheme(s.to_string()))?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        check_trust_domain(trust_domain, || s.to_string())?;
        let mut parts = path.split('/');
        let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(IdentityError::BadPath(s.to_string()));
        };
        check_segment("namespace", ns)?;
        check_segment("service account", sa)?;
        Ok(assemble(
            trust_domain.to_string(),
            ns.to_string(),
            sa.to_string(),
        ))
    }
}

fn check_trust_domain(domain: &str, whole: impl Fn() -> String) -> Result<(), IdentityError> {
    if domain.is_empty() {
        return Err(IdentityError::EmptyTrustDomain(whole()));
    }
    if let Some(ch) = domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(IdentityError::InvalidTrustDomain {
            domain: domain.to_string(),
            ch,
        });
    }
    Ok(())
}

fn check_segment(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let valid = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if valid {
        Ok(())
    } else {
        Err(IdentityError::InvalidSegment {
            what,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_parts_and_formats_both_forms() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "sleep");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(
            Identity::from_principal("cluster.local/ns/default/sa/sleep"),
            Ok(id)
        );
    }

    #[test]
    fn rejects_each_malformed_shape_with_its_own_error() {
        type Check = fn(&IdentityError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("http://cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::MissingScheme(_))
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, IdentityError::EmptyTrustDomain(_))
            }),
            ("spiffe://Cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::InvalidTrustDomain { ch: 'C', .. })
            }),
            ("spiffe://cluster.local", |e| {
                matches!(e, IdentityError::BadPath(_))
            }),
            ("spiffe://cluster.local/ns/a/sa/b/extra", |e| {
                matches!(e, IdentityError::BadPath(_))
            }),
            ("spiffe://cluster.local/namespace/a/sa/b", |e| {
                matches!(e, IdentityError::BadPath(_))
            }),
            ("spiffe://cluster.local/ns//sa/b", |e| {
                matches!(
                    e,
                    IdentityError::InvalidSegment {
                        what: "namespace",
                        ..
                    }
                )
            }),
            ("spiffe://cluster.local/ns/a/sa/b c", |e| {
                matches!(
                    e,
                    IdentityError::InvalidSegment {
                        what: "service account",
                        ..
                    }
                )
            }),
            ("spiffe://cluster.local/ns/../sa/b", |e| {
                matches!(e, IdentityError::InvalidSegment { .. })
            }),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Identity>().expect_err(input);
            assert!(expected(&err), "{input}: unexpected error {err:?}");
        }
        let long = format!("spiffe://cluster.local/ns/a/sa/{}", "x".repeat(3000));
        assert!(matches!(
            long.parse::<Identity>(),
            Err(IdentityError::TooLong(_))
        ));
    }

    #[test]
    fn new_checks_parts_like_parse() {
        assert!(Identity::new("cluster.local", "ns1", "sa1").is_ok());
        assert!(Identity::new("cluster.local", "a/b", "sa1").is_err());
        assert!(Identity::new("", "a", "b").is_err());
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-][A-Za-z0-9._-]{0,30}"
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(
            td in "[a-z0-9][a-z0-9._-]{0,30}",
            ns in segment(),
            sa in segment(),
        ) {
            let id = Identity::new(td, ns, sa).expect("generated parts are valid");
            prop_assert_eq!(id.to_string().parse::<Identity>(), Ok(id.clone()));
            prop_assert_eq!(Identity::from_principal(&id.principal()), Ok(id));
        }

        #[test]
        fn parse_never_panics_and_accepted_ids_round_trip(s in ".{0,80}") {
            if let Ok(id) = s.parse::<Identity>() {
                prop_assert_eq!(id.to_string(), s);
            }
        }
    }
}
