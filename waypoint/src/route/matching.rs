//! Request matching: path (exact, prefix, regex), method, headers and query parameters, and
//! Gateway API precedence among the matches that accept a request.
//!
//! Regular expressions are compiled once, when the route table is built, and must match the
//! whole value (anchored).

use std::cmp::Ordering;

use http::request::Parts;
use http::{HeaderName, Method};

/// A compiled regular expression that must match a whole value; compares and serializes as
/// its source.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    re: regex::Regex,
}

impl Pattern {
    /// Compiles `source` (RE2-like syntax of the `regex` crate), anchored at both ends.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Ok(Pattern {
            source: source.to_string(),
            re: regex::Regex::new(&format!("^(?:{source})$"))?,
        })
    }

    /// The expression as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.re.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// How a path is matched (on the path without its query string).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with this, at a segment boundary (`/a` matches `/a`, `/a/` and `/a/b`,
    /// not `/ab`).
    Prefix(String),
    /// The whole path matches this expression.
    Regex(Pattern),
}

impl PathMatch {
    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || (path.starts_with(p)
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// How a header or query parameter value is matched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// Equal to this.
    Exact(String),
    /// The whole value matches this expression.
    Regex(Pattern),
}

impl StringMatch {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => v == value,
            StringMatch::Regex(re) => re.is_match(value),
        }
    }
}

/// A header that must be present with a matching value (any of its values).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeaderMatch {
    /// Header name.
    #[serde(serialize_with = "header_name")]
    pub name: HeaderName,
    /// Value condition.
    pub value: StringMatch,
}

impl HeaderMatch {
    /// A header that must equal `value`.
    pub fn exact(name: &'static str, value: &str) -> Self {
        HeaderMatch {
            name: HeaderName::from_static(name),
            value: StringMatch::Exact(value.to_string()),
        }
    }
}

fn header_name<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

/// A query parameter that must be present with a matching value; the first parameter of that
/// name is compared.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueryMatch {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// Value condition (on the percent-decoded value).
    pub value: StringMatch,
}

/// One way a request can match a rule; every set field must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Method condition.
    #[serde(serialize_with = "method_opt")]
    pub method: Option<Method>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    pub query_params: Vec<QueryMatch>,
}

fn method_opt<S: serde::Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_some(m.as_str()),
        None => s.serialize_none(),
    }
}

impl RouteMatch {
    /// Whether the request head matches.
    pub fn matches(&self, req: &Parts) -> bool {
        self.path.as_ref().is_none_or(|p| p.matches(req.uri.path()))
            && self.method.as_ref().is_none_or(|m| *m == req.method)
            && self.headers.iter().all(|h| {
                req.headers
                    .get_all(&h.name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| h.value.matches(v))
            })
            && self.query_params.iter().all(|q| {
                query_param(req.uri.query().unwrap_or(""), &q.name)
                    .is_some_and(|v| q.value.matches(&v))
            })
    }

    /// How specific this match is, for Gateway API precedence (greater wins).
    pub fn precedence(&self) -> Precedence {
        let (path_kind, path_len) = match &self.path {
            Some(PathMatch::Exact(p)) => (3, p.len()),
            Some(PathMatch::Regex(r)) => (2, r.source().len()),
            Some(PathMatch::Prefix(p)) => (1, p.trim_end_matches('/').len()),
            None => (1, 0),
        };
        Precedence {
            path_kind,
            path_len,
            method: self.method.is_some(),
            headers: self.headers.len(),
            query_params: self.query_params.len(),
        }
    }
}

/// The specificity of a match, ordered as Gateway API orders matching rules: an exact path
/// first, then a regex path (implementation-specific in the spec; longer expression first),
/// then the longest prefix; then a method match; then the most header matches; then the most
/// query parameter matches. Equal precedence keeps rule order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query_params: usize,
}

/// The first value of query parameter `name` in `query`, percent-decoded (`+` as space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Among `candidates` (rule index, its matches), the rule whose best accepting match has the
/// highest precedence; ties go to the earlier rule. A rule without matches accepts every
/// request with the lowest precedence (an implicit prefix `/`).
pub fn best_rule<'a>(
    candidates: impl Iterator<Item = (usize, &'a [RouteMatch])>,
    req: &Parts,
) -> Option<(usize, Option<usize>)> {
    let mut best: Option<(Precedence, usize, Option<usize>)> = None;
    for (rule, matches) in candidates {
        let found = if matches.is_empty() {
            Some((RouteMatch::default().precedence(), None))
        } else {
            matches
                .iter()
                .enumerate()
                .filter(|(_, m)| m.matches(req))
                .map(|(i, m)| (m.precedence(), Some(i)))
                .fold(
                    None,
                    |acc: Option<(Precedence, Option<usize>)>, x| match acc {
                        Some(a) if a.0.cmp(&x.0) != Ordering::Less => Some(a),
                        _ => Some(x),
                    },
                )
        };
        if let Some((p, m)) = found {
            if best.as_ref().is_none_or(|b| p > b.0) {
                best = Some((p, rule, m));
            }
        }
    }
    best.map(|(_, rule, m)| (rule, m))
}
