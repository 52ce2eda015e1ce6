//! CEL expressions of the Telemetry API (access log `filter.expression`, metric tag
//! `value`s), over Envoy's request attributes: the names Istio's docs use, so an operator's
//! expression means here what it means on an Envoy waypoint.
//!
//! Attributes (a subset of Envoy's):
//! - `request.method`, `request.path` (with the query), `request.url_path`, `request.host`,
//!   `request.scheme`, `request.protocol`, `request.headers` (lower-case names),
//!   `request.useragent`, `request.id`, `request.size`, `request.duration` (seconds, a
//!   double);
//! - `response.code`, `response.flags` (Envoy's short flags, `UO`), `response.size`;
//! - `source.address`, `source.port`, `source.principal`, `destination.port`,
//!   `upstream.address`, `upstream.port`,
//!   `connection.mtls` (always true: the waypoint is reached over HBONE).
//!
//! An evaluation builds only the maps and fields the expression names (and only the
//! headers it indexes by a literal name, when it reads them no other way): building the
//! attributes costs more than evaluating most expressions (`cargo bench -p
//! ringmesh-waypoint --bench telemetry_expr`: about 0.6 µs for `response.code >= 400`, 10
//! µs with every attribute built). So an expression that reads a map whole
//! (`size(request)`) sees only the fields it names.
//!
//! Expressions come from the operator's config, never from a peer; still, their size is
//! bounded ([`MAX_LEN`], [`MAX_DEPTH`]) so a config cannot make the parser recurse deep.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cel::objects::Value;
use cel::{Context, Program};
use http::HeaderMap;

/// Longest expression accepted, in bytes.
pub const MAX_LEN: usize = 1024;
/// Deepest nesting of brackets accepted.
pub const MAX_DEPTH: usize = 32;

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
    /// The attribute roots it names ([`Roots`]): only those are built for an evaluation.
    roots: u8,
    /// Its identifiers: a root's field is built only when named (a map with fewer fields
    /// is cheaper to build than the expression is to evaluate).
    words: Arc<[Box<str>]>,
    /// The request headers it reads, when it reads them only as `headers['name']`: only
    /// those are copied. `None`: every header.
    header_names: Option<Arc<[String]>>,
}

/// The names in `headers['a']`, `headers["b"]`, when every `headers` in `source` is
/// indexed by a string literal; `None` otherwise (or when there are none to read).
fn literal_header_names(source: &str) -> Option<Arc<[String]>> {
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(i) = rest.find("headers") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "headers".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            || rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            continue; // part of a longer identifier
        }
        let r = rest.trim_start().strip_prefix('[')?.trim_start();
        let quote = r.chars().next().filter(|q| *q == '\'' || *q == '"')?;
        let body = &r[1..];
        let end = body.find(quote)?;
        let name = &body[..end];
        if name.contains('\\') {
            return None;
        }
        body[end + 1..].trim_start().strip_prefix(']')?;
        names.push(name.to_string());
        rest = &body[end + 1..];
    }
    Some(names.into())
}

/// Bits of [`Expr::roots`]: which attribute maps an expression reads. Building a map costs
/// more than evaluating most expressions, so an evaluation builds only these.
struct Roots;

impl Roots {
    const REQUEST: u8 = 1;
    const RESPONSE: u8 = 2;
    const SOURCE: u8 = 4;
    const DESTINATION: u8 = 8;
    const UPSTREAM: u8 = 16;
    const CONNECTION: u8 = 32;

    /// The roots `source` names, by its identifiers (a name inside a string literal only
    /// builds a map for nothing).
    fn of(source: &str) -> u8 {
        let mut roots = 0;
        for word in source.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            roots |= match word {
                "request" => Roots::REQUEST,
                "response" => Roots::RESPONSE,
                "source" => Roots::SOURCE,
                "destination" => Roots::DESTINATION,
                "upstream" => Roots::UPSTREAM,
                "connection" => Roots::CONNECTION,
                _ => 0,
            };
        }
        roots
    }
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Expr) -> bool {
        self.source == other.source
    }
}

