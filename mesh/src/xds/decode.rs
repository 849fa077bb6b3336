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

impl ResourceType {
    /// The type whose resources are the model values `M`.
    const fn of<M: XdsResource>() -> Self {
        ResourceType {
            type_url: M::TYPE_URL,
            decode: decode_into::<M>,
            remove: M::remove,
        }
    }
}

/// `istio.workload.Address`: workloads and services.
pub const ADDRESSES: ResourceType = ResourceType::of::<Address>();

/// `istio.security.Authorization`: L4 authorization policies.
pub const AUTHORIZATIONS: ResourceType = ResourceType::of::<Policy>();

/// A waypoint's L7 routes, one resource per service.
pub const ROUTES: ResourceType = ResourceType::of::<ServiceRoutes>();

/// A waypoint's L7 authorization policies.
pub const L7_POLICIES: ResourceType = ResourceType::of::<L7Policy>();

/// A waypoint's RequestAuthentications (JWT rules).
pub const REQUEST_AUTHNS: ResourceType = ResourceType::of::<RequestAuthn>();

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

/// A model value that is the resource of one xDS type: its wire message, the name the control
/// plane must give it, and how it enters or leaves a store batch.
trait XdsResource: TryFrom<Self::Wire, Error = ModelError> {
    type Wire: Message + Default;
    const TYPE_URL: &'static str;
    fn xds_name(&self) -> String;
    fn upsert(self, batch: &mut Batch);
    fn remove(batch: &mut Batch, name: String);
}

impl XdsResource for Address {
    type Wire = proto::workload::Address;
    const TYPE_URL: &'static str = proto::ADDRESS_TYPE_URL;
    fn xds_name(&self) -> String {
        self.resource_name()
    }
    fn upsert(self, batch: &mut Batch) {
        batch.upsert_address(self);
    }
    fn remove(batch: &mut Batch, name: String) {
        batch.remove_address(name);
    }
}

impl XdsResource for Policy {
    type Wire = proto::security::Authorization;
    const TYPE_URL: &'static str = proto::AUTHORIZATION_TYPE_URL;
    fn xds_name(&self) -> String {
        self.key()
    }
    fn upsert(self, batch: &mut Batch) {
        batch.upsert_policy(self);
    }
    fn remove(batch: &mut Batch, name: String) {
        batch.remove_policy(name);
    }
}

impl XdsResource for ServiceRoutes {
    type Wire = proto::waypoint::ServiceRoutes;
    const TYPE_URL: &'static str = proto::ROUTES_TYPE_URL;
    fn xds_name(&self) -> String {
        self.key().to_string()
    }
    fn upsert(self, batch: &mut Batch) {
        batch.upsert_routes(self);
    }
    fn remove(batch: &mut Batch, name: String) {
        batch.remove_routes(name);
    }
}

impl XdsResource for L7Policy {
    type Wire = proto::waypoint::L7Policy;
    const TYPE_URL: &'static str = proto::L7_POLICY_TYPE_URL;
    fn xds_name(&self) -> String {
        self.key()
    }
    fn upsert(self, batch: &mut Batch) {
        batch.upsert_l7_policy(self);
    }
    fn remove(batch: &mut Batch, name: String) {
        batch.remove_l7_policy(name);
    }
}

impl XdsResource for RequestAuthn {
    type Wire = proto::waypoint::RequestAuthn;
    const TYPE_URL: &'static str = proto::REQUEST_AUTHN_TYPE_URL;
    fn xds_name(&self) -> String {
        self.key()
    }
    fn upsert(self, batch: &mut Batch) {
        batch.upsert_request_authn(self);
    }
    fn remove(batch: &mut Batch, name: String) {
        batch.remove_request_authn(name);
    }
}

/// [`ResourceType`]'s decoder for `M`: decodes one resource and adds it to `batch`.
fn decode_into<M: XdsResource>(
    name: &str,
    resource: Resource,
    batch: &mut Batch,
) -> Result<(), String> {
    decode::<M>(name, resource)?.upsert(batch);
    Ok(())
}

/// Decodes one resource's body as `M`'s wire message, converts it to `M` and checks that its
/// name matches its content. Returns the value, or why not.
fn decode<M: XdsResource>(name: &str, resource: Resource) -> Result<M, String> {
    let type_url = M::TYPE_URL;
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
    let wire = M::Wire::decode(body.value.as_slice())
        .map_err(|e| format!("cannot be decoded as {type_url}: {e}"))?;
    let value = M::try_from(wire).map_err(|e| format!("is invalid: {e}"))?;
    let expected = value.xds_name();
    if expected != name {
        return Err(format!(
            "is named {name:?} but its content is named {expected:?}"
        ));
    }
    Ok(value)
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
