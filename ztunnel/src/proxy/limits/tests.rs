#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;

fn limits(max: usize) -> Limits {
    Limits::new(
        Acceptor::new(),
        NonZeroUsize::new(max),
        Duration::from_secs(1),
    )
}

fn uid(s: &str) -> Arc<str> {
    s.into()
}

#[test]
fn a_pod_at_its_cap_is_refused_until_one_of_its_connections_closes() {
    let l = limits(2);
    let pod_a = l.pod_cap(&uid("pod-a"));
    let a = pod_a.admit().expect("first");
    let _b = pod_a.admit().expect("second");
    let refused = pod_a.admit().expect_err("third is over the cap");
    assert_eq!(refused.max, 2);
    assert_eq!(refused.uid, "pod-a");
    assert_eq!(l.open("pod-a"), 2);
    // A second proxy of the same pod (handed over again) shares the count.
    let again = l.pod_cap(&uid("pod-a"));
    again.admit().expect_err("the same pod, still at its cap");
    // Another pod has its own count.
    let _other = l.pod_cap(&uid("pod-b")).admit().expect("another pod");
    drop(a);
    assert_eq!(l.open("pod-a"), 1);
    let _c = again.admit().expect("a place was given back");
}

#[test]
fn without_a_cap_every_connection_is_admitted_and_nothing_is_kept() {
    let l = limits(0);
    let cap = l.pod_cap(&uid("pod-a"));
    let slots: Vec<Slot> = (0..10_000)
        .map(|_| cap.admit().expect("admitted"))
        .collect();
    assert_eq!(l.open("pod-a"), 0);
    assert!(l.lock().is_empty());
    drop(slots);
}

#[test]
fn a_pod_with_no_proxy_and_no_live_connection_holds_no_entry_once_another_pod_arrives() {
    let l = limits(1);
    let gone = l.pod_cap(&uid("gone"));
    drop(gone.admit().expect("admitted"));
    drop(gone);
    let _s = l.pod_cap(&uid("new")).admit().expect("admitted");
    assert!(!l.lock().contains_key("gone"));
}

#[test]
fn refusals_are_logged_at_most_once_per_interval() {
    let count = PodCount {
        uid: uid("pod-a"),
        max: NonZeroUsize::new(1).expect("non-zero"),
        open: AtomicUsize::new(0),
        refused: AtomicU64::new(0),
        last_logged: AtomicU64::new(0),
        epoch: Instant::now(),
    };
    assert!(count.should_log());
    assert!(!count.should_log());
    assert!(!count.should_log());
}
