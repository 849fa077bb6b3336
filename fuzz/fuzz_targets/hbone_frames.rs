//! Raw HTTP/2 bytes from a peer, into a server built like the HBONE server (same h2 settings,
//! same CONNECT check), over an in-memory pipe and without TLS.
//!
//! The input follows the client connection preface. Every stream is checked with
//! `parse_target`; accepted ones get 200 and have their data read (and the window released,
//! as `H2Stream` does), refused ones get 400. Never panics and never hangs: the runtime's clock
//! is paused, so a stalled connection hits the timeout at once.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use mesh::hbone::{connect, H2Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let input = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = client_write.write_all(PREFACE).await;
            let _ = client_write.write_all(&input).await;
            let _ = client_write.shutdown().await;
        });
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = client_read.read_to_end(&mut sink).await;
        });
        let _ = tokio::time::timeout(Duration::from_secs(60), serve(server)).await;
        let _ = writer.await;
        reader.abort();
    });
});

async fn serve(io: tokio::io::DuplexStream) {
    let config = H2Config::default();
    let handshake = h2::server::Builder::new()
        .initial_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_frame_size(config.max_frame_size)
        .max_concurrent_streams(u32::try_from(config.max_streams).unwrap_or(u32::MAX))
        .max_header_list_size(config.max_header_list_size)
        .handshake::<_, Bytes>(io);
    let Ok(mut conn) = handshake.await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let status = match connect::parse_target(&req) {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status(),
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        if status != StatusCode::OK {
            let _ = respond.send_response(response, true);
            continue;
        }
        let Ok(mut send) = respond.send_response(response, false) else {
            continue;
        };
        let mut recv = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(chunk)) = recv.data().await {
                let _ = recv.flow_control().release_capacity(chunk.len());
                let _ = send.send_data(chunk, false);
            }
            let _ = send.send_data(Bytes::new(), true);
        });
    }
}
