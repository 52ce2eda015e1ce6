//! Envoy's access log formats on the waypoint: `logFormat.text` (a line of literal text
//! and command operators such as `%RESPONSE_CODE%`) and `logFormat.labels` (a JSON object
//! whose values are such strings), as Istio hands them to Envoy from an
//! `envoyFileAccessLog` provider or the MeshConfig's `accessLogFormat` and
//! `accessLogEncoding`.
//!
//! Owns: parsing a format ([`Format`], [`LogFormat`]), the operators the waypoint fills,
//! and writing one request's line ([`LogFormat::line`]) from an [`Entry`].
//!
//! Invariants:
//! - a format is checked when the config is read: an operator the waypoint cannot fill is
//!   refused by name then, never written as something else;
//! - a value a request does not have is `-` in text and `null` in JSON, as Envoy writes;
//!   a JSON value that is one operator keeps its type (numbers stay numbers);
//! - `%OP:N%` cuts the value to N bytes at a character boundary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::HeaderName;
use http::header::HeaderValue;

mod start_time;
pub use start_time::TimeFormat;

/// Istio's default text format (`EnvoyTextLogFormat`), Envoy's default line with the
/// upstream and downstream addresses.
pub const ISTIO_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON labels (`accessLogEncoding: JSON` without `accessLogFormat`).
pub const ISTIO_JSON: [(&str, &str); 24] = [
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// A header an operator reads: a pseudo-header the waypoint knows, or a header by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    Method,
    Path,
    Authority,
    Scheme,
    Named(HeaderName),
}

/// A command operator the waypoint fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `START_TIME`, or `START_TIME(FORMAT)`.
    StartTime(Option<TimeFormat>),
    /// `REQ(A?B)`: the first of the request headers that is present.
    Req(Vec<Header>),
    /// `RESP(A?B)`: the same of the response's headers.
    Resp(Vec<Header>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    /// `UPSTREAM_CLUSTER_RAW`, or `UPSTREAM_CLUSTER`: the cluster's observability name,
    /// which istiod sets to the name and `;`.
    UpstreamCluster {
        observability: bool,
    },
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamPeerUriSan,
    RequestedServerName,
    RouteName,
    GrpcStatus,
    GrpcStatusNumber,
    /// `ENVIRONMENT(X)`: the variable's value when the format was read.
    Environment(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Op(Op, Option<usize>),
}

/// One format string, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format(Vec<Piece>);

/// A provider's line: text, or a JSON object; or an OpenTelemetry log record.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    Text(Format),
    Json(BTreeMap<String, JsonValue>),
    /// An `envoyOtelAls` record: its body and its attributes.
    Otel {
        body: Format,
        attributes: BTreeMap<String, JsonValue>,
    },
}

/// A value of a JSON format: a format string, a nested object, or a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue {
    Format(Format),
    Object(BTreeMap<String, JsonValue>),
    Literal(serde_json::Value),
}

/// What one request's line is written from.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub start: SystemTime,
    pub method: &'a str,
    /// The path and query as the client sent them.
    pub path: &'a str,
    pub authority: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// The request headers the format reads ([`LogFormat::request_headers`]).
    pub request_headers: &'a [(HeaderName, HeaderValue)],
    /// The response headers the format reads.
    pub response_headers: &'a [(HeaderName, HeaderValue)],
    pub code: u16,
    pub flags: &'a str,
    pub details: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    pub upstream_host: Option<SocketAddr>,
    /// This side's address on the socket that carried the request to the endpoint (an
    /// HBONE connection's, to the endpoint's node). Envoy's waypoint writes its internal
    /// listener's `envoy://internal_client_address/` here; the socket's address is what
    /// Istio means it to show (istio/istio#50321).
    pub upstream_local: Option<SocketAddr>,
    /// The cluster the route chose, as istiod names it in a waypoint
    /// (`inbound-vip|80|http|echo.demo.svc.cluster.local`); `None` before a route chose.
    pub upstream_cluster: Option<&'a str>,
    pub downstream_local: Option<SocketAddr>,
    pub downstream_remote: Option<SocketAddr>,
    /// The tunnel peer's identity, as a URI SAN (`spiffe://…`).
    pub peer_uri_san: Option<&'a str>,
    pub route: &'a str,
    pub grpc_status: Option<u8>,
    /// Why the upstream could not be reached, when that was the answer (`UF`).
    pub transport_failure: Option<&'a str>,
}

