//! The L7 routes of services in the store: written by the xDS client of a waypoint (node
//! tunnels never subscribe to them, so their stores hold none).

use std::sync::Arc;

use super::{Batch, Op, Store};
use crate::model::route::ServiceRoutes;

impl Batch {
    /// Inserts or replaces the routes of the service [`ServiceRoutes::key`].
    pub fn upsert_routes(&mut self, routes: ServiceRoutes) -> &mut Self {
        self.ops.push(Op::UpsertRoutes(Arc::new(routes)));
        self
    }

    /// Removes the routes of the service `service_key` (`<namespace>/<hostname>`), if any.
    pub fn remove_routes(&mut self, service_key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::RemoveRoutes(service_key.into()));
        self
    }
}

impl Store {
    /// The L7 routes of the service `service_key` (`<namespace>/<hostname>`); `None` when the
    /// service has no routing config (requests then go to the service itself).
    pub fn routes(&self, service_key: &str) -> Option<Arc<ServiceRoutes>> {
        self.read().routes.get(service_key).cloned()
    }

    /// The keys of every service that has routes, sorted.
    pub fn routed_services(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.read().routes.keys().cloned().collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(service: &str) -> ServiceRoutes {
        ServiceRoutes::try_from(proto::waypoint::ServiceRoutes {
            service: service.into(),
            ..Default::default()
        })
        .expect("valid")
    }

    #[test]
    fn routes_are_upserted_replaced_and_removed_by_service_key() {
        let store = Store::new();
        let key = "shop/reviews.shop.svc.cluster.local";
        assert!(store.routes(key).is_none());
        let v1 = store.apply({
            let mut b = Batch::new();
            b.upsert_routes(routes(key)).upsert_routes(routes("a/b"));
            b
        });
        assert_eq!(
            store.routes(key).map(|r| r.service.clone()).as_deref(),
            Some(key)
        );
        assert_eq!(
            store.routed_services(),
            vec!["a/b".to_string(), key.to_string()]
        );
        let v2 = store.apply({
            let mut b = Batch::new();
            b.remove_routes(key);
            b
        });
        assert!(v2 > v1);
        assert!(store.routes(key).is_none());
        assert!(store.routes("a/b").is_some());
    }
}
