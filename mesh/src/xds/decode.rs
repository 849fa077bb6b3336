//! Checking a response: decode every resource of its type into the [`crate::model`] (or
//! [`crate::l7authz`]) and turn it into one store batch, or say what is wrong with each.

use prost::Message;

use proto::discovery::{DeltaDiscoveryResponse, Resource};

use crate::l7authz::{L7Policy, RequestAuthn};
use crate::model::route::ServiceRoutes;
use crate::model::{Address, ModelError, Policy};
use crate::store::Batch;

/// A resource type the client can subscribe to: its type URL and how its resources become
/// (or stop being) part of a store batch. Only the values defined here exist, so a client
/// cannot subscribe to a type it cannot decode; and a proxy that never names the L7 types (the
/// node tunnel) links none of their model (route regexes, L7 policies).
#[derive(Clone, Copy)]
pub struct ResourceType {
    type_url: &'static str,
    decode: fn(&str, Resource, &mut Batch) -> Result<(), String>,
    remove: fn(&mut Batch, String),
}

impl ResourceType {
    /// The type URL subscribed to, e.g. `type.googleapis.com/istio.workload.Address`.
    pub fn type_url(&self) -> &'static str {
        self.type_url
    }
}

impl PartialEq for ResourceType {
    fn eq(&self, other: &Self) -> bool {
        self.type_url == other.type_url
    }
}

impl Eq for ResourceType {}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.type_url)
    }
}

/// `istio.workload.Address`: workloads and services.
pub const ADDRESSES: ResourceType = ResourceType {
    type_url: proto::ADDRESS_TYPE_URL,
    decode: |name, resource, batch| {
        let (_, a) =
            decode::<proto::workload::Address, Address>(proto::ADDRESS_TYPE_URL, name, resource)?;
        batch.upsert_address(a);
        Ok(())
    },
    remove: |batch, name| {
        batch.remove_address(name);
    },
};

/// `istio.security.Authorization`: L4 authorization policies.
pub const AUTHORIZATIONS: ResourceType = ResourceType {
    type_url: proto::AUTHORIZATION_TYPE_URL,
    decode: |name, resource, batch| {
        let (_, p) = decode::<proto::security::Authorization, Policy>(
            proto::AUTHORIZATION_TYPE_URL,
            name,
            resource,
        )?;
        batch.upsert_policy(p);
        Ok(())
    },
    remove: |batch, name| {
        batch.remove_policy(name);
    },
};

/// A waypoint's L7 routes, one resource per service.
pub const ROUTES: ResourceType = ResourceType {
    type_url: proto::ROUTES_TYPE_URL,
    decode: |name, resource, batch| {
        let (_, r) = decode::<proto::waypoint::ServiceRoutes, ServiceRoutes>(
            proto::ROUTES_TYPE_URL,
            name,
            resource,
        )?;
        batch.upsert_routes(r);
        Ok(())
    },
    remove: |batch, name| {
        batch.remove_routes(name);
    },
};

/// A waypoint's L7 authorization policies.
pub const L7_POLICIES: ResourceType = ResourceType {
    type_url: proto::L7_POLICY_TYPE_URL,
    decode: |name, resource, batch| {
        let (_, p) = decode::<proto::waypoint::L7Policy, L7Policy>(
            proto::L7_POLICY_TYPE_URL,
            name,
            resource,
        )?;
        batch.upsert_l7_policy(p);
        Ok(())
    },
    remove: |batch, name| {
        batch.remove_l7_policy(name);
    },
};

/// A waypoint's RequestAuthentications (JWT rules).
pub const REQUEST_AUTHNS: ResourceType = ResourceType {
    type_url: proto::REQUEST_AUTHN_TYPE_URL,
    decode: |name, resource, batch| {
        let (_, a) = decode::<proto::waypoint::RequestAuthn, RequestAuthn>(
            proto::REQUEST_AUTHN_TYPE_URL,
            name,
            resource,
        )?;
        batch.upsert_request_authn(a);
        Ok(())
    },
    remove: |batch, name| {
        batch.remove_request_authn(name);
    },
};

/// A response that passed every check: the batch to apply and the version bookkeeping.
#[derive(Debug)]
pub(super) struct Accepted {
    pub(super) batch: Batch,
    /// Name → version of every resource added or changed.
    pub(super) added: Vec<(String, String)>,
    /// Names removed.
    pub(super) removed: Vec<String>,
}

/// Decodes and validates every resource of a response of `kind` (the type it was sent as);
/// any failure rejects the whole response, with one message per bad resource.
pub(super) fn check(
    kind: ResourceType,
    response: DeltaDiscoveryResponse,
) -> Result<Accepted, Vec<String>> {
    let mut batch = Batch::new();
    let mut added = Vec::with_capacity(response.resources.len());
    let mut rejects = Vec::new();
    for (index, resource) in response.resources.into_iter().enumerate() {
        let name = resource_name(&resource);
        let version = resource.version.clone();
        match (kind.decode)(&name, resource, &mut batch) {
            Ok(()) => added.push((name, version)),
            Err(reason) if name.is_empty() => rejects.push(format!("resource #{index}: {reason}")),
            Err(reason) => rejects.push(format!("resource {name:?}: {reason}")),
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
        (kind.remove)(&mut batch, name.clone());
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
