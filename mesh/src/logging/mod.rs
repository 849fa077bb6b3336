//! Logging for every daemon of the mesh: one set-up, one JSON line schema, and a log filter that
//! can be changed at run time on the admin port (`GET|POST /logging?level=<filter>`).
//!
//! Lines go to stderr through a batching writer ([`writer`]), so a slow log sink never stalls
//! proxying: a thread of its own writes them, at most once per [`writer::FLUSH_DELAY`] while
//! lines keep coming.
//! The level comes from `RUST_LOG` (default `info`): comma-separated `level` and
//! `target=level` directives such as `info,ztunnel::proxy=debug` (a [`Targets`] filter; span and
//! field filters are not supported, which keeps `EnvFilter`'s regex matching out of the daemons).
//!
//! In the JSON format every line is one object with the keys of [`json`]'s schema: `timestamp`,
//! `level`, `component`, `target`, `message`, then the fields of the enclosing spans and of the
//! event itself, at the top level.

pub mod json;
pub mod writer;

use std::fmt;
use std::io::IsTerminal as _;
use std::str::FromStr;
use std::sync::Arc;

use http::{Method, StatusCode};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::http_server::{Call, Reply};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, in the schema of [`json::JsonLines`].
    Json,
}

impl LogFormat {
    /// The names accepted on the command line.
    pub const NAMES: [&'static str; 2] = ["text", "json"];
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Reads (with `""`) or replaces the log filter; answers the filter now in force.
pub type LogReload = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What [`init`] leaves running: the filter control and the writer's guard (dropping the guard
/// flushes the lines still buffered, so keep it until `main` returns).
pub struct Logging {
    /// Changes the filter at run time.
    pub reload: LogReload,
    /// Writes the lines still buffered when dropped.
    pub guard: writer::WriterGuard,
}

impl fmt::Debug for Logging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logging").finish_non_exhaustive()
    }
}

/// Installs the global subscriber for `component` (the value of the `component` key of JSON
/// lines). Call once, first thing in `main`.
pub fn init(component: &'static str, format: LogFormat) -> Logging {
    // Without a thread there is no logging at all; a daemon that cannot start one at start-up
    // cannot run anyway.
    let (writer, guard) =
        writer::batch_writer(std::io::stderr()).expect("starting the log writer thread");
    let (filter, refused) = filter_from_env(LevelFilter::INFO);
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(json::JsonLines::new(component))
                    .with_writer(writer),
            )
            .init(),
    }
    if let Some(refused) = refused {
        tracing::warn!("{refused}");
    }
    let reload: LogReload = Arc::new(move |level: &str| {
        if !level.is_empty() {
            let new = parse_filter(level).map_err(|e| format!("bad filter {level:?}: {e}"))?;
            handle.reload(new).map_err(|e| e.to_string())?;
            tracing::info!(filter = level, "log filter changed");
        }
        handle
            .with_current(|f| f.to_string())
            .map_err(|e| e.to_string())
    });
    Logging { reload, guard }
}

/// A log filter that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Nothing but commas and blanks.
    #[error("no directive")]
    Empty,
    /// A directive that is not `level` or `target=level`.
    #[error(transparent)]
    Directive(#[from] tracing_subscriber::filter::ParseError),
}

/// Parses a filter: comma-separated `level` and `target=level` directives (blanks around them
/// are ignored).
pub fn parse_filter(directives: &str) -> Result<Targets, FilterError> {
    let directives: Vec<&str> = directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err(FilterError::Empty);
    }
    Ok(directives.join(",").parse()?)
}

/// The filter of `RUST_LOG`, or `default` when it is unset or refused; a refused value comes
/// back as the warning to log once logging is up (it is not silently dropped).
pub fn filter_from_env(default: LevelFilter) -> (Targets, Option<String>) {
    let fallback = || Targets::new().with_default(default);
    match std::env::var("RUST_LOG") {
        Err(_) => (fallback(), None),
        Ok(value) => match parse_filter(&value) {
            Ok(filter) => (filter, None),
            Err(e) => (
                fallback(),
                Some(format!(
                    "RUST_LOG={value:?} refused ({e}); logging at {default} (directives: level or target=level, comma-separated)"
                )),
            ),
        },
    }
}

/// The admin endpoint `/logging`: `GET` shows the filter, `POST /logging?level=<filter>` sets
/// it (directives such as `debug` or `info,ztunnel::proxy=trace`, see [`parse_filter`]).
pub fn reply(reload: &LogReload, call: &Call<'_>) -> Reply {
    match call.param("level") {
        Some(level) if call.method == Method::POST => match reload(level) {
            Ok(now) => Reply::text(format!("log filter now: {now}\n")),
            Err(e) => Reply::status(StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
        _ => match reload("") {
            Ok(now) => Reply::text(format!(
                "log filter: {now}\nset with POST /logging?level=<filter>\n"
            )),
            Err(e) => Reply::status(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_names_parse_and_print_back() {
        for name in LogFormat::NAMES {
            assert_eq!(
                name.parse::<LogFormat>().expect("test value").to_string(),
                name
            );
        }
        assert!("yaml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn post_sets_the_filter_and_get_only_reads_it() {
        let current = Arc::new(std::sync::Mutex::new("info".to_string()));
        let c = current.clone();
        let reload: LogReload = Arc::new(move |level: &str| {
            let mut now = c.lock().expect("lock");
            if level == "bogus[" {
                return Err("bad filter".into());
            }
            if !level.is_empty() {
                *now = level.to_string();
            }
            Ok(now.clone())
        });
        let call = |method: &'static Method, query: &'static str| Call {
            method,
            path: "/logging",
            query: Some(query),
        };
        let get = reply(&reload, &call(&Method::GET, "level=debug"));
        assert!(get.body.contains("log filter: info"), "{}", get.body);
        let post = reply(&reload, &call(&Method::POST, "level=debug,mesh=trace"));
        assert_eq!(post.status, StatusCode::OK);
        assert_eq!(*current.lock().expect("lock"), "debug,mesh=trace");
        let bad = reply(&reload, &call(&Method::POST, "level=bogus["));
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(*current.lock().expect("lock"), "debug,mesh=trace");
    }

    #[test]
    fn filters_take_levels_and_target_levels_and_refuse_the_rest() {
        let f = parse_filter(" info , ztunnel::proxy=debug ").expect("valid");
        assert_eq!(f.default_level(), Some(LevelFilter::INFO));
        assert!(f.would_enable("ztunnel::proxy::outbound", &tracing::Level::DEBUG));
        assert!(!f.would_enable("mesh::hbone", &tracing::Level::DEBUG));
        assert_eq!(parse_filter("debug").expect("valid").to_string(), "debug");
        for bad in ["", " , ", "a=b=c", "mesh=shouty"] {
            assert!(parse_filter(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(parse_filter(" , "), Err(FilterError::Empty)));
    }
}
