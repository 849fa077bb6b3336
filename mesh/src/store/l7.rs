//! The waypoint's part of the store: L7 policies and RequestAuthns by key, and which of them
//! apply to a request through a given waypoint to a given service.

use std::collections::HashMap;
use std::sync::Arc;

use crate::l7authz::{
    authenticate, evaluate, jwt, Checked, L7Policy, L7Request, RequestAuthn, WaypointContext,
};

/// L7 policies and RequestAuthns, by `<namespace>/<name>`.
#[derive(Debug, Default)]
pub(super) struct L7Index {
    pub(super) policies: HashMap<String, Arc<L7Policy>>,
    pub(super) authns: HashMap<String, Arc<RequestAuthn>>,
}

impl L7Index {
    pub(super) fn upsert_policy(&mut self, p: Arc<L7Policy>) {
        self.policies.insert(p.key(), p);
    }

    pub(super) fn remove_policy(&mut self, key: &str) {
        self.policies.remove(key);
    }

    pub(super) fn upsert_authn(&mut self, a: Arc<RequestAuthn>) {
        self.authns.insert(a.key(), a);
    }

    pub(super) fn remove_authn(&mut self, key: &str) {
        self.authns.remove(key);
    }

    /// The policies that apply at `at`, sorted by key.
    pub(super) fn policies_for(&self, at: &WaypointContext<'_>) -> Vec<Arc<L7Policy>> {
        let mut out: Vec<Arc<L7Policy>> = self
            .policies
            .values()
            .filter(|p| p.target.applies(&p.namespace, at))
            .cloned()
            .collect();
        out.sort_by_key(|p| p.key());
        out
    }

    /// The RequestAuthns that apply at `at`, sorted by key.
    pub(super) fn authns_for(&self, at: &WaypointContext<'_>) -> Vec<Arc<RequestAuthn>> {
        let mut out: Vec<Arc<RequestAuthn>> = self
            .authns
            .values()
            .filter(|a| a.applies(at))
            .cloned()
            .collect();
        out.sort_by_key(|a| a.key());
        out
    }
}

impl super::Store {
    /// The whole L7 check of one request at a waypoint, as its request filter runs it: the
    /// RequestAuthns in scope at `at` check the request's tokens (a bad one is an error: answer
    /// 401 with [`jwt::JwtError::response_body`]); the principal found fills `request.auth`;
    /// then the L7 policies in scope decide ([`Checked::decision`]: answer 403 with
    /// `l7authz::DENIED_BODY`, or gRPC status `l7authz::DENIED_GRPC_STATUS`, when not
    /// allowed). `query` is the request target after `?`; `now` seconds since the Unix epoch.
    pub fn l7_check(
        &self,
        at: &WaypointContext<'_>,
        request: &mut L7Request,
        query: Option<&str>,
        now: u64,
    ) -> Result<Checked, jwt::JwtError> {
        let authns = self.request_authns_for(at);
        let authenticated = authenticate(&authns, &request.headers, query, now)?;
        request.auth = authenticated.auth.clone();
        let policies = self.l7_policies_for(at);
        let decision = evaluate(&policies, request);
        Ok(Checked {
            policies: policies.iter().map(|p| p.key()).collect(),
            decision,
            authenticated,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::l7authz::{L7Action, L7Policy, L7Scope, L7Target, RequestAuthn, WaypointContext};
    use crate::store::{Batch, Store, StoreSnapshot};

    fn policy(ns: &str, name: &str, scope: L7Scope, targets: &[&str]) -> L7Policy {
        let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
        let (gateways, services) = match scope {
            L7Scope::Service => (vec![], targets),
            _ => (targets, vec![]),
        };
        L7Policy {
            name: name.into(),
            namespace: ns.into(),
            target: L7Target {
                scope,
                gateways,
                services,
            },
            action: L7Action::Deny,
            dry_run: false,
            rules: vec![],
        }
    }

    const WEB: &str = "shop/web.shop.svc.cluster.local";

    fn keys(store: &Store, at: &WaypointContext<'_>) -> Vec<String> {
        store.l7_policies_for(at).iter().map(|p| p.key()).collect()
    }

    #[test]
    fn l7_policies_for_gathers_root_waypoint_and_service_scopes() {
        let store = Store::new();
        let mut b = Batch::new();
        b.upsert_l7_policy(policy("istio-system", "root", L7Scope::Root, &[]))
            .upsert_l7_policy(policy("shop", "ns-wide", L7Scope::Waypoint, &[]))
            .upsert_l7_policy(policy("shop", "gw", L7Scope::Waypoint, &["waypoint"]))
            .upsert_l7_policy(policy("shop", "other-gw", L7Scope::Waypoint, &["other"]))
            .upsert_l7_policy(policy("shop", "svc", L7Scope::Service, &[WEB]))
            .upsert_l7_policy(policy("bank", "elsewhere", L7Scope::Waypoint, &[]));
        store.apply(b);
        let at = WaypointContext {
            namespace: "shop",
            name: "waypoint",
            service: Some(WEB),
        };
        assert_eq!(
            keys(&store, &at),
            ["istio-system/root", "shop/gw", "shop/ns-wide", "shop/svc"]
        );
        let direct = WaypointContext {
            service: None,
            ..at
        };
        assert_eq!(
            keys(&store, &direct),
            ["istio-system/root", "shop/gw", "shop/ns-wide"]
        );

        let mut b = Batch::new();
        b.remove_l7_policy("shop/gw").remove_l7_policy("shop/svc");
        store.apply(b);
        assert_eq!(keys(&store, &at), ["istio-system/root", "shop/ns-wide"]);
        assert!(store.l7_policy("shop/gw").is_none());
        assert!(store.l7_policy("shop/ns-wide").is_some());
    }

    #[test]
    fn request_authns_follow_the_same_scopes_and_survive_a_snapshot() {
        let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let authn = RequestAuthn {
            name: "jwt".into(),
            namespace: "shop".into(),
            target: L7Target {
                scope: L7Scope::Service,
                gateways: vec![],
                services: vec![WEB.into()],
            },
            jwt_rules: vec![crate::l7authz::JwtRule {
                issuer: "iss".into(),
                audiences: vec![],
                jwks: crate::l7authz::jwt::Jwks::parse(jwks).expect("jwks"),
                from_headers: vec![],
                from_params: vec![],
                forward_original_token: false,
                output_claim_to_headers: vec![],
            }],
        };
        let store = Store::new();
        let mut b = Batch::new();
        b.upsert_request_authn(authn.clone())
            .upsert_l7_policy(policy("shop", "p", L7Scope::Waypoint, &[]));
        store.apply(b);
        let at = WaypointContext {
            namespace: "shop",
            name: "waypoint",
            service: Some(WEB),
        };
        assert_eq!(store.request_authns_for(&at).len(), 1);
        let other = WaypointContext {
            service: Some("shop/api.shop.svc.cluster.local"),
            ..at
        };
        assert!(store.request_authns_for(&other).is_empty());

        let snap = store.snapshot();
        assert_eq!(snap.request_authns, [authn]);
        let json = serde_json::to_string(&snap).expect("json");
        let back: StoreSnapshot = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, snap);
        let rebuilt = Store::from_snapshot(back);
        assert_eq!(rebuilt.request_authns_for(&at).len(), 1);
        assert_eq!(rebuilt.l7_policies_for(&at).len(), 1);

        let mut b = Batch::new();
        b.remove_request_authn("shop/jwt");
        store.apply(b);
        assert!(store.request_authns_for(&at).is_empty());
    }
}
