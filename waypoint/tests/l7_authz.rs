//! L7 AuthorizationPolicy and RequestAuthentication at the waypoint: a denied request gets 403
//! `RBAC: access denied` (gRPC: status 7), an invalid token 401 (gRPC: 16), a valid one a
//! request principal that policy can require.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh::l7authz::{L7Policy, RequestAuthn};
use mesh::store::Batch;
use mesh::testing::JwtIssuer;
use serde_json::json;
use support::*;

fn policy(name: &str, action: &str, rules: serde_json::Value) -> L7Policy {
    serde_json::from_value(json!({
        "name": name, "namespace": "default", "target": {"scope": "WAYPOINT"},
        "action": action, "dryRun": false, "rules": rules,
    }))
    .expect("policy")
}

fn apply(h: &Harness, policies: Vec<L7Policy>, authns: Vec<RequestAuthn>) {
    let mut batch = Batch::new();
    for p in policies {
        batch.upsert_l7_policy(p);
    }
    for a in authns {
        batch.upsert_request_authn(a);
    }
    h.store.apply(batch);
}

async fn get(h: &Harness, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    let mut req = Request::get(format!("http://{ECHO_HOST}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .send_request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_on_a_path_gives_403_rbac_access_denied_and_other_paths_pass() {
    let h = Harness::start().await;
    apply(
        &h,
        vec![policy(
            "deny-admin",
            "DENY",
            json!([{"to": [{"paths": [{"prefix": "/admin"}]}]}]),
        )],
        vec![],
    );
    let (status, body) = get(&h, "/admin/users", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "RBAC: access denied");
    assert_eq!(get(&h, "/", &[]).await.0, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), || metric_value(
            &h.metrics(),
            "istio_requests_total",
            &["response_code=\"403\"", "response_flags=\"RBAC\""]
        ) == 1.0)
        .await,
        "{}",
        h.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_on_a_method_admits_only_that_method() {
    let h = Harness::start().await;
    apply(
        &h,
        vec![policy(
            "get-only",
            "ALLOW",
            json!([{"to": [{"methods": [{"exact": "GET"}]}]}]),
        )],
        vec![],
    );
    assert_eq!(get(&h, "/", &[]).await.0, StatusCode::OK);
    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    let resp = client
        .send_request(
            Request::post(format!("http://{ECHO_HOST}/"))
                .body(Full::new(Bytes::from_static(b"x")))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_grpc_call_gets_grpc_status_7() {
    let h = Harness::start().await;
    apply(
        &h,
        vec![policy(
            "deny-all",
            "DENY",
            json!([{"to": [{"paths": [{"prefix": "/"}]}]}]),
        )],
        vec![],
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let req = Request::post(format!("http://{ECHO_HOST}/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\x00\x00\x00\x00\x00")))
        .expect("request");
    let resp = client.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_guarded_path_is_401_with_a_bad_token_403_without_one_and_200_with_a_good_one() {
    let h = Harness::start().await;
    let idp = JwtIssuer::new("https://idp.example");
    let authn: RequestAuthn = serde_json::from_value(json!({
        "name": "jwt", "namespace": "default", "target": {"scope": "WAYPOINT"},
        "jwtRules": [{"issuer": idp.issuer, "jwks": idp.jwks()}],
    }))
    .expect("request authn");
    let need_jwt = policy(
        "need-jwt",
        "ALLOW",
        json!([
            {"to": [{"notPaths": [{"prefix": "/private"}]}]},
            {"from": [{"requestPrincipals": [{"exact": "https://idp.example/alice"}]}],
             "to": [{"paths": [{"prefix": "/private"}]}]},
        ]),
    );
    apply(&h, vec![need_jwt], vec![authn]);

    assert_eq!(get(&h, "/public", &[]).await.0, StatusCode::OK);
    assert_eq!(get(&h, "/private", &[]).await.0, StatusCode::FORBIDDEN);
    let expired = idp.token("alice", Duration::ZERO, json!({"exp": 1}));
    let (status, body) = get(
        &h,
        "/private",
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let forged = format!(
        "{}x",
        idp.token("alice", Duration::from_secs(600), json!({}))
    );
    let bad = get(
        &h,
        "/private",
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(bad.0, StatusCode::UNAUTHORIZED, "{}", bad.1);
    let good = idp.token("alice", Duration::from_secs(600), json!({}));
    let (status, body) = get(
        &h,
        "/private",
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let bob = idp.token("bob", Duration::from_secs(600), json!({}));
    let other = get(
        &h,
        "/private",
        &[("authorization", &format!("Bearer {bob}"))],
    )
    .await;
    assert_eq!(other.0, StatusCode::FORBIDDEN);
}
