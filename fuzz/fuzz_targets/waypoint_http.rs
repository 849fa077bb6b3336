//! The waypoint's handling of a tunnelled stream, without sockets: the bytes a client sends
//! inside an HBONE tunnel go through an in-memory pipe into protocol detection
//! (`waypoint::detect`), then, when they look like HTTP, into hyper's HTTP/1.1 or HTTP/2 server
//! with the waypoint's limits (header size, header read timeout), and each request is routed
//! by a route table with every kind of match (`waypoint::RouteTable::route`).
//!
//! Never panics; every request parsed gets a routing decision or a clean "no route".
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use waypoint::detect::{detect, Protocol};
use waypoint::route::{
    HeaderMatch, PathMatch, Pattern, QueryMatch, RouteMatch, RouteRule, ServiceRoutes, StringMatch,
    WeightedBackend,
};
use waypoint::RouteTable;

const SERVICE: &str = "default/echo.default.svc.cluster.local";
/// The waypoint's defaults (`ProxyConfig`).
const MAX_HEADER_BYTES: usize = 64 * 1024;

fn routes() -> &'static Arc<RouteTable> {
    static TABLE: OnceLock<Arc<RouteTable>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let backend = |port| WeightedBackend {
            service: SERVICE.into(),
            port: Some(port),
            weight: 1,
        };
        let pattern = |s: &str| Pattern::new(s).expect("pattern");
        let rule = |m: RouteMatch, port| RouteRule {
            matches: vec![m],
            backends: vec![backend(port)],
            ..Default::default()
        };
        let mut t = RouteTable::new();
        t.set(
            SERVICE,
            ServiceRoutes {
                rules: vec![
                    rule(
                        RouteMatch {
                            path: Some(PathMatch::Exact("/exact".into())),
                            method: Some(Method::POST),
                            ..Default::default()
                        },
                        1,
                    ),
                    rule(
                        RouteMatch {
                            path: Some(PathMatch::Regex(pattern("/v[0-9]+/.*"))),
                            headers: vec![HeaderMatch::exact("x-user", "a")],
                            ..Default::default()
                        },
                        2,
                    ),
                    rule(
                        RouteMatch {
                            path: Some(PathMatch::Prefix("/api".into())),
                            query_params: vec![QueryMatch {
                                name: "q".into(),
                                value: StringMatch::Regex(pattern("^[a-z%]*$")),
                            }],
                            ..Default::default()
                        },
                        3,
                    ),
                ],
                ..Default::default()
            },
        );
        Arc::new(t)
    })
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, _body) = req.into_parts();
    let answer = match routes().route(SERVICE, 80, &parts) {
        Ok(decision) => format!("{}", decision.port),
        Err(e) => e.to_string(),
    };
    Ok(Response::new(Full::new(Bytes::from(answer))))
}

fuzz_target!(|data: &[u8]| {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let input = data.to_vec();
        // The client sends everything, then keeps its end open a while (as a slow client
        // would) and closes it; responses are drained so the server never blocks on writes.
        let sender = tokio::spawn(async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        });
        let served = async {
            let (protocol, io) = match detect(server, Duration::from_secs(1)).await {
                Ok(d) => d,
                Err(_) => return,
            };
            let io = TokioIo::new(io);
            let service = hyper::service::service_fn(handle);
            match protocol {
                Protocol::Tcp => {}
                Protocol::Http1 => {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .max_buf_size(MAX_HEADER_BYTES)
                        .serve_connection(io, service)
                        .await;
                }
                Protocol::Http2 => {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .max_header_list_size(MAX_HEADER_BYTES as u32)
                        .serve_connection(io, service)
                        .await;
                }
            }
        };
        // Paused time: a stalled connection ends at the header read timeout without waiting.
        let _ = tokio::time::timeout(Duration::from_secs(60), served).await;
        sender.abort();
    });
});
