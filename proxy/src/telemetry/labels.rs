//! Istio's standard L4 label set, as ztunnel writes it, built from what a connection record
//! knows: the reporter, the source and destination workloads, the peer's principal, the
//! destination service and whether the hop was mutual TLS.
//!
//! Owns: the 27 labels' order and values ([`LabelSet`]), rendered once per series into two
//! pieces around `response_flags` (the one label that changes when a connection ends).
//!
//! Invariants (ztunnel's `CommonTrafficLabels`, see docs/design-notes.md "Istio telemetry"):
//! - order: `reporter`, eight `source_*`, `destination_service`, `_namespace`, `_name`,
//!   eight `destination_*`, `request_protocol`, `response_flags`,
//!   `connection_security_policy`, then the four locality labels;
//! - an unknown or empty value is written `unknown`; `request_protocol` is `tcp` (the
//!   waypoint's request series: `http` or `grpc`, [`LabelSet::render_as`]);
//! - `source_app`/`source_version` are the canonical name and revision (as ztunnel);
//! - `source_principal` is the peer's certificate identity (inbound) or the local source
//!   workload's identity (outbound HBONE), and `unknown` off mutual TLS;
//!   `destination_principal` is the destination workload's configured identity whatever the
//!   transport (ztunnel's `with_destination`);
//! - label values are escaped for the exposition format (`\`, `"`, newline).

use std::fmt::Write as _;

use crate::config::{Service, Workload};
use crate::identity::Identity;

/// Which side of a connection the node reports as (Istio's `reporter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's node: traffic captured leaving a local workload (`direction=outbound`).
    Source,
    /// The server's node: traffic arriving for a local workload (`direction=inbound`).
    Destination,
}

impl Reporter {
    pub const ALL: [Reporter; 2] = [Reporter::Source, Reporter::Destination];

    pub fn label(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }

    /// The access log's `direction`.
    pub fn direction(self) -> &'static str {
        match self {
            Reporter::Source => "outbound",
            Reporter::Destination => "inbound",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Istio's `connection_security_policy`: ztunnel writes only these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// An HBONE hop (either reporter).
    MutualTls,
    /// Plain TCP: outbound to a non-mesh destination, inbound plaintext.
    Unknown,
}

impl Security {
    pub fn label(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::Unknown => "unknown",
        }
    }
}

/// Istio's `response_flags` in ztunnel's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// `-`: no failure.
    None,
    /// `DENY`: refused (or cut) by authorization policy.
    Deny,
    /// `CONNECT`: the upstream could not be reached, or any unclassified failure.
    Connect,
    /// `TLS_FAILURE`.
    TlsFailure,
    /// `H2_HANDSHAKE_FAILURE`.
    H2HandshakeFailure,
    /// `NETWORK_POLICY`: an HBONE dial to 15008 timed out (a NetworkPolicy blocking the port,
    /// as ztunnel guesses).
    NetworkPolicy,
    /// `IDENTITY_ERROR`: no certificate for the source identity.
    IdentityError,
}