impl Expr {
    /// Compiles `source`; the error says why, for the caller to prefix with where.
    pub fn compile(source: &str) -> Result<Expr, String> {
        if source.trim().is_empty() {
            return Err("an empty expression".into());
        }
        if source.len() > MAX_LEN {
            return Err(format!(
                "{} bytes: an expression is at most {MAX_LEN}",
                source.len()
            ));
        }
        let mut depth = 0usize;
        for c in source.chars() {
            match c {
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(format!("nested deeper than {MAX_DEPTH} brackets"));
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        // The parser is a generated one; its failure is an error value, and a panic in it
        // (which no input should cause) is turned into an error too.
        let parsed = std::panic::catch_unwind(|| Program::compile(source))
            .map_err(|_| "the CEL parser failed on it".to_string())?;
        let program = parsed.map_err(|e| format!("not CEL: {e}"))?;
        Ok(Expr {
            source: Arc::from(source),
            program: Arc::new(program),
            roots: Roots::of(source),
            words: source
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .map(Box::from)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            header_names: literal_header_names(source),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to a boolean: `None` when the expression fails or is not a boolean
    /// (Envoy then does not log).
    pub fn matches(&self, a: &Attributes<'_>) -> Option<bool> {
        match self.eval(a)? {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// Evaluates to a label value: strings as they are, numbers and booleans printed;
    /// `None` when it fails or is anything else.
    pub fn label(&self, a: &Attributes<'_>) -> Option<String> {
        match self.eval(a)? {
            Value::String(s) => Some(s.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::UInt(u) => Some(u.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    fn eval(&self, a: &Attributes<'_>) -> Option<Value> {
        ROOT.with(|root| {
            let mut cx = root.new_inner_scope();
            a.bind(&mut cx, self);
            self.program.execute(&cx).ok()
        })
    }
}

thread_local! {
    /// The standard library, built once per thread (building it per request would cost
    /// more than the evaluation).
    static ROOT: Context<'static, 'static> = Context::default();
}

/// What an expression sees of one request, taken when its response ends.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub method: &'a str,
    /// Path and query, as the client sent them.
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    pub code: u16,
    pub flags: &'a str,
    pub request_size: u64,
    pub response_size: u64,
    pub duration: Duration,
    pub source: Option<std::net::SocketAddr>,
    pub source_principal: Option<&'a str>,
    pub port: u16,
    pub upstream: Option<std::net::SocketAddr>,
}

impl Attributes<'_> {
    fn bind(&self, cx: &mut Context<'_, '_>, e: &Expr) {
        let roots = e.roots;
        let header_names = e.header_names.as_deref();
        // A field named nowhere in the expression is left out of its map.
        let want = |field: &str| e.words.iter().any(|w| &**w == field);
        if roots & Roots::REQUEST != 0 {
            let header = |name: &str| {
                self.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let url_path = self.path.split('?').next().unwrap_or(self.path);
            let mut request: HashMap<&str, Value> = HashMap::with_capacity(12);
            if want("method") {
                request.insert("method", self.method.to_string().into());
            }
            if want("path") {
                request.insert("path", self.path.to_string().into());
            }
            if want("url_path") {
                request.insert("url_path", url_path.to_string().into());
            }
            if want("host") {
                request.insert("host", self.host.to_string().into());
            }
            if want("scheme") {
                request.insert("scheme", "http".to_string().into());
            }
            if want("protocol") {
                request.insert("protocol", self.protocol.to_string().into());
            }
            if want("headers") {
                request.insert("headers", self.header_map(header_names).into());
            }
            if want("useragent") {
                request.insert("useragent", header("user-agent").into());
            }
            if want("id") {
                request.insert("id", header("x-request-id").into());
            }
            if want("size") {
                request.insert("size", Value::Int(self.request_size as i64));
            }
            if want("duration") {
                request.insert("duration", Value::Float(self.duration.as_secs_f64()));
            }
            cx.add_variable_from_value("request", request);
        }
        if roots & Roots::RESPONSE != 0 {
            let mut response: HashMap<&str, Value> = HashMap::with_capacity(3);
            if want("code") {
                response.insert("code", Value::Int(i64::from(self.code)));
            }
            if want("flags") {
                response.insert("flags", self.flags.to_string().into());
            }
            if want("size") {
                response.insert("size", Value::Int(self.response_size as i64));
            }
            cx.add_variable_from_value("response", response);
        }
        if roots & Roots::SOURCE != 0 {
            let mut source: HashMap<&str, Value> = HashMap::with_capacity(3);
            if let Some(s) = self.source {
                if want("address") {
                    source.insert("address", s.ip().to_string().into());
                }
                if want("port") {
                    source.insert("port", Value::Int(i64::from(s.port())));
                }
            }
            source.insert(
                "principal",
                self.source_principal.unwrap_or("").to_string().into(),
            );
            cx.add_variable_from_value("source", source);
        }
        if roots & Roots::DESTINATION != 0 {
            let mut destination: HashMap<&str, Value> = HashMap::with_capacity(1);
            if want("port") {
                destination.insert("port", Value::Int(i64::from(self.port)));
            }
            cx.add_variable_from_value("destination", destination);
        }
        if roots & Roots::UPSTREAM != 0 {
            let mut upstream: HashMap<&str, Value> = HashMap::with_capacity(2);
            if let Some(u) = self.upstream {
                if want("address") {
                    upstream.insert("address", u.ip().to_string().into());
                }
                if want("port") {
                    upstream.insert("port", Value::Int(i64::from(u.port())));
                }
            }
            cx.add_variable_from_value("upstream", upstream);
        }
        if roots & Roots::CONNECTION != 0 {
            let mut connection: HashMap<&str, Value> = HashMap::with_capacity(1);
            if want("mtls") {
                connection.insert("mtls", Value::Bool(true));
            }
            cx.add_variable_from_value("connection", connection);
        }
    }

    /// `request.headers` (all, or only `names`): lower-case names; repeated headers joined
    /// with a comma, as Envoy presents them.
    fn header_map(&self, names: Option<&[String]>) -> HashMap<String, Value> {
        let mut headers: HashMap<String, Value> = HashMap::with_capacity(self.headers.len());
        for (k, v) in self.headers {
            if names.is_some_and(|n| !n.iter().any(|n| n == k.as_str())) {
                continue;
            }
            if let Ok(v) = v.to_str() {
                headers
                    .entry(k.as_str().to_string())
                    .and_modify(|e| {
                        if let Value::String(s) = e {
                            *e = Value::String(Arc::new(format!("{s},{v}")));
                        }
                    })
                    .or_insert_with(|| Value::String(Arc::new(v.to_string())));
            }
        }
        headers
    }
}
