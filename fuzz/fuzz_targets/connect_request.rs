//! The HBONE CONNECT request as a server sees it: method, `:authority`, `baggage`, `forwarded`.
//!
//! Input layout (every byte sequence is some request, or is skipped when `http` itself would
//! refuse to build it):
//! - byte 0: the method. Below 0xF0 it picks from a short list of real methods; otherwise its
//!   low nibble is the length of an arbitrary method token taken from the next bytes.
//! - byte 1: the URI form (bit 0: authority-only vs. a whole URI) and the authority length.
//! - the authority (or URI) bytes, then the rest split on `\n` into header values for
//!   `baggage`, `forwarded`, `traceparent`, a second `forwarded` and the waypoint's origin
//!   header (the client identity it vouches for).
//!
//! Never panics; an accepted target is a CONNECT to a non-zero port that is not one of the
//! tunnel's own, and formats back to an authority that parses to the same address.
#![no_main]

use http::{HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use mesh::hbone::connect::{
    forwarded_for, origin_identity, parse_authority, parse_target, ORIGIN_HEADER,
};
use mesh::hbone::{Baggage, RESERVED_PORTS};

const METHODS: [Method; 6] = [
    Method::CONNECT,
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::OPTIONS,
    Method::HEAD,
];

const HEADERS: [&str; 5] = [
    "baggage",
    "forwarded",
    "traceparent",
    "forwarded",
    ORIGIN_HEADER,
];

fuzz_target!(|data: &[u8]| {
    let Some((&method_byte, rest)) = data.split_first() else {
        return;
    };
    let (method, rest) = if method_byte < 0xF0 {
        (
            METHODS[usize::from(method_byte) % METHODS.len()].clone(),
            rest,
        )
    } else {
        let len = usize::from(method_byte & 0x0F).min(rest.len());
        let (token, rest) = rest.split_at(len);
        let Ok(method) = Method::from_bytes(token) else {
            return;
        };
        (method, rest)
    };
    let Some((&form, rest)) = rest.split_first() else {
        return;
    };
    let len = usize::from(form >> 1).min(rest.len());
    let (authority, rest) = rest.split_at(len);

    // The authority text on its own, as the server would see any `:authority`.
    let authority_text = String::from_utf8_lossy(authority);
    check_authority(&authority_text);

    let uri = if form & 1 == 0 {
        Uri::builder().authority(authority).build().ok()
    } else {
        Uri::try_from(authority).ok()
    };
    let Some(uri) = uri else {
        return;
    };

    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for (name, value) in HEADERS.iter().zip(rest.split(|b| *b == b'\n')) {
        // Header values the peer's HTTP/2 stack would not deliver are skipped.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            req.headers_mut().append(*name, value);
        }
        // Baggage parsing also sees text no header would carry.
        check_baggage(&String::from_utf8_lossy(value));
    }

    if let Ok(target) = parse_target(&req) {
        assert_eq!(req.method(), Method::CONNECT, "only CONNECT has a target");
        assert_ne!(target.port(), 0);
        assert!(
            !RESERVED_PORTS.contains(&target.port()),
            "tunnel port {} accepted as a target",
            target.port()
        );
        assert!(
            req.uri().authority().is_some(),
            "a target without an authority"
        );
    }
    let _ = forwarded_for(req.headers());
    // The client identity a waypoint vouches for: parsed only from the destination's waypoint,
    // but parsing itself must hold for any bytes.
    let _ = origin_identity(req.headers());
    if let Some(baggage) = req.headers().get("baggage").and_then(|v| v.to_str().ok()) {
        check_baggage(baggage);
    }
});

fn check_authority(text: &str) {
    if let Ok(addr) = parse_authority(text) {
        assert_ne!(addr.port(), 0);
        assert!(!RESERVED_PORTS.contains(&addr.port()));
        assert_eq!(
            parse_authority(&addr.to_string()),
            Ok(addr),
            "an accepted target formats back to an authority naming the same address"
        );
    }
}

/// Parsing is total, and re-encoding what was parsed loses nothing.
fn check_baggage(value: &str) {
    let parsed = Baggage::parse(value);
    assert_eq!(
        Baggage::parse(&parsed.encode()),
        parsed,
        "baggage re-encoded from {value:?} parses differently"
    );
}
