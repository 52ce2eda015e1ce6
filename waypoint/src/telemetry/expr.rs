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
            a.bind(&mut cx);
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
    fn bind(&self, cx: &mut Context<'_, '_>) {
        let mut headers: HashMap<String, Value> = HashMap::with_capacity(self.headers.len());
        for (k, v) in self.headers {
            if let Ok(v) = v.to_str() {
                // Repeated headers join with a comma, as Envoy presents them.
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
        let header = |name: &str| {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let url_path = self.path.split('?').next().unwrap_or(self.path);
        let mut request: HashMap<&str, Value> = HashMap::new();
        request.insert("method", self.method.to_string().into());
        request.insert("path", self.path.to_string().into());
        request.insert("url_path", url_path.to_string().into());
        request.insert("host", self.host.to_string().into());
        request.insert("scheme", "http".to_string().into());
        request.insert("protocol", self.protocol.to_string().into());
        request.insert("headers", headers.into());
        request.insert("useragent", header("user-agent").into());
        request.insert("id", header("x-request-id").into());
        request.insert("size", Value::Int(self.request_size as i64));
        request.insert("duration", Value::Float(self.duration.as_secs_f64()));
        let mut response: HashMap<&str, Value> = HashMap::new();
        response.insert("code", Value::Int(i64::from(self.code)));
        response.insert("flags", self.flags.to_string().into());
        response.insert("size", Value::Int(self.response_size as i64));
        let mut source: HashMap<&str, Value> = HashMap::new();
        if let Some(s) = self.source {
            source.insert("address", s.ip().to_string().into());
            source.insert("port", Value::Int(i64::from(s.port())));
        }
        source.insert(
            "principal",
            self.source_principal.unwrap_or("").to_string().into(),
        );
        let mut destination: HashMap<&str, Value> = HashMap::new();
        destination.insert("port", Value::Int(i64::from(self.port)));
        let mut upstream: HashMap<&str, Value> = HashMap::new();
        if let Some(u) = self.upstream {
            upstream.insert("address", u.ip().to_string().into());
            upstream.insert("port", Value::Int(i64::from(u.port())));
        }
        let mut connection: HashMap<&str, Value> = HashMap::new();
        connection.insert("mtls", Value::Bool(true));
        cx.add_variable_from_value("request", request);
        cx.add_variable_from_value("response", response);
        cx.add_variable_from_value("source", source);
        cx.add_variable_from_value("destination", destination);
        cx.add_variable_from_value("upstream", upstream);
        cx.add_variable_from_value("connection", connection);
    }
}
