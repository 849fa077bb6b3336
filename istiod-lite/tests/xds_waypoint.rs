//! The waypoint types over delta ADS: AuthorizationPolicies with `targetRefs` and
//! RequestAuthentications from the config directory reach a client that subscribes to
//! `L7Policy` and `RequestAuthn`, and never a node tunnel, which does not.

mod support;

use mesh::l7authz::{evaluate, L7Request, WaypointContext};
use mesh::xds::WAYPOINT_POLICY_TYPES;

use support::cluster::{documents, web_pod, NAMESPACE_APPS, SERVICE_WEB};
use support::*;

const WAYPOINT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#;

const DENY_ADMIN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: apps}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

/// The P-256 public key of RFC 7517 appendix A.1.
const REQUEST_AUTHN: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  jwtRules:
  - issuer: https://idp.example
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}'
"#;

const WEB: &str = "apps/web.apps.svc.cluster.local";

fn request(path: &str) -> L7Request {
    L7Request {
        source_identity: None,
        source_ip: "10.0.0.9".parse().expect("ip"),
        remote_ip: None,
        destination_ip: None,
        destination_port: 80,
        host: "web.apps.svc.cluster.local".into(),
        method: "GET".into(),
        path: path.into(),
        headers: http::HeaderMap::new(),
        auth: None,
    }
}

#[tokio::test]
async fn a_targeted_policy_reaches_a_subscribed_waypoint_and_never_ztunnel() {
    let env = Env::new();
    let file = env.config_dir.join("cluster.yaml");
    let base = documents(&[NAMESPACE_APPS, &web_pod(1), SERVICE_WEB, WAYPOINT]);
    std::fs::write(&file, documents(&[&base, DENY_ADMIN, REQUEST_AUTHN])).expect("write");
    let server = env.start_from_dir().await;
    let waypoint = server.proxy_with_types(NODE1_TOKEN, WAYPOINT_POLICY_TYPES.to_vec());
    let ztunnel = server.proxy(NODE2_TOKEN);

    eventually(
        "the waypoint holds the L7 policy and the RequestAuthn",
        || {
            waypoint.store.l7_policy("apps/deny-admin").is_some()
                && waypoint.status.borrow().is_synced()
                && waypoint.store.snapshot().request_authns.len() == 1
        },
    )
    .await;
    let at = WaypointContext {
        namespace: "apps",
        name: "waypoint",
        service: Some(WEB),
    };
    let policies = waypoint.store.l7_policies_for(&at);
    let denied = evaluate(&policies, &request("/admin/users"));
    assert!(!denied.allowed);
    assert_eq!(
        denied.to_string(),
        "denied by DENY policy apps/deny-admin (rule 0)"
    );
    assert!(evaluate(&policies, &request("/")).allowed);
    assert_eq!(waypoint.store.request_authns_for(&at).len(), 1);

    eventually("the node tunnel is synced", || {
        ztunnel.status.borrow().is_synced() && !ztunnel.store.snapshot().workloads.is_empty()
    })
    .await;
    let held = ztunnel.store.snapshot();
    assert!(held.l7_policies.is_empty() && held.request_authns.is_empty());
    assert!(
        held.policies.iter().all(|p| p.name != "deny-admin"),
        "a targetRefs policy is not for ztunnel: {:?}",
        held.policies
    );

    // Removing the policy from the directory removes it from the waypoint.
    std::fs::write(&file, documents(&[&base, REQUEST_AUTHN])).expect("write");
    eventually("the waypoint drops the removed policy", || {
        waypoint.store.l7_policy("apps/deny-admin").is_none()
    })
    .await;
    assert!(evaluate(&waypoint.store.l7_policies_for(&at), &request("/admin")).allowed);
    server.stop().await;
}

#[tokio::test]
async fn a_stream_that_does_not_subscribe_gets_no_waypoint_types() {
    let env = Env::new();
    std::fs::write(
        env.config_dir.join("cluster.yaml"),
        documents(&[NAMESPACE_APPS, SERVICE_WEB, WAYPOINT, DENY_ADMIN]),
    )
    .expect("write");
    let server = env.start_from_dir().await;
    let (mut raw, _, _) = server.handshake(NODE1_TOKEN).await;
    raw.expect_silence().await;

    let mut waypoint = server
        .subscribed(NODE2_TOKEN, &[proto::L7_POLICY_TYPE_URL])
        .await;
    let response = waypoint.recv_type(proto::L7_POLICY_TYPE_URL).await;
    let names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["apps/deny-admin"]);
    server.stop().await;
}
