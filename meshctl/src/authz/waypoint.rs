//! The waypoint half of `meshctl authz check`: which waypoint a request goes through
//! ([`Hop`]), and what that waypoint's L7 policies decide on it ([`check`]).
//!
//! As for the L4 half, the verdict comes from the proxy's own config: the caller fetches the
//! waypoint's `/config_dump`, and [`check`] rebuilds its store and runs [`Store::l7_check`],
//! the very call the waypoint's request filter makes (RequestAuthentication first, then the
//! L7 AuthorizationPolicies in scope at the waypoint for the destination service).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use http::{HeaderMap, HeaderName, HeaderValue};
use mesh::l7authz::{L7Decision, L7Request, WaypointContext};
use mesh::model::GatewayAddress;
use mesh::store::Store;
use mesh::Identity;

use super::{reason_line, verdict};

/// A waypoint on the way to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// Its namespace.
    pub namespace: String,
    /// Its name (its Gateway's).
    pub name: String,
    /// The identity its instances present, which the destination's ztunnel sees as the peer.
    pub identity: Identity,
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Hop {
    /// The waypoint that serves `gw`, from `store`; fails when it has no instance there.
    pub fn resolve(store: &Store, gw: &GatewayAddress) -> anyhow::Result<Hop> {
        let instances = store.waypoint_instances(gw);
        let (namespace, name) = match (store.waypoint_service(gw), instances.first()) {
            (Some(s), _) => (s.namespace.clone(), s.name.clone()),
            (None, Some(w)) => (w.namespace().to_string(), w.name.clone()),
            (None, None) => bail!("the waypoint at {gw:?} is unknown to this proxy"),
        };
        let Some(instance) = instances.first() else {
            bail!(
                "waypoint {namespace}/{name} has no instance this proxy knows of (is it running? \
                 see `meshctl waypoint list`)"
            );
        };
        Ok(Hop {
            namespace,
            name,
            identity: instance.identity.clone(),
        })
    }
}

/// The HTTP request to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path, possibly with a query.
    pub path: String,
    /// `Host` / `:authority`; `None`: the service's host name, or the pod's address.
    pub host: Option<String>,
    /// Headers, `(name, value)`.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// `NAME: VALUE` (as `curl -H` takes it) into a header.
    pub fn parse_header(s: &str) -> anyhow::Result<(String, String)> {
        match s.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() => {
                Ok((name.trim().to_string(), value.trim().to_string()))
            }
            _ => bail!("header {s:?}: expected NAME: VALUE"),
        }
    }

    fn header_map(&self) -> anyhow::Result<HeaderMap> {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::try_from(name.as_str())
                .with_context(|| format!("{name:?} is not a header name"))?;
            let value = HeaderValue::try_from(value.as_str())
                .with_context(|| format!("{value:?} is not a header value"))?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// How the waypoint answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The policies decided (403 when denied).
    Decided(L7Decision),
    /// A token came with the request and is not valid: 401, before any policy.
    Unauthenticated(String),
}

/// The waypoint's verdict on one request.
#[derive(Debug, Clone, PartialEq)]
pub struct L7Report {
    /// The waypoint.
    pub waypoint: Hop,
    /// The destination service's key, for a request addressed to a service.
    pub service: Option<String>,
    /// The request as judged: method, host and path.
    pub method: String,
    /// The host the request names.
    pub host: String,
    /// The path.
    pub path: String,
    /// The L7 policies in scope, in evaluation order.
    pub policies: Vec<String>,
    /// The outcome.
    pub verdict: Verdict,
}

impl L7Report {
    /// Whether the request goes on to the destination.
    pub fn allowed(&self) -> bool {
        matches!(&self.verdict, Verdict::Decided(d) if d.allowed)
    }
}

impl fmt::Display for L7Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} at waypoint {}: {} {}{}",
            verdict(self.allowed()),
            self.waypoint,
            self.method,
            self.host,
            self.path
        )?;
        match &self.verdict {
            Verdict::Decided(d) => {
                writeln!(f, "  {}", reason_line(&d.reason))?;
                if let Some(a) = &d.audit {
                    writeln!(
                        f,
                        "  audited by: AUDIT policy {}, rule {}",
                        a.policy, a.rule
                    )?;
                }
                if let Some(dry) = &d.dry_run {
                    writeln!(
                        f,
                        "  if dry-run policies were enforced: {}, {}",
                        verdict(dry.allowed),
                        reason_line(&dry.reason)
                    )?;
                }
            }
            Verdict::Unauthenticated(why) => {
                writeln!(f, "  refused with 401 before policy: {why}")?;
            }
        }
        if self.policies.is_empty() {
            write!(f, "  L7 policies in scope: none")
        } else {
            write!(f, "  L7 policies in scope: {}", self.policies.join(", "))
        }
    }
}

/// What the waypoint `hop` decides on `request` from `client` (its identity in the mesh) at
/// `from`, to `to` (the address the client dialled: a service VIP and port, or a pod's), for
/// service `service` (its key) if the request is addressed to one; under `dump`, the
/// waypoint's `/config_dump`.
pub fn check(
    dump: &serde_json::Value,
    hop: &Hop,
    service: Option<(&str, &str)>,
    client: Option<&Identity>,
    from: IpAddr,
    to: SocketAddr,
    request: &HttpRequest,
) -> anyhow::Result<L7Report> {
    let store = super::store_of(dump)?;
    let at = WaypointContext {
        namespace: &hop.namespace,
        name: &hop.name,
        service: service.map(|(key, _)| key),
    };
    let host = request.host.clone().unwrap_or_else(|| match service {
        Some((_, hostname)) => hostname.to_string(),
        None => to.to_string(),
    });
    let mut l7 = L7Request {
        source_identity: client.cloned(),
        source_ip: from,
        remote_ip: Some(from),
        destination_ip: Some(to.ip()),
        destination_port: to.port(),
        host: host.clone(),
        method: request.method.clone(),
        path: request.path.clone(),
        headers: request.header_map()?,
        auth: None,
    };
    let query = request.path.split_once('?').map(|(_, q)| q);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (policies, verdict) = match store.l7_check(&at, &mut l7, query, now) {
        Ok(checked) => (checked.policies, Verdict::Decided(checked.decision)),
        Err(e) => (
            store.l7_policies_for(&at).iter().map(|p| p.key()).collect(),
            Verdict::Unauthenticated(e.to_string()),
        ),
    };
    Ok(L7Report {
        waypoint: hop.clone(),
        service: service.map(|(key, _)| key.to_string()),
        method: request.method.clone(),
        host,
        path: request.path.clone(),
        policies,
        verdict,
    })
}
