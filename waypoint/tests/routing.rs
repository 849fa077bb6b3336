//! L7 routing features end to end, in process: weighted backends across services, header,
//! regex and query matches, filters, retries, timeouts, faults, mirroring, outlier detection
//! and connection pool limits.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::time::Instant;
use waypoint::conn_pool::ConnectionPool;
use waypoint::fault::{AbortError, FaultAbort, FaultDelay, FaultInjection};
use waypoint::filters::{Filter, HeaderModifier, PathModifier, Redirect, UrlRewrite};
use waypoint::mirror::RequestMirror;
use waypoint::outlier::OutlierDetection;
use waypoint::retry::{RetryOn, RetryPolicy};
use waypoint::route::{
    HeaderMatch, PathMatch, Pattern, QueryMatch, RouteKind, RouteMatch, RouteRule, ServiceRoutes,
    StringMatch, WeightedBackend,
};
use waypoint::RouteTable;

const V1_KEY: &str = "default/v1.default.svc.cluster.local";
const V2_KEY: &str = "default/v2.default.svc.cluster.local";

/// The harness plus services v1 (pod v1-a) and v2 (pod v2-a).
async fn with_versions() -> Harness {
    let mut h = Harness::start().await;
    h.add_service("v1", "10.96.1.1", &[("v1-a", "10.0.1.1")])
        .await;
    h.add_service("v2", "10.96.1.2", &[("v2-a", "10.0.1.2")])
        .await;
    h
}

fn to(service: &str, weight: u32) -> WeightedBackend {
    WeightedBackend {
        service: service.into(),
        port: None,
        weight,
    }
}

fn on_echo(h: &Harness, routes: ServiceRoutes) {
    let mut t = RouteTable::new();
    t.set(ECHO_KEY, routes);
    h.waypoint.set_routes(t);
}

fn rules(rules: Vec<RouteRule>) -> ServiceRoutes {
    ServiceRoutes {
        rules,
        ..Default::default()
    }
}

fn req(method: Method, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{ECHO_HOST}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

async fn send(
    client: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    r: Request<Full<Bytes>>,
) -> http::Response<Bytes> {
    let resp = client.send_request(r).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    http::Response::from_parts(parts, body)
}

fn header<'a>(r: &'a http::Response<Bytes>, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map_or("", |v| v.to_str().expect("ascii"))
}

