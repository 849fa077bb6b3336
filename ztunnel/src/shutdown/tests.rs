#![allow(clippy::expect_used, clippy::unwrap_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::proxy::live::{copy_until_closed, CopyEnd, Kind, PodKey};

const DEADLINE: Duration = Duration::from_secs(20);

fn pod() -> PodKey {
    PodKey {
        uid: "Kubernetes//v1/Pod/demo/a".into(),
        netns: 7,
    }
}

#[tokio::test(start_paused = true)]
async fn a_drain_ends_as_soon_as_the_last_connection_ends_by_itself() {
    let live = Arc::new(LiveConnections::default());
    live.pod_started(&pod());
    let guard = live.register(&pod(), Kind::Outbound).expect("served");
    assert_eq!(live.pod_stopping(&pod()), 1);
    // A stream the peer sent before it read our GOAWAY is still served.
    drop(live.register(&pod(), Kind::Outbound).expect("still served"));
    let ends = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(guard);
    });
    let started = Instant::now();
    let closed = drain(&Pods::default(), &live, DEADLINE).await;
    ends.await.expect("join");
    assert_eq!(closed, 0, "nothing had to be closed");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_open_at_the_deadline_is_closed_cleanly_with_an_eof_both_ways() {
    let live = Arc::new(LiveConnections::default());
    live.pod_started(&pod());
    let guard = live.register(&pod(), Kind::Outbound).expect("served");
    let (mut client, proxy_a) = tokio::io::duplex(1024);
    let (proxy_b, mut server) = tokio::io::duplex(1024);
    let copy = tokio::spawn(copy_until_closed(proxy_a, proxy_b, guard));
    client.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.expect("server reads");

    live.pod_stopping(&pod());
    let started = Instant::now();
    let drained = tokio::spawn({
        let live = live.clone();
        async move { drain(&Pods::default(), &live, DEADLINE).await }
    });
    // Each end answers the close with its own, as an application reading EOF does.
    assert_eq!(client.read(&mut buf).await.expect("client EOF"), 0);
    assert_eq!(server.read(&mut buf).await.expect("server EOF"), 0);
    assert!(started.elapsed() >= DEADLINE, "open until the deadline");
    client.shutdown().await.expect("client closes");
    server.shutdown().await.expect("server closes");
    match copy.await.expect("join") {
        Err(CopyEnd::Closed { reason, .. }) => {
            assert_eq!(reason, CloseReason::Shutdown { deadline: DEADLINE });
            assert_eq!(reason.flags(), "DRAIN");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(drained.await.expect("join"), 1);
    assert!(live.is_empty());
}
