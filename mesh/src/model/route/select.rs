//! Which rule a request takes: pure, so it is tested without a proxy.
//!
//! Every `(rule, match)` pair whose conditions all hold is a candidate (a rule without
//! matches has one implicit match: any path). Among candidates the most specific wins, by
//! Gateway API precedence:
//! 1. the path: an exact path, then a regular expression (Istio's choice, the spec leaves regex
//!    open), then the longest prefix (no path condition counts as the prefix `/`);
//! 2. a method condition over none;
//! 3. more header conditions;
//! 4. more query parameter conditions;
//! 5. the earlier rule (rules arrive oldest route first, then by namespace/name, then rule
//!    order), then the earlier match within it.
//!
//! Rules from an Istio VirtualService ([`ServiceRoutes::first_match`]) are tried in order
//! instead, and the first that matches wins.

use std::cmp::Reverse;

use http::{HeaderMap, Method, Uri};

use super::{PathMatch, Route, RouteMatch, ServiceRoutes};

/// The parts of a request that routing reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target (path and query are read).
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    pub fn of<B>(request: &'a http::Request<B>) -> Self {
        RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }

    fn path(&self) -> &str {
        match self.uri.path() {
            "" => "/",
            path => path,
        }
    }

    /// The value of the first query parameter called `name` (raw, not percent-decoded).
    fn query_param(&self, name: &str) -> Option<&str> {
        self.uri.query()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }
}

/// The chosen rule and the match that chose it (`None` for a rule without matches), e.g. to
/// know which prefix a prefix rewrite replaces.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// The rule.
    pub route: &'a Route,
    /// The match that held.
    pub matched: Option<&'a RouteMatch>,
}

impl ServiceRoutes {
    /// The rule `request` takes, if any (no rule matching: the waypoint answers 404 `NR`).
    pub fn select(&self, request: &RequestHead<'_>) -> Option<&Route> {
        self.select_match(request).map(|s| s.route)
    }

    /// As [`ServiceRoutes::select`], with the match that held.
    pub fn select_match(&self, request: &RequestHead<'_>) -> Option<Selected<'_>> {
        let mut best: Option<(Rank, Selected<'_>)> = None;
        for (rule_index, route) in self.rules.iter().enumerate() {
            let candidates: Vec<(usize, Option<&RouteMatch>)> = if route.matches.is_empty() {
                vec![(0, None)]
            } else {
                route.matches.iter().map(Some).enumerate().collect()
            };
            for (match_index, m) in candidates {
                if let Some(m) = m {
                    if !m.holds(request) {
                        continue;
                    }
                }
                if self.first_match {
                    return Some(Selected { route, matched: m });
                }
                let rank = Rank::of(m, rule_index, match_index);
                if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                    best = Some((rank, Selected { route, matched: m }));
                }
            }
        }
        best.map(|(_, s)| s)
    }
}

/// Precedence of a candidate: greater wins.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// Exact 3, regex 2, prefix 1.
    path_kind: u8,
    /// Length of an exact or prefix path.
    path_len: usize,
    method: bool,
    headers: usize,
    query_params: usize,
    rule: Reverse<usize>,
    matched: Reverse<usize>,
}

impl Rank {
    fn of(m: Option<&RouteMatch>, rule: usize, matched: usize) -> Rank {
        let (path_kind, path_len) = match m.and_then(|m| m.path.as_ref()) {
            Some(PathMatch::Exact(p)) => (3, p.len()),
            Some(PathMatch::Regex(_)) => (2, 0),
            Some(PathMatch::Prefix(p)) => (1, p.len()),
            None => (1, 1),
        };
        Rank {
            path_kind,
            path_len,
            method: m.is_some_and(|m| m.method.is_some()),
            headers: m.map_or(0, |m| m.headers.len()),
            query_params: m.map_or(0, |m| m.query_params.len()),
            rule: Reverse(rule),
            matched: Reverse(matched),
        }
    }
}

impl PathMatch {
    /// Whether `path` (without query) satisfies the condition.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) if p == "/" => true,
            PathMatch::Prefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

impl RouteMatch {
    /// Whether every condition holds for `request`.
    pub fn holds(&self, request: &RequestHead<'_>) -> bool {
        if let Some(path) = &self.path {
            if !path.matches(request.path()) {
                return false;
            }
        }
        if let Some(method) = &self.method {
            if method != request.method {
                return false;
            }
        }
        let headers_hold = self.headers.iter().all(|h| {
            request
                .headers
                .get_all(&h.name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| h.value.matches(v)))
        });
        headers_hold
            && self.query_params.iter().all(|q| {
                request
                    .query_param(&q.name)
                    .is_some_and(|v| q.value.matches(v))
            })
    }
}
