//! The portforward subresource of the fake API server: `GET
//! /api/v1/namespaces/{ns}/pods/{pod}/portforward?ports=P[,Q…]`, upgraded to a WebSocket with
//! the Kubernetes port-forward protocol (subprotocol `v4.channel.k8s.io`, as kubelet speaks it):
//! the i-th port gets data channel `2i` and error channel `2i + 1`; the server's first frame on
//! each is the port as 2 bytes little-endian; after that every binary frame is `[channel byte]
//! [payload]`. Each port's stream is connected to the TCP address the test registered for that
//! pod and port (standing in for the process listening in the pod); when none is registered or
//! the connection fails, the error channel says so, as kubelet does when nothing listens there.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::http::{decode, status, Body};
use super::{FakeApiServer, Shared};

/// The port-forward subprotocol the fake speaks (kube-rs offers v5 and v4; kubelet's v4 framing
/// is what both share).
const PROTOCOL: &str = "v4.channel.k8s.io";

impl FakeApiServer {
    /// Connects port-forward streams to `pod`'s `port` in `namespace` to the TCP address
    /// `target`.
    pub fn set_port_forward(&self, namespace: &str, pod: &str, port: u16, target: SocketAddr) {
        self.shared
            .store()
            .port_forwards
            .insert((namespace.to_string(), pod.to_string(), port), target);
    }

    /// Serves HTTP/1.1 on a free loopback port with `handler` (called with the path and its
    /// query; returns the status code and a JSON body) and connects port-forward streams to
    /// `pod`'s `port` in `namespace` to it: the process in the pod, for a client that speaks
    /// HTTP through the port-forward. The server stops with the fake. Returns its address.
    pub async fn set_port_forward_http(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
        handler: impl Fn(&str) -> (u16, String) + Send + Sync + 'static,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let handler = std::sync::Arc::new(handler);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let path = req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string();
                    let (code, body) = handler(&path);
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() =
                        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    async move { Ok::<_, Infallible>(resp) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        self.shared.store().servers.push(task.abort_handle());
        self.set_port_forward(namespace, pod, port, addr);
        Ok(addr)
    }
}

/// `(namespace, pod, ports)` of a portforward URL (`ports` as kube-rs and kubectl send it:
/// comma-separated, possibly percent-encoded, or repeated).
pub(super) fn parse(uri: &Uri) -> Option<(String, String, Vec<u16>)> {
    let rest = uri.path().strip_prefix("/api/v1/namespaces/")?;
    let (namespace, rest) = rest.split_once("/pods/")?;
    let pod = rest.strip_suffix("/portforward")?;
    let mut ports = Vec::new();
    for (k, v) in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        if k == "ports" {
            for p in decode(v).split(',') {
                ports.push(p.trim().parse().ok()?);
            }
        }
    }
    Some((namespace.to_string(), pod.to_string(), ports))
}

/// The answer to a portforward request (`101 Switching Protocols`, then the forward runs on
/// its own task); `Err(req)` when `req` is not one.
// `Err` hands the request back untouched, for the other routes.
#[allow(clippy::result_large_err)]
pub(super) fn handle(
    shared: &Shared,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Request<hyper::body::Incoming>> {
    let Some((namespace, pod, ports)) = parse(req.uri()) else {
        return Err(req);
    };
    let bad = |message: &str| status(StatusCode::BAD_REQUEST, "BadRequest", message);
    if req.method() != Method::GET && req.method() != Method::POST {
        return Ok(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "portforward takes GET (WebSocket) or POST (SPDY)",
        ));
    }
    let pods = ("".to_string(), "v1".to_string(), "pods".to_string());
    let exists = shared
        .store()
        .objects
        .get(&pods)
        .is_some_and(|o| o.contains_key(&(namespace.clone(), pod.clone())));
    if !exists {
        return Ok(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{pod}\" not found"),
        ));
    }
    if ports.is_empty() {
        return Ok(bad("at least 1 port must be specified"));
    }
    let headers = req.headers();
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY).filter(|_| upgrade) else {
        return Ok(bad("Upgrade request required"));
    };
    let offers_v4 = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == PROTOCOL);
    if !offers_v4 {
        return Ok(bad(&format!(
            "unable to upgrade: the client offers no {PROTOCOL} subprotocol"
        )));
    }
    let accept = derive_accept_key(key.as_bytes());
    // Resolved now, as kubelet dials when the forward starts.
    let targets: Vec<(u16, Option<SocketAddr>)> = {
        let store = shared.store();
        ports
            .iter()
            .map(|&p| {
                let key = (namespace.clone(), pod.clone(), p);
                (p, store.port_forwards.get(&key).copied())
            })
            .collect()
    };
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        forward(ws, &pod, targets).await;
    });
    let mut resp = Response::new(Empty::<Bytes>::new().boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOL));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(resp)
}

