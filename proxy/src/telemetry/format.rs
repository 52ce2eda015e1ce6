//! Log lines in ztunnel's two layouts, so tools that parse ztunnel's logs parse ringmesh's.
//!
//! Owns: [`LogFormat`] and its `tracing_subscriber` event formatter.
//!
//! - Text (default): `time⇥level⇥target⇥message⇥k=v k=v`, TAB-separated; time RFC 3339 UTC
//!   with microseconds; level in lowercase; strings quoted with escapes, numbers and
//!   addresses bare (`src.addr=10.0.0.1:40000 direction="outbound" bytes_sent=67`).
//! - JSON (`LOG_FORMAT=json`): one object per line, keys `level`, `time`, `scope` (the
//!   target), `message`, then each field (dotted names stay literal; numbers stay numbers).
//!
//! Invariant: one event is one line; a field value never contains a raw newline or TAB in
//! the text layout (strings are escaped as Rust's `Debug` does) and is valid JSON in the
//! other.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Which layout log lines take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    /// ztunnel's `LOG_FORMAT`: `json` selects JSON; `plain` (and ringmesh's `text`) the
    /// text layout.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(LogFormat::Json),
            "plain" | "text" => Ok(LogFormat::Text),
            other => Err(format!("{other:?}: expected plain (or text) or json")),
        }
    }
}

/// The event formatter for a [`LogFormat`].
#[derive(Debug, Clone, Copy)]
pub struct Formatter(pub LogFormat);

enum Value {
    /// Quoted in text, a JSON string.
    Str(String),
    /// Bare in text, a JSON string (addresses and other `Display` values).
    Raw(String),
    /// Bare in both (numbers, booleans).
    Num(String),
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .push((field.name(), Value::Str(value.to_string())));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name(), Value::Raw(text)));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields
            .push((field.name(), Value::Num(value.to_string())));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields
            .push((field.name(), Value::Num(value.to_string())));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = if value.is_finite() {
            value.to_string()
        } else {
            format!("\"{value}\"")
        };
        self.fields.push((field.name(), Value::Num(v)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields
            .push((field.name(), Value::Num(value.to_string())));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields
            .push((field.name(), Value::Str(value.to_string())));
    }
}

impl<S, N> FormatEvent<S, N> for Formatter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let time = rfc3339_micros(SystemTime::now());
        let level = meta.level().as_str().to_ascii_lowercase();
        match self.0 {
            LogFormat::Text => {
                let target = meta.target();
                let target = target.strip_prefix("proxy::").unwrap_or(target);
                write!(
                    w,
                    "{time}\t{level}\t{target}\t{}",
                    one_line(&fields.message)
                )?;
                if !fields.fields.is_empty() {
                    w.write_char('\t')?;
                    for (i, (name, value)) in fields.fields.iter().enumerate() {
                        if i > 0 {
                            w.write_char(' ')?;
                        }
                        match value {
                            Value::Str(s) => write!(w, "{name}={s:?}")?,
                            Value::Raw(s) | Value::Num(s) => write!(w, "{name}={}", one_line(s))?,
                        }
                    }
                }
                writeln!(w)
            }
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("level".into(), level.into());
                obj.insert("time".into(), time.into());
                obj.insert("scope".into(), meta.target().into());
                obj.insert("message".into(), fields.message.into());
                for (name, value) in fields.fields {
                    let v = match value {
                        Value::Str(s) | Value::Raw(s) => serde_json::Value::String(s),
                        Value::Num(s) => {
                            serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))
                        }
                    };
                    obj.insert(name.into(), v);
                }
                writeln!(w, "{}", serde_json::Value::Object(obj))
            }
        }
    }
}

/// One line of the text layout, read back (the demo's report, tests, log tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextLine {
    pub time: String,
    pub level: String,
    pub target: String,
    pub message: String,
    /// In order; string values unquoted and unescaped.
    pub fields: Vec<(String, String)>,
}

