//! Route filters: header modifiers (request and response), URL rewrite and request redirect.
//! (Request mirroring, the fifth filter, is [`crate::mirror`].)
//!
//! Request-side filters run in the route phase, once a rule is chosen, so every try and the
//! mirror see the same request; response header modifiers run in the upstream response phase.

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::mirror::RequestMirror;

/// One filter of a rule, applied in order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Filter {
    /// Edits the request headers sent upstream.
    RequestHeaders(HeaderModifier),
    /// Edits the response headers sent to the client.
    ResponseHeaders(HeaderModifier),
    /// Rewrites host and path before forwarding.
    UrlRewrite(UrlRewrite),
    /// Answers with a redirect instead of forwarding.
    Redirect(Redirect),
    /// Sends a copy to another backend.
    Mirror(RequestMirror),
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes (names case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeaderModifier {
    /// Name and value pairs that replace any header of that name.
    pub set: Vec<(String, String)>,
    /// Name and value pairs appended.
    pub add: Vec<(String, String)>,
    /// Names removed.
    pub remove: Vec<String>,
}

impl HeaderModifier {
    /// Applies the edits to `headers` (set, then add, then remove); invalid names or values
    /// are skipped.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let pair = |(n, v): &(String, String)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        };
        for (n, v) in self.set.iter().filter_map(pair) {
            headers.insert(n, v);
        }
        for (n, v) in self.add.iter().filter_map(pair) {
            headers.append(n, v);
        }
        for n in &self.remove {
            if let Ok(n) = HeaderName::from_bytes(n.as_bytes()) {
                headers.remove(n);
            }
        }
    }
}

/// A new path: the whole path, or the part a prefix match matched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathModifier {
    /// Replaces the whole path (the query string is kept).
    Full(String),
    /// Replaces the matched prefix (without a prefix match: acts on the prefix `/`).
    Prefix(String),
}

impl PathModifier {
    /// The new path and query for `pq`, given the prefix the rule's match used.
    pub fn apply(&self, pq: &str, matched_prefix: Option<&str>) -> String {
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        let new_path = match self {
            PathModifier::Full(p) => p.clone(),
            PathModifier::Prefix(replacement) => {
                let prefix = matched_prefix.unwrap_or("/").trim_end_matches('/');
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                let replacement = replacement.trim_end_matches('/');
                match (replacement.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_string(),
                    (true, false) if rest.starts_with('/') => rest.to_string(),
                    (_, _) if rest.is_empty() || rest.starts_with('/') => {
                        format!("{replacement}{rest}")
                    }
                    _ => format!("{replacement}/{rest}"),
                }
            }
        };
        match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        }
    }
}

/// Rewrites the request before it is forwarded.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UrlRewrite {
    /// New `Host`/`:authority`; `None` unchanged.
    pub hostname: Option<String>,
    /// New path; `None` unchanged.
    pub path: Option<PathModifier>,
}

impl UrlRewrite {
    /// Rewrites `uri` and the `Host` header; returns the new authority when the host changed.
    pub fn apply(
        &self,
        uri: &mut Uri,
        headers: &mut HeaderMap,
        matched_prefix: Option<&str>,
    ) -> Option<String> {
        if let Some(path) = &self.path {
            let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            let new = path.apply(pq, matched_prefix);
            let mut parts = uri.clone().into_parts();
            if let Ok(pq) = PathAndQuery::try_from(new) {
                parts.path_and_query = Some(pq);
                if let Ok(u) = Uri::from_parts(parts) {
                    *uri = u;
                }
            }
        }
        let host = self.hostname.as_ref()?;
        let value = HeaderValue::from_str(host).ok()?;
        headers.insert(HOST, value);
        if uri.authority().is_some() {
            let mut parts = uri.clone().into_parts();
            parts.authority = host.parse().ok();
            if let Ok(u) = Uri::from_parts(parts) {
                *uri = u;
            }
        }
        Some(host.clone())
    }
}

/// Answers with a redirect instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Redirect {
    /// `http` or `https`; `None`: the request's.
    pub scheme: Option<String>,
    /// `None`: the request's host.
    pub hostname: Option<String>,
    /// `None`: the scheme's well-known port when a scheme is given, else the request's port.
    pub port: Option<u16>,
    /// `None`: the request's path.
    pub path: Option<PathModifier>,
    /// 301 or 302 (anything else is answered as 302).
    pub status: u16,
}

impl Redirect {
    /// The `Location` for a request to `authority` with path and query `pq`, which arrived
    /// over `scheme`.
    pub fn location(
        &self,
        scheme: &str,
        authority: &str,
        pq: &str,
        matched_prefix: Option<&str>,
    ) -> String {
        let (host, req_port) = split_host_port(authority);
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let port = match self.port {
            Some(p) => Some(p),
            // Gateway API: a redirect that names a scheme goes to that scheme's port.
            None if self.scheme.is_some() => None,
            None => req_port,
        };
        let host = self.hostname.as_deref().unwrap_or(host);
        let default_port = if new_scheme == "https" { 443 } else { 80 };
        let port = port
            .filter(|p| *p != default_port)
            .map_or_else(String::new, |p| format!(":{p}"));
        let pq = match &self.path {
            Some(m) => m.apply(pq, matched_prefix),
            None => pq.to_string(),
        };
        format!("{new_scheme}://{host}{port}{pq}")
    }

    /// The status answered: 301 when asked for, else 302.
    pub fn status(&self) -> http::StatusCode {
        match self.status {
            301 => http::StatusCode::MOVED_PERMANENTLY,
            303 => http::StatusCode::SEE_OTHER,
            307 => http::StatusCode::TEMPORARY_REDIRECT,
            308 => http::StatusCode::PERMANENT_REDIRECT,
            _ => http::StatusCode::FOUND,
        }
    }
}

fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement_keeps_the_rest_and_the_query() {
        let m = PathModifier::Prefix("/v2".into());
        assert_eq!(m.apply("/api/users?x=1", Some("/api")), "/v2/users?x=1");
        assert_eq!(m.apply("/api", Some("/api")), "/v2");
        let root = PathModifier::Prefix("/".into());
        assert_eq!(root.apply("/api/users", Some("/api")), "/users");
        assert_eq!(root.apply("/api", Some("/api/")), "/");
        let full = PathModifier::Full("/fixed".into());
        assert_eq!(full.apply("/a/b?q", Some("/a")), "/fixed?q");
    }

    #[test]
    fn header_modifier_sets_adds_and_removes() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        HeaderModifier {
            set: vec![("x-a".into(), "new".into())],
            add: vec![("x-b".into(), "1".into()), ("x-b".into(), "2".into())],
            remove: vec!["X-Gone".into()],
        }
        .apply(&mut h);
        assert_eq!(h["x-a"], "new");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(!h.contains_key("x-gone"));
    }

    #[test]
    fn redirect_location_follows_scheme_host_port_and_path() {
        let r = Redirect {
            scheme: Some("https".into()),
            hostname: None,
            port: None,
            path: None,
            status: 301,
        };
        assert_eq!(
            r.location("http", "shop.ns:8080", "/a?b", None),
            "https://shop.ns/a?b"
        );
        let r = Redirect {
            scheme: None,
            hostname: Some("new.ns".into()),
            port: None,
            path: Some(PathModifier::Prefix("/new".into())),
            status: 0,
        };
        assert_eq!(
            r.location("http", "shop.ns:8080", "/old/x", Some("/old")),
            "http://new.ns:8080/new/x"
        );
        assert_eq!(r.status(), http::StatusCode::FOUND);
    }
}