async fn flagged(h: &Harness, flags: &str, code: u16) -> bool {
    let waypoint = h.waypoint.clone();
    let labels = [
        format!("response_flags=\"{flags}\""),
        format!("response_code=\"{code}\""),
    ];
    eventually(Duration::from_secs(5), || {
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        metric_value(&waypoint.telemetry().encode(), "istio_requests_total", &l) >= 1.0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_weights_split_1000_requests_80_20_across_services() {
    let h = with_versions().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            backends: vec![to(V1_KEY, 80), to(V2_KEY, 20)],
            ..Default::default()
        }]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let mut counts = HashMap::<String, usize>::new();
    for i in 0..1000 {
        let r = send(&mut client, req(Method::GET, &format!("/c/{i}"))).await;
        assert_eq!(r.status(), StatusCode::OK);
        *counts
            .entry(header(&r, "x-backend").to_string())
            .or_default() += 1;
    }
    let v1 = counts.get("v1-a").copied().unwrap_or(0);
    let v2 = counts.get("v2-a").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 1000, "only v1 and v2 serve: {counts:?}");
    assert!((750..=850).contains(&v1), "80% +-5% to v1: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_match_routes_to_v2_and_the_rest_to_v1() {
    let h = with_versions().await;
    on_echo(
        &h,
        rules(vec![
            RouteRule {
                backends: vec![to(V1_KEY, 1)],
                ..Default::default()
            },
            RouteRule {
                matches: vec![RouteMatch {
                    headers: vec![HeaderMatch::exact("x-version", "v2")],
                    ..Default::default()
                }],
                backends: vec![to(V2_KEY, 1)],
                ..Default::default()
            },
        ]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let mut with = req(Method::GET, "/");
    with.headers_mut()
        .insert("x-version", "v2".parse().expect("value"));
    assert_eq!(header(&send(&mut client, with).await, "x-backend"), "v2-a");
    let r = send(&mut client, req(Method::GET, "/")).await;
    assert_eq!(header(&r, "x-backend"), "v1-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_path_and_query_param_matches_route_to_v2() {
    let h = with_versions().await;
    on_echo(
        &h,
        rules(vec![
            RouteRule {
                backends: vec![to(V1_KEY, 1)],
                ..Default::default()
            },
            RouteRule {
                matches: vec![
                    RouteMatch {
                        path: Some(PathMatch::Regex(
                            Pattern::new("/users/[0-9]+").expect("regex"),
                        )),
                        ..Default::default()
                    },
                    RouteMatch {
                        query_params: vec![QueryMatch {
                            name: "canary".into(),
                            value: StringMatch::Exact("true".into()),
                        }],
                        ..Default::default()
                    },
                ],
                backends: vec![to(V2_KEY, 1)],
                ..Default::default()
            },
        ]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    for (path, backend) in [
        ("/users/42", "v2-a"),
        ("/users/abc", "v1-a"),
        ("/users/42/x", "v1-a"),
        ("/any?x=1&canary=true", "v2-a"),
        ("/any?canary=false", "v1-a"),
    ] {
        let r = send(&mut client, req(Method::GET, path)).await;
        assert_eq!(header(&r, "x-backend"), backend, "{path}");
    }
}

fn retry(attempts: u32, on: &[RetryOn], per_try: Option<Duration>) -> Option<RetryPolicy> {
    Some(RetryPolicy {
        attempts,
        codes: vec![],
        retry_on: on.to_vec(),
        backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        per_try_timeout: per_try,
    })
}

fn served(h: &Harness) -> usize {
    (0..h.backends.len()).map(|i| h.seen(i).requests).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_recovers_a_backend_failing_every_other_request() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            retry: retry(2, &[RetryOn::FiveXx], None),
            ..Default::default()
        }]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    for i in 0..5 {
        // A POST with a small body is kept and sent again.
        let mut r = req(Method::POST, "/flaky");
        *r.body_mut() = Full::new(Bytes::from(format!("body {i}")));
        let r = send(&mut client, r).await;
        assert_eq!(r.status(), StatusCode::OK, "retried to success");
        assert_eq!(r.body().as_ref(), format!("body {i}").as_bytes());
    }
    assert_eq!(served(&h), 10, "each request took two tries");
}

/// A one-chunk body that does not tell its size (as gRPC clients send over HTTP/2).
struct Unsized(Option<Bytes>);

impl hyper::body::Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_of_unknown_size_is_recorded_and_retried() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            retry: retry(2, &[RetryOn::FiveXx], None),
            ..Default::default()
        }]),
    );
    let io = h.tunnel(addr(ECHO_VIP, HTTP_PORT)).await.expect("tunnel");
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let r = Request::post(format!("http://{ECHO_HOST}/flaky"))
        .header("content-type", "application/grpc")
        .body(Unsized(Some(message.clone())))
        .expect("request");
    let resp = client.send_request(r).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK, "retried to success");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, message, "the retry carried the whole body");
    assert_eq!(served(&h), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_64k_is_sent_once_and_never_retried() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            retry: retry(2, &[RetryOn::FiveXx], None),
            ..Default::default()
        }]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let mut r = req(Method::POST, "/flaky");
    *r.body_mut() = Full::new(Bytes::from(vec![b'x'; 100 * 1024]));
    let r = send(&mut client, r).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "not retried");
    assert_eq!(served(&h), 1);
    assert!(
        flagged(&h, "-", 503).await,
        "not retried, so not URX either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_answer_the_last_failure_with_urx() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            retry: retry(2, &[RetryOn::GatewayError], None),
            ..Default::default()
        }]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let r = send(&mut client, req(Method::GET, "/status/503")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(flagged(&h, "URX", 503).await);
    assert_eq!(served(&h), 3, "one try and two retries");
    // A code the policy does not retry is answered at once.
    let r = send(&mut client, req(Method::GET, "/status/500")).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(served(&h), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_cuts_each_try_and_is_retried() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            backend_timeout: Some(Duration::from_millis(150)),
            retry: retry(1, &[RetryOn::FiveXx], None),
            ..Default::default()
        }]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let start = Instant::now();
    let r = send(&mut client, req(Method::GET, "/delay/2000")).await;
    let took = start.elapsed();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(300),
        "two tries of 150 ms: {took:?}"
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(flagged(&h, "UT,URX", 504).await);
    assert!(eventually(Duration::from_secs(2), || served(&h) == 2).await);
    // The request timeout bounds the tries as a whole.
    on_echo(
        &h,
        rules(vec![RouteRule {
            timeout: Some(Duration::from_millis(200)),
            backend_timeout: Some(Duration::from_millis(150)),
            retry: retry(5, &[RetryOn::FiveXx], None),
            ..Default::default()
        }]),
    );
    let start = Instant::now();
    let r = send(&mut client, req(Method::GET, "/delay/2000")).await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(start.elapsed() < Duration::from_millis(600));
}

