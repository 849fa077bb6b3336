//! HTTPRoute's checks beyond types: the values the Gateway API CRD's schema and CEL rules
//! refuse, and what the mesh cannot do (extension filters), each named by its field path.

use crate::validate::{Check, ValidationError};
use crate::ParentReference;

use super::{
    BackendRef, HeaderMatch, HeaderModifier, HttpRoute, HttpRouteFilter, HttpRouteRule,
    PathModifier, RequestMirror,
};

/// The HTTP methods an HTTPRoute may match.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl HttpRoute {
    /// Checks the values the API server would refuse; the error names every bad field, e.g.
    /// `spec.rules[0].matches[1].path.value: "api" must start with /`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut c = Check::default();
        parent_refs(&mut c, &self.spec.parent_refs);
        for (r, rule) in self.spec.rules.iter().enumerate() {
            http_rule(&mut c, &format!("spec.rules[{r}]"), rule);
        }
        c.finish()
    }
}

fn http_rule(c: &mut Check, at: &str, rule: &HttpRouteRule) {
    for (m, matched) in rule.matches.iter().enumerate() {
        let at = format!("{at}.matches[{m}]");
        if let Some(path) = &matched.path {
            let value = path.path();
            match path.kind() {
                "Exact" | "PathPrefix" => {
                    c.require(
                        value.starts_with('/'),
                        format!("{at}.path.value"),
                        format!("{value:?} must start with /"),
                    );
                    c.require(
                        !value.contains("//") && !value.contains("/./") && !value.contains("/../"),
                        format!("{at}.path.value"),
                        format!("{value:?} must not contain //, /./ or /../"),
                    );
                }
                "RegularExpression" => c.regex(format!("{at}.path.value"), value),
                other => c.fail(
                    format!("{at}.path.type"),
                    format!("{other:?} is not Exact, PathPrefix or RegularExpression"),
                ),
            }
        }
        header_matches(c, &format!("{at}.headers"), &matched.headers, true);
        header_matches(
            c,
            &format!("{at}.queryParams"),
            &matched.query_params,
            false,
        );
        if let Some(method) = &matched.method {
            c.require(
                METHODS.contains(&method.as_str()),
                format!("{at}.method"),
                format!("{method:?} is not one of {}", METHODS.join(", ")),
            );
        }
    }
    let count = |kind: &str| {
        rule.filters
            .iter()
            .filter(|f| f.filter_type == kind)
            .count()
    };
    if count("RequestRedirect") > 0 && count("URLRewrite") > 0 {
        c.fail(
            format!("{at}.filters"),
            "may hold a RequestRedirect or a URLRewrite filter, not both",
        );
    }
    for kind in [
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
    ] {
        if count(kind) > 1 {
            c.fail(
                format!("{at}.filters"),
                format!("holds {kind} more than once"),
            );
        }
    }
    if count("RequestRedirect") > 0 && !rule.backend_refs.is_empty() {
        c.fail(
            format!("{at}.backendRefs"),
            "must be empty when the rule redirects (a RequestRedirect answers without a backend)",
        );
    }
    let only_prefix_match = rule.matches.len() == 1
        && rule.matches[0]
            .path
            .as_ref()
            .is_some_and(|p| p.kind() == "PathPrefix");
    for (f, filter) in rule.filters.iter().enumerate() {
        http_filter(c, &format!("{at}.filters[{f}]"), filter, only_prefix_match);
    }
    backend_refs(c, &format!("{at}.backendRefs"), &rule.backend_refs);
    let mut request = None;
    let mut backend = None;
    if let Some(t) = &rule.timeouts {
        if let Some(v) = &t.request {
            request = c.gateway_duration(format!("{at}.timeouts.request"), v);
        }
        if let Some(v) = &t.backend_request {
            backend = c.gateway_duration(format!("{at}.timeouts.backendRequest"), v);
        }
    }
    if let (Some(request), Some(backend)) = (request, backend) {
        if !request.is_zero() && !backend.is_zero() && backend > request {
            c.fail(
                format!("{at}.timeouts.backendRequest"),
                "must not be longer than timeouts.request",
            );
        }
    }
    if let Some(retry) = &rule.retry {
        for (i, code) in retry.codes.iter().enumerate() {
            c.require(
                (400..=599).contains(code),
                format!("{at}.retry.codes[{i}]"),
                format!("{code} is not a 4xx or 5xx status"),
            );
        }
        if let Some(attempts) = retry.attempts {
            c.require(
                attempts >= 0,
                format!("{at}.retry.attempts"),
                format!("{attempts} is negative"),
            );
        }
        if let Some(backoff) = &retry.backoff {
            c.gateway_duration(format!("{at}.retry.backoff"), backoff);
        }
    }
}

