//! Serializers of the http and time types in the route model, for config dumps: names, values
//! and methods as strings, status codes as numbers, durations as `1.5s` / `25ms`.

use std::fmt::Display;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Serializer;

pub(super) fn display<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

pub(super) fn opt_display<T: Display, S: Serializer>(
    value: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

pub(super) fn duration<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{value:?}"))
}

pub(super) fn opt_duration<S: Serializer>(
    value: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => duration(d, s),
        None => s.serialize_none(),
    }
}

pub(super) fn status<S: Serializer>(value: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(value.as_u16())
}

pub(super) fn statuses<S: Serializer>(value: &[StatusCode], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(value.iter().map(StatusCode::as_u16))
}

pub(super) fn headers<S: Serializer>(
    value: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        value
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("<not text>"))),
    )
}

pub(super) fn names<S: Serializer>(value: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(value.iter().map(HeaderName::as_str))
}
