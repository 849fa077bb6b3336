//! What the routing kinds' `validate()` share: a collector of problems that names each field by
//! its path (`spec.rules[0].matches[1].path.value: ...`), and the duration syntaxes.

use std::fmt::Display;
use std::time::Duration;

/// Why an object is refused: every problem found, each `<field path>: <what is wrong>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The problems, in field order.
    pub problems: Vec<String>,
}

impl std::error::Error for ValidationError {}

impl Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

/// Collects problems while walking an object.
#[derive(Debug, Default)]
pub(crate) struct Check {
    problems: Vec<String>,
}

impl Check {
    /// Records that the field at `path` is wrong.
    pub(crate) fn fail(&mut self, path: impl Display, what: impl Display) {
        self.problems.push(format!("{path}: {what}"));
    }

    /// Records a problem unless `ok`.
    pub(crate) fn require(&mut self, ok: bool, path: impl Display, what: impl Display) {
        if !ok {
            self.fail(path, what);
        }
    }

    /// Checks that `value` compiles as a regular expression (RE2 syntax).
    pub(crate) fn regex(&mut self, path: impl Display, value: &str) {
        if let Err(e) = regex::Regex::new(value) {
            self.fail(
                path,
                format!("{value:?} is not a valid regular expression: {e}"),
            );
        }
    }

    /// Checks an HTTP header name (an RFC 7230 token).
    pub(crate) fn header_name(&mut self, path: impl Display, name: &str) {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            self.fail(path, format!("{name:?} is not a valid header name"));
        }
    }

    /// Parses a Gateway API duration (GEP-2257), recording a problem when it is not one.
    pub(crate) fn gateway_duration(&mut self, path: impl Display, value: &str) -> Option<Duration> {
        match parse_gateway_duration(value) {
            Ok(d) => Some(d),
            Err(e) => {
                self.fail(path, e);
                None
            }
        }
    }

    /// Parses an Istio duration (`1s`, `0.5s`, `100ms`, `1m30s`), recording a problem when it is
    /// not one or is shorter than `min`.
    pub(crate) fn istio_duration(
        &mut self,
        path: impl Display,
        value: &str,
        min: Duration,
    ) -> Option<Duration> {
        match parse_duration(value) {
            Ok(d) if d >= min => Some(d),
            Ok(_) => {
                self.fail(path, format!("{value:?} is shorter than {min:?}"));
                None
            }
            Err(e) => {
                self.fail(path, e);
                None
            }
        }
    }

    /// `Ok` when nothing was recorded.
    pub(crate) fn finish(self) -> Result<(), ValidationError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                problems: self.problems,
            })
        }
    }
}

/// A Gateway API duration (GEP-2257): one to four `<1-5 digits><h|m|s|ms>` parts, e.g. `1h30m`,
/// `500ms`, `0s`.
pub fn parse_gateway_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("{value:?} is not a Gateway API duration (e.g. 10s, 500ms, 1h30m)");
    let parts = split_duration(value).ok_or_else(bad)?;
    if parts.is_empty() || parts.len() > 4 {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    for (number, unit) in parts {
        if number.is_empty() || number.len() > 5 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        total += match unit {
            "h" => Duration::from_secs(n * 3600),
            "m" => Duration::from_secs(n * 60),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            _ => return Err(bad()),
        };
    }
    Ok(total)
}

/// A duration as Istio's API takes it: a sequence of decimal numbers with units `h`, `m`, `s`,
/// `ms`, `us` or `ns` (`1s`, `0.25s`, `1m30s`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("{value:?} is not a duration (e.g. 1s, 0.5s, 100ms, 1m30s)");
    let parts = split_duration(value).ok_or_else(bad)?;
    if parts.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    for (number, unit) in parts {
        let n: f64 = number.parse().map_err(|_| bad())?;
        if !n.is_finite() || n < 0.0 || number.starts_with('+') {
            return Err(bad());
        }
        total += n * match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Splits `1h30m` into `[("1", "h"), ("30", "m")]`; `None` when a part lacks a number or a unit.
fn split_duration(value: &str) -> Option<Vec<(&str, &str)>> {
    let mut parts = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let unit_at = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(unit_at);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        if number.is_empty() {
            return None;
        }
        parts.push((number, unit));
        rest = next;
    }
    Some(parts)
}

/// Whether `value` is an IP address or a CIDR whose prefix fits the address.
pub(crate) fn is_cidr(value: &str) -> bool {
    match value.split_once('/') {
        None => value.parse::<std::net::IpAddr>().is_ok(),
        Some((ip, len)) => match (ip.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(len)) => len <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(len)) => len <= 128,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_durations_follow_gep_2257() {
        assert_eq!(parse_gateway_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(
            parse_gateway_duration("1h30m500ms"),
            Ok(Duration::from_millis(5_400_500))
        );
        assert_eq!(parse_gateway_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "1.5s", "123456s", "1d", "s", "1h1h1h1h1h", "-1s"] {
            assert!(parse_gateway_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn istio_durations_take_decimals_and_small_units() {
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "5", "1x", "s1", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_need_a_prefix_that_fits() {
        assert!(is_cidr("10.0.0.0/8"));
        assert!(is_cidr("10.1.2.3"));
        assert!(is_cidr("fd00::/64"));
        assert!(!is_cidr("10.0.0.0/33"));
        assert!(!is_cidr("nope"));
    }
}
