//! The mesh config: one YAML file of workloads, services and policies, read into an
//! immutable [`Snapshot`].
//!
//! Owns: the mesh model whatever its source (`types`, `snapshot`, `policy`), the state a
//! source fills and the snapshot built from it (`state`), the file format (`model`, a
//! superset of ztunnel's local config file), the whole-file validation that names the
//! failing field's path (`build`), istiod's xDS resources turned into the model (`xds`),
//! and the file watcher (`watch`). Invariants: a file is accepted whole or not at all; an
//! xDS resource is accepted or rejected alone; a rejection never changes a snapshot anyone
//! holds.
//!
//! Error paths use serde's field names and `[i]` for list items, e.g.
//! `services[2].ports: "http" is not a port number`.

mod build;
pub mod model;
pub mod policy;
pub mod snapshot;
pub mod state;
pub mod types;
pub mod watch;
pub mod xds;

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

pub use build::{DEFAULT_CLUSTER_ID, DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN};
pub use model::{HealthStatus, LoadBalancing, Protocol, Vip};
pub use policy::{Action, Authorization, Decision, DenyReason, Request, Scope};
pub use snapshot::{
    Destination, Endpoint, Service, ServicePort, Snapshot, Summary, Workload, WorkloadMeta,
    WorkloadService, pick,
};
pub use state::MeshState;
pub use watch::{WatchOptions, Watcher, watch};

/// Why a config was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid mesh config.
    #[error("{}", DisplayInvalid { file: file.as_deref(), path, reason, location: *location })]
    Invalid {
        /// The file, when the config came from one.
        file: Option<PathBuf>,
        /// The field's path, e.g. `services[2].ports`; empty for the document itself.
        path: String,
        reason: String,
        /// Line and column (1-based) when the YAML reader knew them.
        location: Option<(usize, usize)>,
    },
}

struct DisplayInvalid<'a> {
    file: Option<&'a Path>,
    path: &'a str,
    reason: &'a str,
    location: Option<(usize, usize)>,
}

/// `file:line:column: path: reason`, the shape editors and terminals link to.
impl fmt::Display for DisplayInvalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file, self.location) {
            (Some(file), Some((l, c))) => write!(f, "{}:{l}:{c}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, Some((l, c))) => write!(f, "line {l} column {c}: ")?,
            (None, None) => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(self.reason)
    }
}

impl ConfigError {
    /// The failing field's path (`""` for the document, or when the file was unreadable).
    pub fn field_path(&self) -> &str {
        match self {
            ConfigError::Invalid { path, .. } => path,
            ConfigError::Read { .. } => "",
        }
    }

    /// What was wrong, without the path.
    pub fn reason(&self) -> String {
        match self {
            ConfigError::Invalid { reason, .. } => reason.clone(),
            ConfigError::Read { source, .. } => source.to_string(),
        }
    }

    fn in_file(self, p: &Path) -> ConfigError {
        match self {
            ConfigError::Invalid {
                path,
                reason,
                location,
                ..
            } => ConfigError::Invalid {
                file: Some(p.to_path_buf()),
                path,
                reason,
                location,
            },
            other => other,
        }
    }
}

/// How to read a config.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// This node's name, overriding the file's `node:` (the CLI's `--node`).
    pub node: Option<String>,
    /// Where RequestAuthentications' remote key sets (`jwksUri`, OpenID discovery) live:
    /// the waypoint shares one registry between its loads and its fetcher; elsewhere the
    /// slots are made and never filled.
    pub jwks: waypoint::security::JwksRegistry,
    /// The file holds only a waypoint's L7 kinds (`httpRoutes`, `virtualServices`,
    /// `destinationRules`, `authorizationPolicies`, `requestAuthentications`) and the mesh
    /// comes from elsewhere (istiod): Services are named by Kubernetes' rules rather than
    /// looked up in the file, and workloads, services and policies are refused.
    pub l7_only: bool,
}

pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Parses and validates a config held in memory.
pub fn parse(yaml: &str, opts: &LoadOptions) -> Result<Snapshot, ConfigError> {
    if yaml
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        // An empty file is most often one caught mid-write; accepting it would empty the mesh.
        return Err(invalid_at(
            "",
            "the file holds no config (write `workloads: []` for an intentionally empty mesh)",
            None,
        ));
    }
    let de = serde_yaml::Deserializer::from_str(yaml);
    let raw: model::RawConfig = serde_path_to_error::deserialize(de).map_err(yaml_error)?;
    if opts.l7_only {
        return build::build_l7_only(&raw, hash_bytes(yaml.as_bytes()), &opts.jwks);
    }
    build::build(
        raw,
        opts.node.as_deref(),
        hash_bytes(yaml.as_bytes()),
        &opts.jwks,
    )
}

/// The longest part of an error reason quoted from the file: a reason that quotes a value
/// (serde's `invalid type: string "…"`) is cut there, so a 6.7 MB bad value gives a line,
/// not 6.7 MB of log.
pub const MAX_REASON: usize = 512;

pub(crate) fn invalid_at(
    path: &str,
    reason: &str,
    location: Option<(usize, usize)>,
) -> ConfigError {
    ConfigError::Invalid {
        file: None,
        path: hbone::error::excerpt(path),
        reason: truncate_reason(reason),
        location,
    }
}

fn truncate_reason(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &reason[..cut], reason.len()),
        None => reason.to_string(),
    }
}

/// Turns a serde error into path + reason + location. serde_yaml itself prefixes the path
/// where it knows it (attributing a bad map key to the map, as in
/// `services[2].ports: "http" is not a port number`) and appends "at line L column C";
/// serde_path_to_error knows the path in every case (syntax errors included). Use
/// serde_yaml's path when it gave one, else serde_path_to_error's, and move the position
/// out of the reason.
fn yaml_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let tracked = e.path().to_string();
    let inner = e.into_inner();
    let location = inner.location().map(|l| (l.line(), l.column()));
    let mut msg = strip_position(&inner.to_string());
    let mut path = if tracked == "." {
        String::new()
    } else {
        tracked.clone()
    };
    let split = msg
        .split_once(": ")
        .filter(|(prefix, _)| !prefix.is_empty())
        .and_then(|(prefix, rest)| Some((prefix, rest, tracked.strip_prefix(prefix)?)));
    if let Some((prefix, rest, remainder)) = split {
        // serde_yaml stops at the map for a bad key (".http"), which is what we want;
        // it also stops short of a list index ("[0]"), which we keep.
        if !remainder.starts_with('[') {
            path = prefix.to_string();
        }
        msg = rest.to_string();
    }
    invalid_at(&path, &msg, location)
}

/// Removes serde_yaml's " at line L column C" (kept as `location` instead).
fn strip_position(msg: &str) -> String {
    let Some(i) = msg.find(" at line ") else {
        return msg.to_string();
    };
    let rest = &msg[i + " at line ".len()..];
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix(" column ").unwrap_or(rest);
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    format!("{}{}", &msg[..i], rest)
}

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path, opts: &LoadOptions) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, opts).map_err(|e| e.in_file(path))
}

/// Runs the parser on arbitrary bytes and checks what it promises (the `config` fuzz target
/// and its corpus test call this): no panic; an accepted config's lookups agree with its
/// lists; a rejection's message stays one short line, whatever the input.
pub fn fuzz_check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opts = LoadOptions {
        node: Some("node-1".into()),
        ..LoadOptions::default()
    };
    match parse(text, &opts) {
        Ok(snap) => {
            let summary = snap.summary();
            assert_eq!(summary.workloads, snap.workloads().len());
            for w in snap.workloads() {
                for ip in &w.ips {
                    let found = snap
                        .workload_by_ip(*ip)
                        .expect("every workload IP resolves");
                    assert!(std::sync::Arc::ptr_eq(found, w));
                }
            }
            for s in snap.services() {
                for vip in &s.vips {
                    assert!(snap.service_by_vip(vip.ip).is_some());
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.len() <= 1024, "an error message of {} bytes", msg.len());
        }
    }
}

/// `ringmesh config check FILE`: validates a file without starting anything.
pub fn check_file(path: &Path) -> Result<Summary, ConfigError> {
    load_file(path, &LoadOptions::default()).map(|s| s.summary())
}
