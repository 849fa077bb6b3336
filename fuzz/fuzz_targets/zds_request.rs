//! A ZDS message from the CNI agent as ztunnel decodes it: protobuf `WorkloadRequest`, then
//! validation with the descriptors that came with it (`mesh::zds::Request::from_parts`).
//!
//! Input layout: byte 0 picks how many descriptors arrive with the message (0, 1 or 2: the
//! agent may send any number); the rest is the message. Never panics; an accepted `add`
//! carries exactly one descriptor and a non-empty uid, every other accepted message none.
#![no_main]

use std::os::fd::OwnedFd;

use libfuzzer_sys::fuzz_target;
use mesh::zds::Request;
use prost::Message;
use proto::zds::WorkloadRequest;

fuzz_target!(|data: &[u8]| {
    let Some((&fds, bytes)) = data.split_first() else {
        return;
    };
    let Ok(msg) = WorkloadRequest::decode(bytes) else {
        return;
    };
    let fds: Vec<OwnedFd> = (0..fds % 3)
        .filter_map(|_| std::fs::File::open("/dev/null").ok().map(OwnedFd::from))
        .collect();
    let sent = fds.len();
    match Request::from_parts(msg, fds) {
        Ok(Request::Add { uid, .. }) => {
            assert_eq!(sent, 1, "an add with {sent} descriptors accepted");
            assert!(!uid.is_empty());
        }
        Ok(Request::Keep { uid } | Request::Del { uid }) => {
            assert_eq!(sent, 0);
            assert!(!uid.is_empty());
        }
        Ok(Request::SnapshotSent) => assert_eq!(sent, 0),
        Err(_) => {}
    }
});
