#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;

fn limits(max: usize) -> Limits {
    Limits::new(
        Acceptor::new(),
        NonZeroUsize::new(max),
        Duration::from_secs(1),
    )
}

#[test]
fn a_pod_at_its_cap_is_refused_until_one_of_its_connections_closes() {
    let l = limits(2);
    let a = l.admit("pod-a").expect("first");
    let _b = l.admit("pod-a").expect("second");
    let refused = l.admit("pod-a").expect_err("third is over the cap");
    assert_eq!(refused.max, 2);
    assert_eq!(l.open("pod-a"), 2);
    // Another pod has its own count.
    let _other = l.admit("pod-b").expect("another pod");
    drop(a);
    assert_eq!(l.open("pod-a"), 1);
    let _c = l.admit("pod-a").expect("a place was given back");
}

#[test]
fn without_a_cap_every_connection_is_admitted_and_nothing_is_kept() {
    let l = limits(0);
    let slots: Vec<Slot> = (0..10_000)
        .map(|_| l.admit("pod-a").expect("admitted"))
        .collect();
    assert_eq!(l.open("pod-a"), 0);
    assert!(l.lock().is_empty());
    drop(slots);
}

#[test]
fn a_pod_with_no_live_connection_holds_no_entry_once_another_pod_arrives() {
    let l = limits(1);
    drop(l.admit("gone").expect("admitted"));
    let _s = l.admit("new").expect("admitted");
    assert!(!l.lock().contains_key("gone"));
}

#[test]
fn refusals_are_logged_at_most_once_per_interval() {
    let count = PodCount {
        open: AtomicUsize::new(0),
        refused: AtomicU64::new(0),
        last_logged: AtomicU64::new(0),
        epoch: Instant::now(),
    };
    assert!(count.should_log());
    assert!(!count.should_log());
    assert!(!count.should_log());
}