fn http_filter(c: &mut Check, at: &str, f: &HttpRouteFilter, only_prefix_match: bool) {
    let set = [
        ("RequestHeaderModifier", f.request_header_modifier.is_some()),
        (
            "ResponseHeaderModifier",
            f.response_header_modifier.is_some(),
        ),
        ("RequestMirror", f.request_mirror.is_some()),
        ("RequestRedirect", f.request_redirect.is_some()),
        ("URLRewrite", f.url_rewrite.is_some()),
        ("ExtensionRef", f.extension_ref.is_some()),
    ];
    if !set.iter().any(|(kind, _)| *kind == f.filter_type) {
        c.fail(
            format!("{at}.type"),
            format!(
                "{:?} is not one of {}",
                f.filter_type,
                set.map(|(k, _)| k).join(", ")
            ),
        );
        return;
    }
    for (kind, present) in set {
        let field = lower_first(kind);
        if kind == f.filter_type && !present {
            c.fail(
                format!("{at}.{field}"),
                format!("is required for type {kind}"),
            );
        } else if kind != f.filter_type && present {
            c.fail(
                format!("{at}.{field}"),
                format!("must not be set for type {}", f.filter_type),
            );
        }
    }
    if f.filter_type == "ExtensionRef" {
        c.fail(
            format!("{at}.type"),
            "ExtensionRef filters are not supported by the mesh",
        );
    }
    if let Some(m) = &f.request_header_modifier {
        header_modifier(c, &format!("{at}.requestHeaderModifier"), m);
    }
    if let Some(m) = &f.response_header_modifier {
        header_modifier(c, &format!("{at}.responseHeaderModifier"), m);
    }
    if let Some(m) = &f.request_mirror {
        request_mirror(c, &format!("{at}.requestMirror"), m);
    }
    if let Some(r) = &f.request_redirect {
        let at = format!("{at}.requestRedirect");
        if let Some(scheme) = &r.scheme {
            c.require(
                scheme == "http" || scheme == "https",
                format!("{at}.scheme"),
                format!("{scheme:?} is not http or https"),
            );
        }
        if let Some(port) = r.port {
            c.require(
                (1..=65535).contains(&port),
                format!("{at}.port"),
                format!("{port} is not a port number (1-65535)"),
            );
        }
        if let Some(code) = r.status_code {
            c.require(
                matches!(code, 301 | 302 | 303 | 307 | 308),
                format!("{at}.statusCode"),
                format!("{code} is not 301, 302, 303, 307 or 308"),
            );
        }
        if let Some(p) = &r.path {
            path_modifier(c, &format!("{at}.path"), p, only_prefix_match);
        }
    }
    if let Some(r) = &f.url_rewrite {
        if let Some(p) = &r.path {
            path_modifier(c, &format!("{at}.urlRewrite.path"), p, only_prefix_match);
        }
    }
}

fn lower_first(kind: &str) -> String {
    match kind {
        "URLRewrite" => "urlRewrite".into(),
        _ => {
            let mut chars = kind.chars();
            chars
                .next()
                .map(|first| first.to_ascii_lowercase().to_string() + chars.as_str())
                .unwrap_or_default()
        }
    }
}

fn path_modifier(c: &mut Check, at: &str, p: &PathModifier, only_prefix_match: bool) {
    match p.modifier_type.as_str() {
        "ReplaceFullPath" => {
            c.require(
                p.replace_full_path.is_some() && p.replace_prefix_match.is_none(),
                format!("{at}.replaceFullPath"),
                "must be set (and replacePrefixMatch not) for type ReplaceFullPath",
            );
        }
        "ReplacePrefixMatch" => {
            c.require(
                p.replace_prefix_match.is_some() && p.replace_full_path.is_none(),
                format!("{at}.replacePrefixMatch"),
                "must be set (and replaceFullPath not) for type ReplacePrefixMatch",
            );
            c.require(
                only_prefix_match,
                format!("{at}.type"),
                "ReplacePrefixMatch needs the rule to have exactly one match, a PathPrefix one",
            );
        }
        other => c.fail(
            format!("{at}.type"),
            format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
        ),
    }
    for value in [&p.replace_full_path, &p.replace_prefix_match]
        .into_iter()
        .flatten()
    {
        c.require(
            value.starts_with('/'),
            format!("{at}.value"),
            format!("{value:?} must start with /"),
        );
    }
}

