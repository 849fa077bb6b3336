//! W3C trace context and request ids: each hop keeps the trace id and gets a new span id; a
//! request without a (valid) `traceparent` gets a new trace.

use http::HeaderMap;

/// A parsed W3C `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 128-bit trace id (never zero).
    pub trace_id: u128,
    /// 64-bit id of the span that sent the request (the parent of ours).
    pub parent_id: Option<u64>,
    /// Our span id, sent upstream as the new parent.
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid.
    pub fn parse(value: &str) -> Option<(u128, u64, u8)> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Future versions may append fields; version 00 has exactly four.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return None;
        }
        let lower_hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower_hex(version) && lower_hex(trace) && lower_hex(parent) && lower_hex(flags)) {
            return None;
        }
        let trace = u128::from_str_radix(trace, 16).ok()?;
        let parent = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace != 0 && parent != 0).then_some((trace, parent, flags))
    }

    /// Continues the trace of the request's `traceparent`, or starts a sampled one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let incoming = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        match incoming {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id: new_span_id(),
                flags,
            },
            None => TraceContext {
                trace_id: rand::random::<u128>() | 1,
                parent_id: None,
                span_id: new_span_id(),
                flags: 1,
            },
        }
    }

    /// The `traceparent` to send upstream: same trace, our span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The trace id as logged.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

fn new_span_id() -> u64 {
    rand::random::<u64>() | 1
}

/// A new `x-request-id`: a random UUID (version 4).
pub fn new_request_id() -> String {
    let r: u128 = rand::random();
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_trace_and_makes_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .expect("value"),
        );
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        assert_ne!(t.span_id, 0x00f067aa0ba902b7);
        let out = t.traceparent();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_eq!(out.len(), 55);
    }

    #[test]
    fn makes_a_trace_when_absent_or_invalid() {
        for bad in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("garbage"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(v) = bad {
                h.insert("traceparent", v.parse().expect("value"));
            }
            let t = TraceContext::from_headers(&h);
            assert_eq!(t.parent_id, None, "{bad:?}");
            assert!(TraceContext::parse(&t.traceparent()).is_some());
        }
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = new_request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, new_request_id());
    }
}
