//! What every call to istiod carries: the bearer token, the cluster id and the operator's
//! extra headers.
//!
//! Owns: [`TokenSource`] (ztunnel's `AUTH_TOKEN` rules) and [`CallHeaders`], the tonic
//! interceptor. Invariants: a token file is read again on every call (Kubernetes rotates
//! projected tokens in place), never cached; without a token neither `authorization` nor
//! `clusterid` is sent (ztunnel's `AuthSource::None`); header names and values are checked
//! once, when the interceptor is built, so a call can only fail on the token.

use std::path::{Path, PathBuf};

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::ChannelConfig;
use crate::error::Error;

/// Where the bearer token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// No token: no `authorization` and no `clusterid` header.
    None,
    /// A file read on every call (a projected service-account token, audience `istio-ca`).
    File(PathBuf),
    /// A fixed token (never refreshed; it must outlive the process).
    Static(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::None => f.write_str("None"),
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
            // A credential never reaches a log.
            TokenSource::Static(_) => f.write_str("Static(<redacted>)"),
        }
    }
}

impl TokenSource {
    /// ztunnel's `AUTH_TOKEN` rule: unset → `default_file` if it exists, else no token; an
    /// existing path → that file; any other value → a static token. An empty value means no
    /// token.
    pub fn parse(auth_token: Option<&str>, default_file: &Path) -> TokenSource {
        match auth_token {
            None if default_file.exists() => TokenSource::File(default_file.to_path_buf()),
            None => TokenSource::None,
            Some("") => TokenSource::None,
            Some(v) if Path::new(v).exists() => TokenSource::File(PathBuf::from(v)),
            Some(v) => TokenSource::Static(v.to_string()),
        }
    }

    /// The token for one call (`None` for [`TokenSource::None`]). Trailing whitespace (an
    /// editor's newline) is dropped; an empty token is an error, as in ztunnel.
    pub fn token(&self) -> Result<Option<String>, Error> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.trim_end().to_string())),
            TokenSource::File(path) => {
                let err = |reason: String| Error::Token {
                    path: path.clone(),
                    reason,
                };
                let raw = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                let text = String::from_utf8(raw).map_err(|_| err("not UTF-8 text".into()))?;
                let token = text.trim_end();
                if token.is_empty() {
                    return Err(err("the file is empty".into()));
                }
                Ok(Some(token.to_string()))
            }
        }
    }
}

/// The interceptor that adds `authorization: Bearer <token>`, `clusterid` and the extra
/// headers to every call to istiod.
#[derive(Clone, Debug)]
pub struct CallHeaders {
    token: TokenSource,
    cluster_id: AsciiMetadataValue,
    extra: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
}

fn header_value(name: &str, v: &str) -> Result<AsciiMetadataValue, Error> {
    v.parse().map_err(|_| Error::Header {
        name: name.to_string(),
        reason: "the value is not printable ASCII".into(),
    })
}

impl CallHeaders {
    /// Checks the cluster id and the extra headers now.
    pub fn new(config: &ChannelConfig) -> Result<CallHeaders, Error> {
        let cluster_id = header_value("clusterid", &config.cluster_id)?;
        let mut extra = Vec::with_capacity(config.headers.len());
        for (k, v) in &config.headers {
            let key: AsciiMetadataKey = k.parse().map_err(|_| Error::Header {
                name: k.clone(),
                reason: "not a valid ASCII header name".into(),
            })?;
            extra.push((key, header_value(k, v)?));
        }
        Ok(CallHeaders {
            token: config.token.clone(),
            cluster_id,
            extra,
        })
    }

    /// Adds the headers to one call's metadata (reading the token file now).
    pub fn apply(&self, md: &mut MetadataMap) -> Result<(), Error> {
        if let Some(token) = self.token.token()? {
            let bearer = format!("Bearer {token}");
            let value: AsciiMetadataValue = bearer.parse().map_err(|_| match &self.token {
                TokenSource::File(path) => Error::Token {
                    path: path.clone(),
                    reason: "the token is not printable ASCII".into(),
                },
                _ => Error::Header {
                    name: "authorization".into(),
                    reason: "the static token is not printable ASCII".into(),
                },
            })?;
            md.insert("authorization", value);
            md.insert("clusterid", self.cluster_id.clone());
        }
        for (k, v) in &self.extra {
            md.insert(k.clone(), v.clone());
        }
        Ok(())
    }
}

impl Interceptor for CallHeaders {
    /// For clients built on [`super::IstiodChannel::intercepted`]. tonic turns an
    /// interceptor's error into a status response, so the failure (always the token) arrives
    /// as `Unauthenticated` with our message; this crate's own clients call
    /// [`CallHeaders::apply`] themselves and get the typed [`Error`].
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.apply(req.metadata_mut())
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(req)
    }
}