/// A filled value: text, or a number (kept as one in JSON).
enum Value<'a> {
    Str(std::borrow::Cow<'a, str>),
    Num(u64),
}

impl Format {
    /// Parses `text`; an operator the waypoint cannot fill, or one that is not closed, is
    /// an error naming it.
    pub fn parse(text: &str) -> Result<Format, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            let (op, used) = parse_op(rest)?;
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
            }
            pieces.push(op);
            rest = &rest[used..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(Format(pieces))
    }

    /// The headers the format reads: the response's (`RESP`) or the request's (`REQ`).
    pub fn headers(&self, response: bool) -> Vec<HeaderName> {
        let mut names: Vec<HeaderName> = Vec::new();
        for op in self.ops() {
            let hs = match (op, response) {
                (Op::Req(hs), false) | (Op::Resp(hs), true) => hs,
                _ => continue,
            };
            for h in hs {
                if let Header::Named(n) = h
                    && !names.contains(n)
                {
                    names.push(n.clone());
                }
            }
        }
        names
    }

    /// As text, a missing value written `-` (a custom span tag's value).
    pub fn text(&self, e: &Entry<'_>) -> String {
        let mut s = String::new();
        self.write(e, &mut s);
        s
    }

    fn ops(&self) -> impl Iterator<Item = &Op> {
        self.0.iter().filter_map(|p| match p {
            Piece::Op(op, _) => Some(op),
            Piece::Text(_) => None,
        })
    }

    /// As text: a missing value is `-`.
    fn write(&self, e: &Entry<'_>, out: &mut String) {
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Op(op, cap) => match value(op, e) {
                    None => out.push('-'),
                    Some(Value::Num(n)) => {
                        let _ = write!(out, "{n}");
                    }
                    Some(Value::Str(s)) => out.push_str(cut(&s, *cap)),
                },
            }
        }
    }

    /// As a JSON value: one operator keeps its type (`null` when missing); anything else
    /// is a string.
    fn json(&self, e: &Entry<'_>) -> serde_json::Value {
        if let [Piece::Op(op, cap)] = &self.0[..] {
            return match value(op, e) {
                None => serde_json::Value::Null,
                Some(Value::Num(n)) => n.into(),
                Some(Value::Str(s)) => cut(&s, *cap).into(),
            };
        }
        let mut s = String::new();
        self.write(e, &mut s);
        s.into()
    }
}

impl LogFormat {
    /// `logFormat.text`, with the newline Istio adds when it has none.
    pub fn text(text: &str) -> Result<LogFormat, String> {
        let mut f = Format::parse(text)?;
        if !text.ends_with('\n') {
            f.0.push(Piece::Text("\n".into()));
        }
        Ok(LogFormat::Text(f))
    }

    /// `logFormat.labels`: each string value a format, objects nested.
    pub fn json(labels: &serde_json::Map<String, serde_json::Value>) -> Result<LogFormat, String> {
        Ok(LogFormat::Json(json_object(labels, "")?))
    }

    /// An `envoyOtelAls` record: `text` the body (Istio's text format when `None`, without
    /// its newline), `labels` the attributes.
    pub fn otel(
        text: Option<&str>,
        labels: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<LogFormat, String> {
        let text = text.unwrap_or(ISTIO_TEXT);
        let body = Format::parse(text.strip_suffix('\n').unwrap_or(text))
            .map_err(|e| format!("text: {e}"))?;
        let attributes = match labels {
            Some(l) => json_object(l, "").map_err(|e| format!("labels.{e}"))?,
            None => BTreeMap::new(),
        };
        Ok(LogFormat::Otel { body, attributes })
    }

    /// An `envoyOtelAls` record's body and attributes (an attribute the request has no
    /// value for is left out); `None` for the other formats.
    pub fn record(
        &self,
        e: &Entry<'_>,
    ) -> Option<(String, Vec<(String, opentelemetry::logs::AnyValue)>)> {
        let LogFormat::Otel { body, attributes } = self else {
            return None;
        };
        let mut text = String::with_capacity(256);
        body.write(e, &mut text);
        let attrs = attributes
            .iter()
            .filter_map(|(k, v)| {
                let v = match v {
                    JsonValue::Format(f) => f.json(e),
                    JsonValue::Object(o) => json_fill(o, e),
                    JsonValue::Literal(l) => l.clone(),
                };
                Some((k.clone(), any_value(v)?))
            })
            .collect();
        Some((text, attrs))
    }

    /// Istio's default JSON line.
    pub fn istio_json() -> LogFormat {
        let map = ISTIO_JSON
            .iter()
            .map(|(k, v)| {
                let f = Format::parse(v).expect("Istio's default format parses");
                (k.to_string(), JsonValue::Format(f))
            })
            .collect();
        LogFormat::Json(map)
    }

    /// The format strings it holds.
    pub fn formats(&self) -> Vec<&Format> {
        fn walk<'a>(m: &'a BTreeMap<String, JsonValue>, out: &mut Vec<&'a Format>) {
            for v in m.values() {
                match v {
                    JsonValue::Format(f) => out.push(f),
                    JsonValue::Object(o) => walk(o, out),
                    JsonValue::Literal(_) => {}
                }
            }
        }
        match self {
            LogFormat::Text(f) => vec![f],
            LogFormat::Json(m) => {
                let mut out = Vec::new();
                walk(m, &mut out);
                out
            }
            LogFormat::Otel { body, attributes } => {
                let mut out = vec![body];
                walk(attributes, &mut out);
                out
            }
        }
    }

