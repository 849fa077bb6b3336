//! The JSON line schema shared by every daemon.
//!
//! One object per line, keys in this order:
//!
//! | key | value |
//! | --- | --- |
//! | `timestamp` | RFC 3339, UTC, microseconds (`2026-12-04T07:40:01.123456Z`) |
//! | `level` | `error`, `warn`, `info`, `debug` or `trace` |
//! | `component` | `ztunnel`, `waypoint`, `istiod-lite` or `cni-agent` |
//! | `target` | the module (or a named target such as `access` for access logs) |
//! | `message` | the event's message |
//! | `spans` | the enclosing spans' names, outermost first, joined by `:` (absent outside spans) |
//! | *field* | each field of the enclosing spans, then of the event: numbers and booleans as JSON, the rest as strings |
//!
//! A field whose name is one of the keys above is written as `field.<name>`, so the fixed keys
//! always mean the same thing.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The keys every line has; fields of these names are renamed.
const FIXED: [&str; 6] = [
    "timestamp",
    "level",
    "component",
    "target",
    "message",
    "spans",
];

/// Formats events as JSON lines for one component.
#[derive(Debug, Clone, Copy)]
pub struct JsonLines {
    component: &'static str,
}

impl JsonLines {
    /// Lines of `component`.
    pub fn new(component: &'static str) -> Self {
        JsonLines { component }
    }
}

/// Collects an event's fields, the message apart.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, serde_json::Value)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            match value {
                serde_json::Value::String(s) => self.message = s,
                other => self.message = other.to_string(),
            }
        } else {
            self.rest.push((field.name().to_string(), value));
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, serde_json::json!(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, format!("{value:?}").into());
    }
}

/// Appends `,"key":value` to `out`, renaming a key that clashes with a fixed one.
fn push_key(out: &mut String, key: &str, value: &serde_json::Value) {
    let key = if FIXED.contains(&key) {
        format!("field.{key}")
    } else {
        key.to_string()
    };
    out.push(',');
    out.push_str(&serde_json::Value::String(key).to_string());
    out.push(':');
    out.push_str(&value.to_string());
}

fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);

        let mut line = String::with_capacity(256);
        let _ = write!(
            line,
            "{{\"timestamp\":{},\"level\":{},\"component\":{},\"target\":{},\"message\":{}",
            quoted(&timestamp),
            quoted(&meta.level().to_string().to_ascii_lowercase()),
            quoted(self.component),
            quoted(meta.target()),
            quoted(&fields.message),
        );
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            let mut span_fields = Vec::new();
            for span in scope.from_root() {
                names.push(span.name());
                let ext = span.extensions();
                // The span's fields, already rendered as a JSON object by `JsonFields`.
                if let Some(rendered) = ext.get::<FormattedFields<N>>() {
                    if let Ok(serde_json::Value::Object(map)) =
                        serde_json::from_str::<serde_json::Value>(rendered.as_str())
                    {
                        span_fields.extend(map);
                    }
                }
            }
            line.push_str(",\"spans\":");
            line.push_str(&quoted(&names.join(":")));
            for (key, value) in &span_fields {
                push_key(&mut line, key, value);
            }
        }
        for (key, value) in &fields.rest {
            push_key(&mut line, key, value);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines_of(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::new("ztunnel"))
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("test value");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn a_line_has_the_fixed_keys_first_then_span_and_event_fields_typed() {
        let lines = lines_of(|| {
            let span = tracing::info_span!("pod", pod = "default/a", uid = 7u64);
            let _g = span.enter();
            tracing::warn!(bytes = 42u64, mtls = true, peer = %"10.0.0.1:80", "connection \"done\"");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "warn");
        assert_eq!(line["component"], "ztunnel");
        assert_eq!(line["message"], "connection \"done\"");
        assert_eq!(line["spans"], "pod");
        assert_eq!(line["pod"], "default/a");
        assert_eq!(line["uid"], 7);
        assert_eq!(line["bytes"], 42);
        assert_eq!(line["mtls"], true);
        assert_eq!(line["peer"], "10.0.0.1:80");
        let ts = line["timestamp"].as_str().expect("test value");
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
        let keys: Vec<&str> = line
            .as_object()
            .expect("test value")
            .keys()
            .map(String::as_str)
            .collect();
        for key in ["timestamp", "level", "component", "target", "message"] {
            assert!(keys.contains(&key), "{key} missing: {keys:?}");
        }
    }

    #[test]
    fn a_field_named_like_a_fixed_key_is_renamed_not_lost() {
        let lines = lines_of(|| tracing::info!(target: "access", level = "x", "hello"));
        assert_eq!(lines[0]["target"], "access");
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["field.level"], "x");
        assert!(lines[0].get("spans").is_none());
    }

    #[test]
    fn the_raw_line_starts_with_timestamp_and_is_one_line() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines::new("cni-agent"))
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || tracing::error!(error = "a\nb", "failed"));
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("test value");
        assert!(text.starts_with("{\"timestamp\":"), "{text}");
        assert_eq!(text.matches('\n').count(), 1, "{text}");
    }
}
