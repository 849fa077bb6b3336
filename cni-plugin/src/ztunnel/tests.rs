#![allow(clippy::expect_used, clippy::unwrap_used)]

use mesh::zds::{Request, ZdsClient};

use super::*;

const UID: &str = "Kubernetes//v1/Pod/demo/a";
const SHORT: Duration = Duration::from_millis(300);

fn pod(uid: &str) -> Enrolled {
    Enrolled {
        uid: uid.into(),
        info: WorkloadInfo {
            name: "a".into(),
            namespace: "demo".into(),
            service_account: "sa".into(),
        },
        netns: Arc::new(File::open("/proc/self/ns/net").expect("own netns")),
    }
}

/// Connects a ztunnel to `hub`; returns its link and the agent's task serving it.
async fn connect(hub: &Arc<Hub>) -> (ZdsClient, tokio::task::JoinHandle<()>) {
    let (agent_end, ztunnel_end) = SeqPacket::pair().expect("socket pair");
    let task = tokio::spawn(hub.clone().serve(agent_end));
    (ZdsClient::over(ztunnel_end).await.expect("hello"), task)
}

/// Reads and acks requests up to and including `snapshot_sent`; the uids added.
async fn take_snapshot(client: &ZdsClient) -> Vec<String> {
    let mut added = Vec::new();
    loop {
        let request = client.next().await.expect("request");
        client.ack(Ok(())).await.expect("ack");
        match request {
            Request::Add { uid, .. } => added.push(uid),
            Request::SnapshotSent => return added,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_newer_ztunnel_gets_the_snapshot_and_every_later_change_while_the_older_stays_connected_and_idle(
) {
    let hub = Arc::new(Hub::default());
    hub.add(pod(UID));
    let (old, old_task) = connect(&hub).await;
    assert_eq!(take_snapshot(&old).await, [UID]);

    let (new, _new_task) = connect(&hub).await;
    assert_eq!(
        take_snapshot(&new).await,
        [UID],
        "the newer one gets every pod"
    );
    assert!(hub.ztunnel_connected());

    // Changes go to the newer connection only.
    let ack = hub
        .add(pod("Kubernetes//v1/Pod/demo/b"))
        .expect("a ztunnel is connected");
    let request = new.next().await.expect("add on the newer link");
    assert!(matches!(request, Request::Add { ref uid, .. } if uid.ends_with("/b")));
    new.ack(Ok(())).await.expect("ack");
    assert_eq!(ack.await.expect("answer"), Ok(()));
    hub.del(UID).expect("enrolled");
    assert!(matches!(
        new.next().await.expect("del"),
        Request::Del { .. }
    ));
    new.ack(Ok(())).await.expect("ack");

    // The older one hears nothing more, and the agent does not close its link: a closed link
    // would make it reconnect and take the pods back.
    assert!(
        tokio::time::timeout(SHORT, old.next()).await.is_err(),
        "the older link stays open and idle"
    );
    assert!(!old_task.is_finished());

    // It ends when the older ztunnel closes it (exits after its drain).
    drop(old);
    tokio::time::timeout(Duration::from_secs(5), old_task)
        .await
        .expect("the parked connection ends with its ztunnel")
        .expect("join");
    assert!(
        hub.ztunnel_connected(),
        "the newer one is still the connected one"
    );
}