/// Header (`headers: true`) or query parameter matches.
pub(crate) fn header_matches(c: &mut Check, at: &str, list: &[HeaderMatch], headers: bool) {
    for (i, m) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if headers {
            c.header_name(format!("{at}.name"), &m.name);
        } else {
            c.require(
                !m.name.is_empty(),
                format!("{at}.name"),
                "must not be empty",
            );
        }
        match m.match_type.as_deref().unwrap_or("Exact") {
            "Exact" => {}
            "RegularExpression" => c.regex(format!("{at}.value"), &m.value),
            other => c.fail(
                format!("{at}.type"),
                format!("{other:?} is not Exact or RegularExpression"),
            ),
        }
        let same = |o: &HeaderMatch| {
            if headers {
                o.name.eq_ignore_ascii_case(&m.name)
            } else {
                o.name == m.name
            }
        };
        if list[..i].iter().any(same) {
            c.fail(
                format!("{at}.name"),
                format!("{:?} is matched twice", m.name),
            );
        }
    }
}

/// A request or response header modifier.
pub(crate) fn header_modifier(c: &mut Check, at: &str, m: &HeaderModifier) {
    for (what, list) in [("set", &m.set), ("add", &m.add)] {
        for (i, h) in list.iter().enumerate() {
            c.header_name(format!("{at}.{what}[{i}].name"), &h.name);
            c.require(
                !h.value.contains(['\r', '\n']),
                format!("{at}.{what}[{i}].value"),
                "must not contain line breaks",
            );
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        c.header_name(format!("{at}.remove[{i}]"), name);
    }
}

/// A mirror filter.
pub(crate) fn request_mirror(c: &mut Check, at: &str, m: &RequestMirror) {
    backend_ref(c, &format!("{at}.backendRef"), &m.backend_ref);
    if let Some(p) = m.percent {
        c.require(
            (0..=100).contains(&p),
            format!("{at}.percent"),
            format!("{p} is not a percentage (0-100)"),
        );
    }
    if let Some(f) = &m.fraction {
        let denominator = f.denominator.unwrap_or(100);
        c.require(
            denominator > 0 && (0..=denominator).contains(&f.numerator),
            format!("{at}.fraction"),
            "needs 0 <= numerator <= denominator and denominator > 0",
        );
    }
    c.require(
        m.percent.is_none() || m.fraction.is_none(),
        at,
        "may set percent or fraction, not both",
    );
}

/// The backends of a rule.
pub(crate) fn backend_refs(c: &mut Check, at: &str, list: &[BackendRef]) {
    for (i, b) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        backend_ref(c, &at, b);
        if let Some(w) = b.weight {
            c.require(
                (0..=1_000_000).contains(&w),
                format!("{at}.weight"),
                format!("{w} is not a weight (0-1000000)"),
            );
        }
    }
}

fn backend_ref(c: &mut Check, at: &str, b: &BackendRef) {
    c.require(
        !b.name.is_empty(),
        format!("{at}.name"),
        "must not be empty",
    );
    c.require(
        b.is_service(),
        format!("{at}.kind"),
        "only core Services can be backends in the mesh",
    );
    match b.port {
        None if b.is_service() => c.fail(format!("{at}.port"), "is required for a Service"),
        Some(p) if !(1..=65535).contains(&p) => c.fail(
            format!("{at}.port"),
            format!("{p} is not a port number (1-65535)"),
        ),
        _ => {}
    }
}

/// The parents of a route.
pub(crate) fn parent_refs(c: &mut Check, list: &[ParentReference]) {
    for (i, p) in list.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        c.require(
            !p.name.is_empty(),
            format!("{at}.name"),
            "must not be empty",
        );
        if let Some(port) = p.port {
            c.require(port != 0, format!("{at}.port"), "must be 1-65535");
        }
    }
}