    fn headers(&self, response: bool) -> Vec<HeaderName> {
        let mut names: Vec<HeaderName> = Vec::new();
        for f in self.formats() {
            for n in f.headers(response) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        names
    }

    /// The request headers the format reads (captured when a request arrives).
    pub fn request_headers(&self) -> Vec<HeaderName> {
        self.headers(false)
    }

    /// The response headers the format reads.
    pub fn response_headers(&self) -> Vec<HeaderName> {
        self.headers(true)
    }

    /// One request's line, with its newline (a record's body, for [`LogFormat::Otel`]).
    pub fn line(&self, e: &Entry<'_>) -> String {
        match self {
            LogFormat::Text(f) | LogFormat::Otel { body: f, .. } => {
                let mut s = String::with_capacity(256);
                f.write(e, &mut s);
                s
            }
            LogFormat::Json(m) => {
                let mut s = json_fill(m, e).to_string();
                s.push('\n');
                s
            }
        }
    }
}

fn json_object(
    labels: &serde_json::Map<String, serde_json::Value>,
    at: &str,
) -> Result<BTreeMap<String, JsonValue>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in labels {
        let here = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        let v = match v {
            serde_json::Value::String(s) => {
                JsonValue::Format(Format::parse(s).map_err(|e| format!("{here}: {e}"))?)
            }
            serde_json::Value::Object(o) => JsonValue::Object(json_object(o, &here)?),
            other => JsonValue::Literal(other.clone()),
        };
        out.insert(k.clone(), v);
    }
    Ok(out)
}

/// A JSON value as an OpenTelemetry attribute value; `None` for null.
fn any_value(v: serde_json::Value) -> Option<opentelemetry::logs::AnyValue> {
    use opentelemetry::logs::AnyValue;
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => AnyValue::Boolean(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => AnyValue::Int(i),
            None => AnyValue::Double(n.as_f64().unwrap_or_default()),
        },
        serde_json::Value::String(s) => AnyValue::String(s.into()),
        serde_json::Value::Array(a) => {
            AnyValue::ListAny(Box::new(a.into_iter().filter_map(any_value).collect()))
        }
        serde_json::Value::Object(o) => AnyValue::Map(Box::new(
            o.into_iter()
                .filter_map(|(k, v)| Some((k.into(), any_value(v)?)))
                .collect(),
        )),
    })
}

fn json_fill(m: &BTreeMap<String, JsonValue>, e: &Entry<'_>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (k, v) in m {
        let v = match v {
            JsonValue::Format(f) => f.json(e),
            JsonValue::Object(o) => json_fill(o, e),
            JsonValue::Literal(l) => l.clone(),
        };
        out.insert(k.clone(), v);
    }
    serde_json::Value::Object(out)
}

/// `s` cut to `cap` bytes at a character boundary.
fn cut(s: &str, cap: Option<usize>) -> &str {
    match cap {
        Some(mut n) if n < s.len() => {
            while !s.is_char_boundary(n) {
                n -= 1;
            }
            &s[..n]
        }
        _ => s,
    }
}

