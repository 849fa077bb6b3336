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

/// The next request on `client`, acked, as `add <uid> <service account>` or `del <uid>`.
async fn next_acked(client: &ZdsClient) -> String {
    let request = tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .expect("a request in time")
        .expect("request");
    client.ack(Ok(())).await.expect("ack");
    match request {
        Request::Add { uid, info, .. } => {
            format!("add {uid} {}", info.expect("info").service_account)
        }
        Request::Del { uid } => format!("del {uid}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn when_the_newer_ztunnel_dies_the_parked_one_catches_up_and_gets_every_later_change() {
    let (a, b, c, d) = (
        "Kubernetes//v1/Pod/demo/a",
        "Kubernetes//v1/Pod/demo/b",
        "Kubernetes//v1/Pod/demo/c",
        "Kubernetes//v1/Pod/demo/d",
    );
    let hub = Arc::new(Hub::default());
    hub.add(pod(a));
    hub.add(pod(b));
    let (old, old_task) = connect(&hub).await;
    assert_eq!(take_snapshot(&old).await, [a, b]);
    let (new, new_task) = connect(&hub).await;
    assert_eq!(take_snapshot(&new).await, [a, b]);

    // While the old one is parked: c enrolled, a gone, b's service account changed.
    let _ack = hub.add(pod(c)).expect("connected");
    assert_eq!(next_acked(&new).await, format!("add {c} sa"));
    hub.del(a).expect("enrolled");
    assert_eq!(next_acked(&new).await, format!("del {a}"));
    assert!(hub.reannounce(b, "other"));
    assert_eq!(next_acked(&new).await, format!("del {b}"));
    assert_eq!(next_acked(&new).await, format!("add {b} other"));

    // The new ztunnel dies before the old one is told to go.
    drop(new);
    tokio::time::timeout(Duration::from_secs(5), new_task)
        .await
        .expect("the newer connection's task ends")
        .expect("join");
    let mut caught_up = Vec::new();
    for _ in 0..4 {
        caught_up.push(next_acked(&old).await);
    }
    assert_eq!(
        caught_up,
        [
            format!("del {a}"),
            format!("del {b}"),
            format!("add {b} other"),
            format!("add {c} sa"),
        ],
        "the old ztunnel hears what changed since it was parked, dels first"
    );
    assert!(hub.ztunnel_connected(), "the old one is the connected one");

    // And every later change, acked as usual.
    let ack = hub.add(pod(d)).expect("the old one is connected");
    assert_eq!(next_acked(&old).await, format!("add {d} sa"));
    assert_eq!(ack.await.expect("answer"), Ok(()));
    assert!(!old_task.is_finished());
}

#[tokio::test]
async fn the_newest_parked_connection_resumes_and_older_ones_stay_idle() {
    let hub = Arc::new(Hub::default());
    hub.add(pod(UID));
    let (oldest, _oldest_task) = connect(&hub).await;
    take_snapshot(&oldest).await;
    let (older, _older_task) = connect(&hub).await;
    take_snapshot(&older).await;
    let (new, _new_task) = connect(&hub).await;
    take_snapshot(&new).await;

    drop(new);
    let b = "Kubernetes//v1/Pod/demo/b";
    // Whichever resumes gets b once the newest is gone; wait for that to have happened.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !hub.ztunnel_connected() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a parked connection resumes");
    let _ack = hub.add(pod(b)).expect("connected");
    assert_eq!(next_acked(&older).await, format!("add {b} sa"));
    assert!(
        tokio::time::timeout(SHORT, oldest.next()).await.is_err(),
        "the oldest stays parked and idle"
    );
}

#[tokio::test]
async fn a_parked_connection_that_closed_is_not_resumed_and_the_pods_wait_for_a_snapshot() {
    let hub = Arc::new(Hub::default());
    hub.add(pod(UID));
    let (old, old_task) = connect(&hub).await;
    take_snapshot(&old).await;
    let (new, new_task) = connect(&hub).await;
    take_snapshot(&new).await;

    // The old ztunnel drains and exits, then the new one dies.
    drop(old);
    tokio::time::timeout(Duration::from_secs(5), old_task)
        .await
        .expect("the parked connection ends with its ztunnel")
        .expect("join");
    drop(new);
    tokio::time::timeout(Duration::from_secs(5), new_task)
        .await
        .expect("the newer connection's task ends")
        .expect("join");
    assert!(!hub.ztunnel_connected(), "nobody serves the pods now");
    assert!(hub.add(pod("Kubernetes//v1/Pod/demo/b")).is_none());

    let (next, _next_task) = connect(&hub).await;
    assert_eq!(
        take_snapshot(&next).await,
        [UID, "Kubernetes//v1/Pod/demo/b"],
        "the next ztunnel gets every pod in its snapshot"
    );
}

#[test]
fn catching_up_skips_a_pod_enrolled_again_with_a_new_descriptor_of_the_same_namespace() {
    let was = pod(UID);
    let known = BTreeMap::from([(UID.to_string(), was.clone())]);
    // A retried ADD: the same namespace, opened again.
    let again = pod(UID);
    assert!(!Arc::ptr_eq(&was.netns, &again.netns));
    let now = BTreeMap::from([(UID.to_string(), again)]);
    assert!(catch_up(&known, &now).is_empty(), "nothing to tell ztunnel");

    // Another namespace under the same uid (the pod's sandbox was recreated): del, then add.
    let mut other = pod(UID);
    // (Any other file stands in for it: only its identity is compared.)
    other.netns = Arc::new(File::open("/proc/self/ns/uts").expect("another namespace"));
    let now = BTreeMap::from([(UID.to_string(), other)]);
    let events: Vec<String> = catch_up(&known, &now)
        .iter()
        .map(|e| match e {
            Event::Del(uid) => format!("del {uid}"),
            Event::Add(pod, _) => format!("add {}", pod.uid),
        })
        .collect();
    assert_eq!(events, [format!("del {UID}"), format!("add {UID}")]);
}
