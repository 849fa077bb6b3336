#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::http::{decode, selects};
use super::*;

#[test]
fn paths_follow_the_api() {
    assert_eq!(
        parse_path("/apis/security.istio.io/v1/namespaces/shop/authorizationpolicies"),
        Some((
            (
                "security.istio.io".into(),
                "v1".into(),
                "authorizationpolicies".into()
            ),
            Some("shop".into()),
            None
        ))
    );
    assert_eq!(
        parse_path("/api/v1/pods"),
        Some((("".into(), "v1".into(), "pods".into()), None, None))
    );
    assert_eq!(
        parse_path("/api/v1/namespaces/shop/pods/web"),
        Some((
            ("".into(), "v1".into(), "pods".into()),
            Some("shop".into()),
            Some("web".into())
        ))
    );
}

#[test]
fn selectors_match_equality_terms() {
    let get = |k: &str| match k {
        "app" => Some("web".to_string()),
        _ => None,
    };
    assert!(selects(Some(&"app=web".to_string()), get));
    assert!(selects(Some(&"app==web,!tier".to_string()), get));
    assert!(!selects(Some(&"app!=web".to_string()), get));
    assert!(!selects(Some(&"tier".to_string()), get));
    assert_eq!(decode("spec.nodeName%3Dn1"), "spec.nodeName=n1");
}

#[tokio::test]
async fn pod_proxy_requests_reach_the_registered_responder_or_fail_like_a_closed_port() {
    let server = FakeApiServer::start().await.expect("starts");
    server.set_pod_proxy("istio-system", "ztunnel-a", 15000, |path| {
        (200, format!("you asked for {path}"))
    });
    let get = |path: &str| {
        let url = format!("{}{path}", server.url());
        async move {
            let addr = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap()
                .to_string();
            let path = url
                .trim_start_matches("http://")
                .trim_start_matches(&addr)
                .to_string();
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            stream.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let ok = get("/api/v1/namespaces/istio-system/pods/ztunnel-a:15000/proxy/config_dump").await;
    assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
    assert!(ok.ends_with("you asked for /config_dump"), "{ok}");
    let closed = get("/api/v1/namespaces/istio-system/pods/ztunnel-a:15020/proxy/metrics").await;
    assert!(closed.starts_with("HTTP/1.0 503"), "{closed}");
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r
                == "GET /api/v1/namespaces/istio-system/pods/ztunnel-a:15000/proxy/config_dump")
    );
}
