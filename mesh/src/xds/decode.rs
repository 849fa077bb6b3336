//! Checking a response: decode every resource of its type into the [`crate::model`] (or
//! [`crate::l7authz`]) and turn it into one store batch, or say what is wrong with each.

use prost::Message;

use proto::discovery::{DeltaDiscoveryResponse, Resource};

use crate::l7authz::{L7Policy, RequestAuthn};
use crate::model::route::ServiceRoutes;
use crate::model::{Address, ModelError, Policy};
use crate::store::Batch;

/// The resource types the client knows how to decode: the node tunnel's two and the ones a
/// waypoint adds with [`super::XdsConfig::extra_types`].
pub(super) const DECODABLE_TYPES: [&str; 5] = [
    proto::ADDRESS_TYPE_URL,
    proto::AUTHORIZATION_TYPE_URL,
    proto::ROUTES_TYPE_URL,
    proto::L7_POLICY_TYPE_URL,
    proto::REQUEST_AUTHN_TYPE_URL,
];

/// A response that passed every check: the batch to apply and the version bookkeeping.
#[derive(Debug)]
pub(super) struct Accepted {
    pub(super) batch: Batch,
    /// Name → version of every resource added or changed.
    pub(super) added: Vec<(String, String)>,
    /// Names removed.
    pub(super) removed: Vec<String>,
}

/// Decodes and validates every resource of a response of a subscribed type; any failure
/// rejects the whole response, with one message per bad resource.
pub(super) fn check(response: DeltaDiscoveryResponse) -> Result<Accepted, Vec<String>> {
    let type_url = response.type_url.as_str();
    let mut batch = Batch::new();
    let mut added = Vec::with_capacity(response.resources.len());
    let mut rejects = Vec::new();
    for (index, resource) in response.resources.into_iter().enumerate() {
        let name = resource_name(&resource);
        let version = resource.version.clone();
        let label = if name.is_empty() {
            format!("resource #{index}")
        } else {
            format!("resource {name:?}")
        };
        let decoded = match type_url {
            proto::ADDRESS_TYPE_URL => {
                decode::<proto::workload::Address, Address>(type_url, &name, resource)
                    .map(|(_, a)| batch.upsert_address(a))
            }
            proto::AUTHORIZATION_TYPE_URL => {
                decode::<proto::security::Authorization, Policy>(type_url, &name, resource)
                    .map(|(_, p)| batch.upsert_policy(p))
            }
            proto::ROUTES_TYPE_URL => {
                decode::<proto::waypoint::ServiceRoutes, ServiceRoutes>(type_url, &name, resource)
                    .map(|(_, r)| batch.upsert_routes(r))
            }
            proto::L7_POLICY_TYPE_URL => {
                decode::<proto::waypoint::L7Policy, L7Policy>(type_url, &name, resource)
                    .map(|(_, p)| batch.upsert_l7_policy(p))
            }
            proto::REQUEST_AUTHN_TYPE_URL => {
                decode::<proto::waypoint::RequestAuthn, RequestAuthn>(type_url, &name, resource)
                    .map(|(_, a)| batch.upsert_request_authn(a))
            }
            other => Err(format!(
                "has type {other:?}, which this client cannot decode"
            )),
        };
        match decoded {
            Ok(_) => added.push((name, version)),
            Err(reason) => rejects.push(format!("{label}: {reason}")),
        }
    }
    if !rejects.is_empty() {
        return Err(rejects);
    }
    let removed: Vec<String> = response
        .removed_resources
        .into_iter()
        .chain(response.removed_resource_names.into_iter().map(|r| r.name))
        .collect();
    for name in &removed {
        match type_url {
            proto::ADDRESS_TYPE_URL => batch.remove_address(name.clone()),
            proto::AUTHORIZATION_TYPE_URL => batch.remove_policy(name.clone()),
            proto::ROUTES_TYPE_URL => batch.remove_routes(name.clone()),
            proto::L7_POLICY_TYPE_URL => batch.remove_l7_policy(name.clone()),
            _ => batch.remove_request_authn(name.clone()),
        };
    }
    Ok(Accepted {
        batch,
        added,
        removed,
    })
}

/// Model values that are xDS resources, with the name the control plane must give them.
trait Named {
    fn xds_name(&self) -> String;
}

impl Named for Address {
    fn xds_name(&self) -> String {
        self.resource_name()
    }
}

impl Named for Policy {
    fn xds_name(&self) -> String {
        self.key()
    }
}

impl Named for L7Policy {
    fn xds_name(&self) -> String {
        self.key()
    }
}

impl Named for RequestAuthn {
    fn xds_name(&self) -> String {
        self.key()
    }
}

impl Named for ServiceRoutes {
    fn xds_name(&self) -> String {
        self.key().to_string()
    }
}

/// Decodes one resource's body as `W`, converts it to `M` and checks that its name matches its
/// content. Returns the name and the value, or why not.
fn decode<W, M>(type_url: &str, name: &str, resource: Resource) -> Result<(String, M), String>
where
    W: Message + Default,
    M: TryFrom<W, Error = ModelError> + Named,
{
    if name.is_empty() {
        return Err("has no name".into());
    }
    let Some(body) = resource.resource else {
        return Err("has no body".into());
    };
    if body.type_url != type_url {
        return Err(format!(
            "has type {:?} in a response of type {type_url:?}",
            body.type_url
        ));
    }
    let wire = W::decode(body.value.as_slice())
        .map_err(|e| format!("cannot be decoded as {type_url}: {e}"))?;
    let value = M::try_from(wire).map_err(|e| format!("is invalid: {e}"))?;
    let expected = value.xds_name();
    if expected != name {
        return Err(format!(
            "is named {name:?} but its content is named {expected:?}"
        ));
    }
    Ok((name.to_string(), value))
}

/// The resource's name (the newer `resource_name` field when `name` is empty).
fn resource_name(resource: &Resource) -> String {
    if !resource.name.is_empty() {
        return resource.name.clone();
    }
    resource
        .resource_name
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default()
}
