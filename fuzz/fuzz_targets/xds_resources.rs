//! xDS resources as ztunnel (and the waypoint) decode them: protobuf bytes of each type the
//! client subscribes to, converted into mesh's model and applied to a store.
//!
//! Input layout: byte 0 picks the type (Address, Authorization, ServiceRoutes, L7 policy,
//! RequestAuthentication); the rest is the resource. Never panics; whatever converts is
//! applied to a store and looked up again, as the proxies do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::l7authz::{L7Policy, RequestAuthn};
use mesh::model::route::ServiceRoutes;
use mesh::model::{Address, Policy};
use mesh::store::{Batch, Store};
use prost::Message;

fn convert<P: Message + Default, M: TryFrom<P>>(bytes: &[u8]) -> Option<M> {
    M::try_from(P::decode(bytes).ok()?).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let mut batch = Batch::new();
    let mut lookups = Vec::new();
    match kind % 5 {
        0 => {
            let Some(a) = convert::<proto::workload::Address, Address>(bytes) else {
                return;
            };
            lookups.push(a.clone());
            batch.upsert_address(a);
        }
        1 => {
            let Some(p) = convert::<proto::security::Authorization, Policy>(bytes) else {
                return;
            };
            batch.upsert_policy(p);
        }
        2 => {
            let Some(r) = convert::<proto::waypoint::ServiceRoutes, ServiceRoutes>(bytes) else {
                return;
            };
            batch.upsert_routes(r);
        }
        3 => {
            let Some(p) = convert::<proto::waypoint::L7Policy, L7Policy>(bytes) else {
                return;
            };
            batch.upsert_l7_policy(p);
        }
        _ => {
            let Some(p) = convert::<proto::waypoint::RequestAuthn, RequestAuthn>(bytes) else {
                return;
            };
            batch.upsert_request_authn(p);
        }
    }
    let store = Store::new();
    store.apply(batch);
    for a in lookups {
        match a {
            Address::Workload(w) => {
                let _ = store.workload(&w.uid);
                for ip in &w.addresses {
                    let _ = store.workload_by_ip(&w.network, *ip);
                }
            }
            Address::Service(s) => {
                let _ = store.endpoints_of(&s.key());
            }
        }
    }
});