impl TextLine {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a line of the text layout (`time⇥level⇥target⇥message[⇥k=v …]`); `None` for
/// anything else.
pub fn parse_text_line(line: &str) -> Option<TextLine> {
    let mut parts = line.splitn(5, '\t');
    let (time, level, target, message) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let mut fields = Vec::new();
    let mut rest = parts.next().unwrap_or("");
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            // A Rust-escaped string: find the closing quote that is not escaped.
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => out.push('\n'),
                        Some((_, 't')) => out.push('\t'),
                        Some((_, 'r')) => out.push('\r'),
                        Some((_, c)) => out.push(c),
                        None => break,
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let end = end?;
            (out, &q[end + 1..])
        } else {
            let e = after.find(' ').unwrap_or(after.len());
            (after[..e].to_string(), &after[e..])
        };
        fields.push((key.to_string(), value));
        rest = next.trim_start_matches(' ');
    }
    Some(TextLine {
        time: time.to_string(),
        level: level.to_string(),
        target: target.to_string(),
        message: message.to_string(),
        fields,
    })
}

/// Replaces the characters that would break a text line.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\n', '\t', '\r']) {
        s.replace('\n', "\\n")
            .replace('\t', "\\t")
            .replace('\r', "\\r")
            .into()
    } else {
        s.into()
    }
}

/// `2024-04-11T15:38:42.182974Z`.
pub fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, secs) = civil(d.as_secs());
    format!(
        "{date}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        d.subsec_micros()
    )
}

/// `2024-04-11T15:38:42Z` (seconds precision, as istioctl's certificate dates).
pub fn rfc3339_secs(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (date, secs) = civil(d.as_secs());
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The calendar date (`YYYY-MM-DD`) of a Unix time, and the seconds into that day.
/// Days-to-civil from Howard Hinnant's `chrono`-compatible date algorithms.
fn civil(unix_secs: u64) -> (String, u64) {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (format!("{y:04}-{m:02}-{d:02}"), secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339_secs(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_712_849_922_182_974);
        assert_eq!(rfc3339_micros(t), "2024-04-11T15:38:42.182974Z");
        // A leap day and the end of a year.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_secs(t), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339_secs(t), "2024-12-31T23:59:59Z");
    }

    /// Formats events through a real subscriber and reads them back.
    fn capture(format: LogFormat, emit: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(Formatter(format))
                .with_writer(move || out.clone()),
        );
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    fn emit() {
        let addr: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let none: Option<&str> = None;
        tracing::event!(
            target: "access",
            tracing::Level::INFO,
            src.addr = %addr,
            src.workload = Some("sleep"),
            dst.workload = none,
            direction = "outbound",
            bytes_sent = 67u64,
            error = "a \"quoted\"\ttab",
            "connection complete"
        );
    }

    #[test]
    fn text_lines_are_tab_separated_and_read_back() {
        let text = capture(LogFormat::Text, emit);
        assert_eq!(text.lines().count(), 1, "{text}");
        let line = parse_text_line(text.trim_end()).unwrap();
        assert_eq!(line.level, "info");
        assert_eq!(line.target, "access");
        assert_eq!(line.message, "connection complete");
        let names: Vec<&str> = line.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "src.addr",
                "src.workload",
                "direction",
                "bytes_sent",
                "error"
            ]
        );
        assert_eq!(line.field("src.addr"), Some("10.0.0.1:40000"));
        assert_eq!(line.field("error"), Some("a \"quoted\"\ttab"));
        assert!(
            text.contains("\tsrc.addr=10.0.0.1:40000 src.workload=\"sleep\""),
            "{text}"
        );
        assert!(text.contains("bytes_sent=67 "), "{text}");
    }

    #[test]
    fn json_lines_have_ztunnels_keys_and_types() {
        let text = capture(LogFormat::Json, emit);
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["scope"], "access");
        assert_eq!(v["message"], "connection complete");
        assert_eq!(v["src.addr"], "10.0.0.1:40000");
        assert_eq!(v["bytes_sent"], 67);
        assert!(
            v.get("dst.workload").is_none(),
            "unknown values are left out"
        );
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn formats_parse_as_named() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("plain".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("xml"));
    }
}