fn fault(delay: Option<Duration>, abort: Option<AbortError>) -> Option<FaultInjection> {
    Some(FaultInjection {
        delay: delay.map(|delay| FaultDelay {
            delay,
            percent: 100.0,
        }),
        abort: abort.map(|error| FaultAbort {
            error,
            percent: 100.0,
        }),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_delay_holds_the_request_and_is_flagged_di() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            fault: fault(Some(Duration::from_millis(200)), None),
            ..Default::default()
        }]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let start = Instant::now();
    let r = send(&mut client, req(Method::GET, "/")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(flagged(&h, "DI", 200).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_abort_answers_its_status_or_grpc_status_with_fi() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![
            RouteRule {
                matches: vec![RouteMatch {
                    path: Some(PathMatch::Prefix("/http".into())),
                    ..Default::default()
                }],
                fault: fault(None, Some(AbortError::Http(418))),
                ..Default::default()
            },
            RouteRule {
                matches: vec![RouteMatch {
                    path: Some(PathMatch::Prefix("/echo.Echo".into())),
                    ..Default::default()
                }],
                fault: fault(None, Some(AbortError::Grpc(14))),
                kind: RouteKind::Grpc,
                ..Default::default()
            },
        ]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let r = send(&mut client, req(Method::GET, "/http/x")).await;
    assert_eq!(r.status().as_u16(), 418);
    assert!(flagged(&h, "FI", 418).await);
    let mut g = req(Method::POST, "/echo.Echo/Say");
    g.headers_mut()
        .insert("content-type", "application/grpc".parse().expect("value"));
    let r = send(&mut client, g).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "grpc-status"), "14", "trailers-only gRPC answer");
    assert_eq!(header(&r, "content-type"), "application/grpc");
    assert!(flagged(&h, "FI", 200).await);
    assert_eq!(served(&h), 0, "aborted requests never reach a backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_answers_301_with_location() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            filters: vec![Filter::Redirect(Redirect {
                scheme: Some("https".into()),
                hostname: Some("shop.example".into()),
                port: None,
                path: Some(PathModifier::Prefix("/new".into())),
                status: 301,
            })],
            matches: vec![RouteMatch {
                path: Some(PathMatch::Prefix("/old".into())),
                ..Default::default()
            }],
            ..Default::default()
        }]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let r = send(&mut client, req(Method::GET, "/old/page?a=1")).await;
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(header(&r, "location"), "https://shop.example/new/page?a=1");
    assert_eq!(served(&h), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_set_add_and_remove_both_ways() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            filters: vec![
                Filter::RequestHeaders(HeaderModifier {
                    set: vec![("x-t-set".into(), "new".into())],
                    add: vec![("x-t-add".into(), "added".into())],
                    remove: vec!["x-t-gone".into()],
                }),
                Filter::ResponseHeaders(HeaderModifier {
                    set: vec![("x-backend".into(), "hidden".into())],
                    add: vec![("x-resp-add".into(), "1".into())],
                    remove: vec!["x-seen-version".into()],
                }),
            ],
            ..Default::default()
        }]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let mut r = req(Method::GET, "/");
    for (k, v) in [("x-t-set", "old"), ("x-t-add", "mine"), ("x-t-gone", "1")] {
        r.headers_mut().insert(k, v.parse().expect("value"));
    }
    let r = send(&mut client, r).await;
    assert_eq!(header(&r, "x-seen-x-t-set"), "new");
    let added: Vec<_> = r.headers().get_all("x-seen-x-t-add").iter().collect();
    assert_eq!(added, ["mine", "added"]);
    assert!(r.headers().get("x-seen-x-t-gone").is_none());
    assert_eq!(header(&r, "x-backend"), "hidden");
    assert_eq!(header(&r, "x-resp-add"), "1");
    assert!(r.headers().get("x-seen-version").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrite_replaces_the_matched_prefix_and_the_host() {
    let h = Harness::start().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            matches: vec![RouteMatch {
                path: Some(PathMatch::Prefix("/api".into())),
                ..Default::default()
            }],
            filters: vec![Filter::UrlRewrite(UrlRewrite {
                hostname: Some("internal.example".into()),
                path: Some(PathModifier::Prefix("/v2".into())),
            })],
            ..Default::default()
        }]),
    );
    for h2 in [true, false] {
        let r = if h2 {
            let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
            send(&mut client, req(Method::GET, "/api/users?id=7")).await
        } else {
            let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
            let r = Request::get("/api/users?id=7")
                .header("host", ECHO_HOST)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let resp = client.send_request(r).await.expect("response");
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            http::Response::from_parts(parts, body)
        };
        assert_eq!(header(&r, "x-seen-path"), "/v2/users?id=7", "h2={h2}");
        assert_eq!(header(&r, "x-seen-host"), "internal.example", "h2={h2}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_receives_a_copy_and_its_answer_is_ignored() {
    let h = with_versions().await;
    on_echo(
        &h,
        rules(vec![RouteRule {
            backends: vec![to(V1_KEY, 1)],
            filters: vec![Filter::Mirror(RequestMirror {
                backend: to(V2_KEY, 1),
                percent: 100.0,
            })],
            ..Default::default()
        }]),
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let mut r = req(Method::POST, "/mirrored");
    *r.body_mut() = Full::new(Bytes::from_static(b"copy me"));
    let r = send(&mut client, r).await;
    assert_eq!(header(&r, "x-backend"), "v1-a");
    assert_eq!(r.body().as_ref(), b"copy me");
    let v2 = h
        .backends
        .iter()
        .position(|b| b.name == "v2-a")
        .expect("v2");
    assert!(eventually(Duration::from_secs(5), || h.seen(v2).requests == 1).await);
    // Not counted as a request of its own.
    assert!(flagged(&h, "-", 200).await);
    let all = metric_value(&h.metrics(), "istio_requests_total", &[]);
    assert_eq!(all, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_and_brings_it_back() {
    let h = Harness::start().await;
    let ejection = Duration::from_millis(800);
    on_echo(
        &h,
        ServiceRoutes {
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx: 3,
                interval: Duration::from_secs(1),
                base_ejection_time: ejection,
                max_ejection_percent: 50,
            }),
            ..Default::default()
        },
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    // echo-a fails these; echo-b answers them.
    let mut failures = 0;
    let mut ejected_at = None;
    for _ in 0..200 {
        let r = send(&mut client, req(Method::GET, "/fail-on/echo-a")).await;
        if r.status() == StatusCode::INTERNAL_SERVER_ERROR {
            failures += 1;
            if failures == 3 {
                ejected_at = Some(Instant::now());
                break;
            }
        }
    }
    let ejected_at = ejected_at.expect("echo-a failed three times");
    // While ejected, every request goes to echo-b.
    for _ in 0..20 {
        let r = send(&mut client, req(Method::GET, "/fail-on/echo-a")).await;
        if ejected_at.elapsed() < ejection {
            assert_eq!(header(&r, "x-backend"), "echo-b");
        }
    }
    // After the ejection time, echo-a takes requests again.
    let mut back = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = send(&mut client, req(Method::GET, "/")).await;
        if header(&r, "x-backend") == "echo-a" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "echo-a brought back");
    assert!(ejected_at.elapsed() >= ejection);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_connection_pool_answers_503_uo() {
    let h = Harness::start().await;
    on_echo(
        &h,
        ServiceRoutes {
            connection_pool: Some(ConnectionPool {
                max_requests: 1,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let mut slow = client.clone();
    let first = tokio::spawn(async move { send(&mut slow, req(Method::GET, "/delay/500")).await });
    assert!(eventually(Duration::from_secs(5), || served(&h) == 1).await);
    let mut c = client.clone();
    let r = send(&mut c, req(Method::GET, "/")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(flagged(&h, "UO", 503).await);
    assert_eq!(first.await.expect("task").status(), StatusCode::OK);
    // The permit is back once the first response has ended. The waypoint lets go of it just
    // after it sent the body's last frame, so the client may see the end a moment before:
    // a request in that moment still gets 503 UO, one right after it gets 200.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let status = send(&mut c, req(Method::GET, "/")).await.status();
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the permit never came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn model_rule(
    name: &str,
    matches: Vec<mesh::model::route::RouteMatch>,
    backend: &str,
) -> mesh::model::route::Route {
    mesh::model::route::Route {
        name: name.into(),
        matches,
        backends: vec![mesh::model::route::WeightedBackend {
            service: backend.into(),
            port: None,
            weight: 1,
        }],
        filters: vec![mesh::model::route::Filter::ResponseHeaders(
            mesh::model::route::HeaderModifier {
                set: vec![(
                    http::HeaderName::from_static("x-rule"),
                    http::HeaderValue::from_str(name).expect("value"),
                )],
                ..Default::default()
            },
        )],
        request_timeout: None,
        backend_request_timeout: None,
        retry: None,
        fault: None,
        kind: mesh::model::route::RouteKind::Http,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_the_store_take_effect_and_their_removal_restores_the_default() {
    use mesh::model::route as model;
    let h = with_versions().await;
    tokio::spawn(h.waypoint.clone().sync_routes());
    let routes = model::ServiceRoutes {
        service: ECHO_KEY.into(),
        rules: vec![
            model_rule("default", vec![], V1_KEY),
            model_rule(
                "canary",
                vec![model::RouteMatch {
                    path: None,
                    method: None,
                    headers: vec![model::HeaderMatch {
                        name: http::HeaderName::from_static("x-version"),
                        value: model::ValueMatch::Exact("v2".into()),
                    }],
                    query_params: vec![],
                }],
                V2_KEY,
            ),
        ],
        load_balancer: model::LoadBalancer::Random,
        connection_pool: None,
        outlier_detection: None,
        first_match: false,
    };
    let mut batch = mesh::store::Batch::new();
    batch.upsert_routes(routes);
    h.store.apply(batch);
    let waypoint = h.waypoint.clone();
    assert!(
        eventually(Duration::from_secs(5), || waypoint
            .routes()
            .get(ECHO_KEY)
            .is_some())
        .await
    );
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let mut with = req(Method::GET, "/");
    with.headers_mut()
        .insert("x-version", "v2".parse().expect("value"));
    let r = send(&mut client, with).await;
    assert_eq!(
        (header(&r, "x-backend"), header(&r, "x-rule")),
        ("v2-a", "canary")
    );
    let r = send(&mut client, req(Method::GET, "/")).await;
    assert_eq!(
        (header(&r, "x-backend"), header(&r, "x-rule")),
        ("v1-a", "default")
    );
    let mut batch = mesh::store::Batch::new();
    batch.remove_routes(ECHO_KEY);
    h.store.apply(batch);
    assert!(
        eventually(Duration::from_secs(5), || waypoint
            .routes()
            .get(ECHO_KEY)
            .is_none())
        .await
    );
    let r = send(&mut client, req(Method::GET, "/")).await;
    assert!(
        header(&r, "x-backend").starts_with("echo-"),
        "the service itself again"
    );
}