impl ResponseFlags {
    pub const ALL: [ResponseFlags; 7] = [
        ResponseFlags::None,
        ResponseFlags::Deny,
        ResponseFlags::Connect,
        ResponseFlags::TlsFailure,
        ResponseFlags::H2HandshakeFailure,
        ResponseFlags::NetworkPolicy,
        ResponseFlags::IdentityError,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn label(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::Deny => "DENY",
            ResponseFlags::Connect => "CONNECT",
            ResponseFlags::TlsFailure => "TLS_FAILURE",
            ResponseFlags::H2HandshakeFailure => "H2_HANDSHAKE_FAILURE",
            ResponseFlags::NetworkPolicy => "NETWORK_POLICY",
            ResponseFlags::IdentityError => "IDENTITY_ERROR",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What one connection's labels are made of.
#[derive(Debug, Clone, Copy)]
pub struct LabelSet<'a> {
    pub reporter: Reporter,
    pub source: Option<&'a Workload>,
    /// The source principal: the peer certificate's identity (inbound) or the local source
    /// workload's identity (outbound HBONE). Ignored off mutual TLS.
    pub source_principal: Option<&'a Identity>,
    pub destination: Option<&'a Workload>,
    pub service: Option<&'a Service>,
    pub security: Security,
}

/// A label set rendered for the exposition, split around `response_flags`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rendered {
    /// `reporter="…",…,request_protocol="tcp"`.
    pub head: Box<str>,
    /// `connection_security_policy="…",…,destination_zone="…"`.
    pub tail: Box<str>,
}

impl Rendered {
    /// `{head,response_flags="…",tail}`.
    pub fn with_flags(&self, flags: ResponseFlags) -> String {
        format!(
            "{{{},response_flags=\"{}\",{}}}",
            self.head,
            flags.label(),
            self.tail
        )
    }
}

const UNKNOWN: &str = "unknown";

fn or_unknown(v: Option<&str>) -> &str {
    match v {
        Some(s) if !s.is_empty() => s,
        _ => UNKNOWN,
    }
}

fn push(out: &mut String, name: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

impl LabelSet<'_> {
    /// Renders the 27 labels (ztunnel's order), `response_flags` left out.
    pub fn render(&self) -> Rendered {
        self.render_as(self.reporter.label(), "tcp")
    }

    /// [`LabelSet::render`] with another `reporter` and `request_protocol`: the waypoint's
    /// request series (`reporter="waypoint"`, `request_protocol="http"` or `"grpc"`, as
    /// Istio's waypoints report).
    pub fn render_as(&self, reporter: &str, protocol: &str) -> Rendered {
        let mtls = self.security == Security::MutualTls;
        let mut head = String::with_capacity(640);
        push(&mut head, "reporter", reporter);
        let s = self.source.map(|w| &w.meta);
        push(
            &mut head,
            "source_workload",
            or_unknown(s.map(|m| &*m.workload_name)),
        );
        push(
            &mut head,
            "source_canonical_service",
            or_unknown(s.map(|m| &*m.canonical_name)),
        );
        push(
            &mut head,
            "source_canonical_revision",
            or_unknown(s.map(|m| &*m.canonical_revision)),
        );
        push(
            &mut head,
            "source_workload_namespace",
            or_unknown(self.source.map(|w| &*w.namespace)),
        );
        let principal = self.source_principal.filter(|_| mtls).map(|p| p.as_str());
        push(&mut head, "source_principal", or_unknown(principal));
        push(
            &mut head,
            "source_app",
            or_unknown(s.map(|m| &*m.canonical_name)),
        );
        push(
            &mut head,
            "source_version",
            or_unknown(s.map(|m| &*m.canonical_revision)),
        );
        push(
            &mut head,
            "source_cluster",
            or_unknown(s.map(|m| &*m.cluster_id)),
        );
        let svc = self.service;
        push(
            &mut head,
            "destination_service",
            or_unknown(svc.map(|s| &*s.hostname)),
        );
        push(
            &mut head,
            "destination_service_namespace",
            or_unknown(svc.map(|s| &*s.namespace)),
        );
        push(
            &mut head,
            "destination_service_name",
            or_unknown(svc.map(|s| &*s.name)),
        );
        let d = self.destination.map(|w| &w.meta);
        push(
            &mut head,
            "destination_workload",
            or_unknown(d.map(|m| &*m.workload_name)),
        );
        push(
            &mut head,
            "destination_canonical_service",
            or_unknown(d.map(|m| &*m.canonical_name)),
        );
        push(
            &mut head,
            "destination_canonical_revision",
            or_unknown(d.map(|m| &*m.canonical_revision)),
        );
        push(
            &mut head,
            "destination_workload_namespace",
            or_unknown(self.destination.map(|w| &*w.namespace)),
        );
        let dst_principal = self.destination.map(|w| w.identity.as_str());
        push(
            &mut head,
            "destination_principal",
            or_unknown(dst_principal),
        );
        push(
            &mut head,
            "destination_app",
            or_unknown(d.map(|m| &*m.canonical_name)),
        );
        push(
            &mut head,
            "destination_version",
            or_unknown(d.map(|m| &*m.canonical_revision)),
        );
        push(
            &mut head,
            "destination_cluster",
            or_unknown(d.map(|m| &*m.cluster_id)),
        );
        push(&mut head, "request_protocol", protocol);

        let mut tail = String::with_capacity(200);
        push(
            &mut tail,
            "connection_security_policy",
            self.security.label(),
        );
        push(
            &mut tail,
            "source_region",
            or_unknown(s.map(|m| &*m.region)),
        );
        push(&mut tail, "source_zone", or_unknown(s.map(|m| &*m.zone)));
        push(
            &mut tail,
            "destination_region",
            or_unknown(d.map(|m| &*m.region)),
        );
        push(
            &mut tail,
            "destination_zone",
            or_unknown(d.map(|m| &*m.zone)),
        );
        Rendered {
            head: head.into(),
            tail: tail.into(),
        }
    }
}

/// The label names in order (for tests and documentation).
pub const LABEL_NAMES: [&str; 27] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "source_region",
    "source_zone",
    "destination_region",
    "destination_zone",
];

/// Writes `name="value"` pairs in order (for families with a few labels of their own).
pub fn simple(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        push(&mut out, k, v);
    }
    let mut s = String::with_capacity(out.len() + 2);
    let _ = write!(s, "{{{out}}}");
    s
}

#[cfg(test)]
mod tests;
