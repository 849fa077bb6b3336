//! Checking one delta ADS response: decode every resource, convert it into the model, check
//! its name; any failure rejects the whole response (NACK), naming each bad resource.

use prost::Message;

use proto::discovery::{DeltaDiscoveryResponse, Resource};

use crate::model::route::ServiceRoutes;
use crate::model::{Address, Policy};
use crate::store::Batch;

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
    let kind = match response.type_url.as_str() {
        proto::ADDRESS_TYPE_URL => Kind::Address,
        proto::ROUTES_TYPE_URL => Kind::Routes,
        _ => Kind::Authorization,
    };
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
        let type_url = response.type_url.as_str();
        let decoded = match kind {
            Kind::Address => decode::<proto::workload::Address, Address>(type_url, &name, resource)
                .map(|(key, a)| (key, Decoded::Address(Box::new(a)))),
            Kind::Authorization => {
                decode::<proto::security::Authorization, Policy>(type_url, &name, resource)
                    .map(|(key, p)| (key, Decoded::Policy(Box::new(p))))
            }
            Kind::Routes => {
                decode::<proto::waypoint::ServiceRoutes, ServiceRoutes>(type_url, &name, resource)
                    .map(|(key, r)| (key, Decoded::Routes(Box::new(r))))
            }
        };
        match decoded {
            Ok((name, Decoded::Address(a))) => {
                batch.upsert_address(*a);
                added.push((name, version));
            }
            Ok((name, Decoded::Policy(p))) => {
                batch.upsert_policy(*p);
                added.push((name, version));
            }
            Ok((name, Decoded::Routes(r))) => {
                batch.upsert_routes(*r);
                added.push((name, version));
            }
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
        match kind {
            Kind::Address => batch.remove_address(name.clone()),
            Kind::Authorization => batch.remove_policy(name.clone()),
            Kind::Routes => batch.remove_routes(name.clone()),
        };
    }
    Ok(Accepted {
        batch,
        added,
        removed,
    })
}

/// The resource type of a response.
#[derive(Clone, Copy)]
enum Kind {
    Address,
    Authorization,
    Routes,
}

enum Decoded {
    Address(Box<Address>),
    Policy(Box<Policy>),
    Routes(Box<ServiceRoutes>),
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
    M: TryFrom<W, Error = crate::model::ModelError> + Named,
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