/// One operator after its opening `%`: `NAME`, `NAME(args)`, each with an optional `:N`,
/// then `%`. Returns the piece and the bytes read, closing `%` included.
fn parse_op(s: &str) -> Result<(Piece, usize), String> {
    let name_len = s
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    let name = &s[..name_len];
    if name.is_empty() {
        return Err(format!(
            "a '%' at {:?} starts no command operator (a literal '%' is not allowed here)",
            s.chars().take(16).collect::<String>()
        ));
    }
    let mut i = name_len;
    let mut args = None;
    if s[i..].starts_with('(') {
        let close = s[i..]
            .find(')')
            .ok_or_else(|| format!("%{name}(: the argument is not closed with ')'"))?;
        args = Some(&s[i + 1..i + close]);
        i += close + 1;
    }
    let mut cap = None;
    if s[i..].starts_with(':') {
        let digits = s[i + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.len() - i - 1);
        let n = s[i + 1..i + 1 + digits]
            .parse::<usize>()
            .map_err(|_| format!("%{name}: ':' must be followed by a length"))?;
        cap = Some(n);
        i += 1 + digits;
    }
    if !s[i..].starts_with('%') {
        return Err(format!("%{name}: the operator is not closed with '%'"));
    }
    let op = op(name, args)?;
    Ok((Piece::Op(op, cap), i + 1))
}

fn op(name: &str, args: Option<&str>) -> Result<Op, String> {
    let no_args = |op: Op| match args {
        None => Ok(op),
        Some(a) => Err(format!(
            "%{name}({a})%: the waypoint writes %{name}% without arguments"
        )),
    };
    Ok(match name {
        "REQ" | "RESP" => {
            let a = args
                .ok_or_else(|| format!("%{name}%: a header name is needed, as %{name}(X-NAME)%"))?;
            let headers = a
                .split('?')
                .map(header)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("%{name}({a})%: {e}"))?;
            if name == "REQ" {
                Op::Req(headers)
            } else {
                Op::Resp(headers)
            }
        }
        "START_TIME" => match args {
            // An empty format is Envoy's default one.
            None | Some("") => Op::StartTime(None),
            Some(a) => Op::StartTime(Some(
                TimeFormat::parse(a).map_err(|e| format!("%START_TIME({a})%: {e}"))?,
            )),
        },
        "PROTOCOL" => no_args(Op::Protocol)?,
        "RESPONSE_CODE" => no_args(Op::ResponseCode)?,
        "RESPONSE_FLAGS" => no_args(Op::ResponseFlags)?,
        "RESPONSE_CODE_DETAILS" => no_args(Op::ResponseCodeDetails)?,
        "CONNECTION_TERMINATION_DETAILS" => no_args(Op::ConnectionTerminationDetails)?,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_args(Op::UpstreamTransportFailureReason)?,
        "BYTES_RECEIVED" => no_args(Op::BytesReceived)?,
        "BYTES_SENT" => no_args(Op::BytesSent)?,
        "DURATION" => no_args(Op::Duration)?,
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => no_args(Op::UpstreamHost)?,
        "UPSTREAM_CLUSTER" => no_args(Op::UpstreamCluster {
            observability: true,
        })?,
        "UPSTREAM_CLUSTER_RAW" => no_args(Op::UpstreamCluster {
            observability: false,
        })?,
        "UPSTREAM_LOCAL_ADDRESS" => no_args(Op::UpstreamLocalAddress)?,
        "DOWNSTREAM_LOCAL_ADDRESS" => no_args(Op::DownstreamLocalAddress)?,
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            no_args(Op::DownstreamRemoteAddress)?
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_args(Op::DownstreamRemoteAddressWithoutPort)?
        }
        "DOWNSTREAM_PEER_URI_SAN" => no_args(Op::DownstreamPeerUriSan)?,
        "REQUESTED_SERVER_NAME" => no_args(Op::RequestedServerName)?,
        "ROUTE_NAME" => no_args(Op::RouteName)?,
        "GRPC_STATUS" => no_args(Op::GrpcStatus)?,
        "GRPC_STATUS_NUMBER" => no_args(Op::GrpcStatusNumber)?,
        "ENVIRONMENT" => {
            let var = args.filter(|a| !a.is_empty()).ok_or_else(|| {
                "%ENVIRONMENT%: a variable is needed, as %ENVIRONMENT(POD_NAME)%".to_string()
            })?;
            Op::Environment(std::env::var(var).ok())
        }
        other => {
            return Err(format!(
                "%{other}% is not a command operator the waypoint writes"
            ));
        }
    })
}