/// Runs one port-forward: announces each port on its two channels, connects each to its
/// target, then copies data frames to the targets and what they send back into data frames,
/// until the client closes or every target has finished sending; then closes the WebSocket.
async fn forward<S>(ws: WebSocketStream<S>, pod: &str, targets: Vec<(u16, Option<SocketAddr>)>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut from_client) = ws.split();
    let (to_client, mut outgoing) = mpsc::channel::<Vec<u8>>(16);
    let mut writers: BTreeMap<u8, OwnedWriteHalf> = BTreeMap::new();
    for (i, (port, target)) in targets.into_iter().enumerate() {
        let data = (2 * i) as u8;
        let [lo, hi] = port.to_le_bytes();
        for channel in [data, data + 1] {
            if sink
                .send(Message::binary(vec![channel, lo, hi]))
                .await
                .is_err()
            {
                return;
            }
        }
        let connected = match target {
            Some(addr) => tokio::net::TcpStream::connect(addr).await.ok(),
            None => None,
        };
        let Some(tcp) = connected else {
            // kubelet's words when nothing listens on the port in the pod.
            let mut frame = vec![data + 1];
            frame.extend_from_slice(
                format!(
                    "error forwarding port {port} to pod {pod}, uid : failed to connect to \
                     localhost:{port} inside namespace: dial tcp4 127.0.0.1:{port}: connect: \
                     connection refused"
                )
                .as_bytes(),
            );
            let _ = sink.send(Message::binary(frame)).await;
            continue;
        };
        let (mut read, write) = tcp.into_split();
        writers.insert(data, write);
        let to_client = to_client.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = read.read(&mut buf).await {
                let mut frame = Vec::with_capacity(n + 1);
                frame.push(data);
                frame.extend_from_slice(&buf[..n]);
                if to_client.send(frame).await.is_err() {
                    break;
                }
            }
        });
    }
    // `outgoing` ends once every target's reader has.
    drop(to_client);
    loop {
        tokio::select! {
            frame = outgoing.recv() => match frame {
                Some(frame) => {
                    if sink.send(Message::binary(frame)).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            message = from_client.next() => match message {
                Some(Ok(Message::Binary(frame))) if frame.len() > 1 => {
                    if let Some(writer) = writers.get_mut(&frame[0]) {
                        if writer.write_all(&frame[1..]).await.is_err() {
                            writers.remove(&frame[0]);
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    // Wait (briefly) for the client's close, so the connection ends cleanly.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while let Some(Ok(_)) = from_client.next().await {}
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn portforward_paths_name_the_pod_and_ports() {
        let uri: Uri =
            "/api/v1/namespaces/istio-system/pods/ztunnel-abc/portforward?&ports=15000%2C15020"
                .parse()
                .unwrap();
        assert_eq!(
            parse(&uri),
            Some((
                "istio-system".into(),
                "ztunnel-abc".into(),
                vec![15000, 15020]
            ))
        );
        let uri: Uri = "/api/v1/namespaces/a/pods/b/portforward?ports=1&ports=2"
            .parse()
            .unwrap();
        assert_eq!(parse(&uri).unwrap().2, vec![1, 2]);
        let uri: Uri = "/api/v1/namespaces/a/pods/b:1/proxy/x".parse().unwrap();
        assert_eq!(parse(&uri), None);
    }

    #[tokio::test]
    async fn kube_rs_port_forwards_reach_the_registered_server_or_are_refused() {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::Api;
        use serde_json::json;

        let api = FakeApiServer::start().await.unwrap();
        api.apply(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "ztunnel-a", "namespace": "istio-system"}}));
        api.set_port_forward_http("istio-system", "ztunnel-a", 15000, |path| {
            (200, json!({ "path": path }).to_string())
        })
        .await
        .unwrap();
        let config = kube::Config::new(api.url().parse().unwrap());
        let pods: Api<Pod> =
            Api::namespaced(kube::Client::try_from(config).unwrap(), "istio-system");

        let mut forward = pods.portforward("ztunnel-a", &[15000]).await.unwrap();
        let mut stream = forward.take_stream(15000).unwrap();
        stream
            .write_all(b"GET /config_dump?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // The server closes after its response, and the fake closes the forward with it.
        let mut response = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut response),
        )
        .await
        .expect("the forward ends after the response")
        .unwrap();
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.ends_with(r#"{"path":"/config_dump?x=1"}"#),
            "{response}"
        );
        assert!(
            api.requests().iter().any(|r| r
                .starts_with("GET /api/v1/namespaces/istio-system/pods/ztunnel-a/portforward?")),
            "{:?}",
            api.requests()
        );

        // Nothing listens on 15001: the port's error channel says so.
        let mut forward = pods.portforward("ztunnel-a", &[15001]).await.unwrap();
        let error = forward.take_error(15001).unwrap().await.unwrap_or_default();
        assert!(
            error.contains("error forwarding port 15001") && error.contains("connection refused"),
            "{error}"
        );

        let Err(err) = pods.portforward("ztunnel-b", &[15000]).await else {
            panic!("a port-forward to a missing pod must fail");
        };
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 404)
                && err.to_string().contains("pods \"ztunnel-b\" not found"),
            "{err}"
        );
    }
}
