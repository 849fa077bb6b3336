//! HTTP/2 PING keepalive: detects peers that vanished without closing the connection.

use std::time::Duration;

use h2::{Ping, PingPong};

/// Pings every `interval`; returns when a PING goes unanswered for `timeout` or the connection
/// stops answering altogether. The caller then drops the connection.
pub(crate) async fn run(ping_pong: Option<PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping_pong) = ping_pong else {
        // Someone else owns the ping handle; never fire.
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "keepalive PING failed");
                // The connection task will report the real error; stop pinging.
                return std::future::pending().await;
            }
            Err(_) => {
                tracing::warn!(
                    timeout_s = timeout.as_secs(),
                    "peer did not answer PING; closing connection"
                );
                return;
            }
        }
    }
}
