//! H2Stream over an in-memory HTTP/2 connection (no TLS): what reads see for each frame.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// A client H2Stream, the server's raw halves of the same stream, and the two connection
/// drivers' handles (abort one to kill the connection).
struct Pair {
    client: H2Stream,
    server_send: SendStream<Bytes>,
    server_recv: RecvStream,
    client_conn: tokio::task::JoinHandle<()>,
    _server_conn: tokio::task::JoinHandle<()>,
}

async fn pair() -> Pair {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake::<DuplexStream>(s)
            .await
            .expect("server handshake");
        let (req, mut respond) = conn.accept().await.expect("a stream").expect("ok");
        let send = respond
            .send_response(http::Response::new(()), false)
            .expect("200");
        let driver = tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
        (send, req.into_body(), driver)
    });
    let (send_request, conn) = h2::client::handshake(c).await.expect("client handshake");
    let client_conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send_request = send_request.ready().await.expect("ready");
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("10.0.0.1:80")
        .body(())
        .expect("request");
    let (response, send) = send_request.send_request(req, false).expect("send");
    let response = response.await.expect("response");
    let (server_send, server_recv, server_conn) = server.await.expect("join");
    Pair {
        client: H2Stream::new(send, response.into_body(), None),
        server_send,
        server_recv,
        client_conn,
        _server_conn: server_conn,
    }
}

#[tokio::test]
async fn an_empty_data_frame_mid_stream_is_skipped_not_read_as_eof() {
    let mut p = pair().await;
    p.server_send
        .send_data(Bytes::from_static(b"hello "), false)
        .expect("data");
    p.server_send.send_data(Bytes::new(), false).expect("empty");
    p.server_send
        .send_data(Bytes::from_static(b"world"), true)
        .expect("data + END_STREAM");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), p.client.read_to_end(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, b"hello world");
}

#[tokio::test]
async fn abort_resets_the_stream_with_connect_error() {
    let mut p = pair().await;
    p.client.abort();
    let err = std::future::poll_fn(|cx| p.server_send.poll_reset(cx))
        .await
        .expect("reset reason");
    assert_eq!(err, h2::Reason::CONNECT_ERROR);
    // What the server's own H2Stream reader would see: a reset, not EOF.
    let data = p.server_recv.data().await;
    assert!(matches!(data, Some(Err(_))), "{data:?}");
}

#[tokio::test]
async fn a_reset_from_the_peer_is_a_connection_reset_not_an_eof() {
    let mut p = pair().await;
    p.server_send.send_reset(h2::Reason::CONNECT_ERROR);
    let mut buf = [0u8; 8];
    let err = p.client.read(&mut buf).await.expect_err("reset");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn a_dead_connection_fails_its_streams_rather_than_ending_them() {
    let mut p = pair().await;
    p.client.write_all(b"x").await.expect("write");
    // The connection's driver goes away (as when its PING goes unanswered).
    p.client_conn.abort();
    let mut buf = [0u8; 8];
    let res = tokio::time::timeout(Duration::from_secs(5), p.client.read(&mut buf))
        .await
        .expect("in time");
    assert!(res.is_err(), "a dead connection must be an error: {res:?}");
}