fn header(name: &str) -> Result<Header, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        ":method" => Header::Method,
        ":path" => Header::Path,
        ":authority" | "host" => Header::Authority,
        ":scheme" => Header::Scheme,
        n => Header::Named(
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("{name:?} is not a header name"))?,
        ),
    })
}

/// gRPC's status names, by code.
const GRPC_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

fn value<'a>(op: &'a Op, e: &'a Entry<'a>) -> Option<Value<'a>> {
    use std::borrow::Cow;
    let s = |v: &'a str| Some(Value::Str(Cow::Borrowed(v)));
    let owned = |v: String| Some(Value::Str(Cow::Owned(v)));
    let header = |hs: &[Header], list: &'a [(HeaderName, HeaderValue)]| -> Option<Value<'a>> {
        hs.iter().find_map(|h| match h {
            Header::Method => s(e.method),
            Header::Path => s(e.path),
            Header::Authority => (!e.authority.is_empty()).then_some(()).and(s(e.authority)),
            Header::Scheme => s("http"),
            Header::Named(n) => list
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| Value::Str(String::from_utf8_lossy(v.as_bytes()))),
        })
    };
    match op {
        Op::StartTime(None) => owned(start_time(e.start)),
        Op::StartTime(Some(f)) => {
            let mut out = String::new();
            f.write(e.start, &mut out);
            owned(out)
        }
        Op::Req(hs) => header(hs, e.request_headers),
        Op::Resp(hs) => header(hs, e.response_headers),
        Op::Protocol => s(e.protocol),
        Op::ResponseCode => Some(Value::Num(u64::from(e.code))),
        Op::ResponseFlags => s(e.flags),
        Op::ResponseCodeDetails => s(e.details),
        // Envoy writes the reason with its spaces as underscores, as it writes details;
        // control characters too, so a line stays one line.
        Op::UpstreamTransportFailureReason => e.transport_failure.and_then(|r| {
            owned(
                r.chars()
                    .map(|c| if c == ' ' || c.is_control() { '_' } else { c })
                    .collect(),
            )
        }),
        // Termination details are set by Envoy's filters that close connections (none
        // here). The requested server name is the SNI of the connection the request came
        // on: the request came in plain HTTP inside the tunnel, and HBONE clients send no
        // SNI either, so there is none, as Envoy's waypoint writes it.
        Op::ConnectionTerminationDetails | Op::RequestedServerName => None,
        Op::UpstreamLocalAddress => e.upstream_local.and_then(|a| owned(a.to_string())),
        Op::BytesReceived => Some(Value::Num(e.bytes_received)),
        Op::BytesSent => Some(Value::Num(e.bytes_sent)),
        Op::Duration => Some(Value::Num(e.duration.as_millis() as u64)),
        Op::UpstreamHost => e
            .upstream_host
            .map(|a| Value::Str(Cow::Owned(a.to_string()))),
        Op::UpstreamCluster { observability } => e.upstream_cluster.and_then(|c| {
            if *observability {
                owned(format!("{c};"))
            } else {
                s(c)
            }
        }),
        Op::DownstreamLocalAddress => e.downstream_local.and_then(|a| owned(a.to_string())),
        Op::DownstreamRemoteAddress => e.downstream_remote.and_then(|a| owned(a.to_string())),
        Op::DownstreamRemoteAddressWithoutPort => {
            e.downstream_remote.and_then(|a| owned(a.ip().to_string()))
        }
        Op::DownstreamPeerUriSan => e.peer_uri_san.and_then(s),
        Op::RouteName => (e.route != "-").then_some(()).and(s(e.route)),
        Op::GrpcStatus => e
            .grpc_status
            .and_then(|c| GRPC_NAMES.get(usize::from(c)).copied())
            .and_then(s),
        Op::GrpcStatusNumber => e.grpc_status.map(|c| Value::Num(u64::from(c))),
        Op::Environment(v) => v.as_deref().and_then(s),
    }
}

/// Envoy's default `START_TIME`: `2024-01-02T03:04:05.678Z`.
fn start_time(t: SystemTime) -> String {
    let d = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
        d.millisecond()
    )
}

#[cfg(test)]
mod tests;
