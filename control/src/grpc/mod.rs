//! gRPC channels to istiod, built as ztunnel builds them.
//!
//! Owns: the [`ChannelConfig`] (address, roots, alternate server name, token, cluster id,
//! extra headers) and the parsing rules ztunnel applies to the values operators set
//! (`XDS_ADDRESS`, `XDS_ROOT_CA`, `AUTH_TOKEN`, `XDS_HEADER_*`, and their `CA_*` twins),
//! taking values rather than reading the environment; and [`IstiodChannel`], a tonic channel
//! plus the headers every call on it must carry.
//!
//! Invariants: only `https` (istiod's 15012 is TLS); the TLS server name is the URL host
//! (optionally also the alternate name); roots are read when a channel is built, so building
//! one per reconnect picks up a rotated root file; HTTP/2 keepalive pings every
//! [`H2_KEEPALIVE_INTERVAL`] and drops the connection after [`H2_KEEPALIVE_TIMEOUT`]
//! without an answer. Channels run on the tokio runtime they are built in (the control
//! runtime), never on a data-path core.

mod auth;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use auth::{CallHeaders, TokenSource};
pub use tls::{CONNECT_TIMEOUT, TCP_KEEPALIVE_INTERVAL, TCP_KEEPALIVE_RETRIES, TCP_KEEPALIVE_TIME};

use crate::error::{Error, chain_text, peer_text};

/// HTTP/2 PING interval and the wait for its answer: ztunnel's values for its istiod
/// connections (30 s / 10 s). They notice a silently dead istiod (a node lost, a NAT entry
/// expired) within 40 s, far sooner than TCP keepalive would.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster id ztunnel sends when neither `ISTIO_META_CLUSTER_ID` nor `CLUSTER_ID` is set.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// The value of `XDS_ROOT_CA` / `CA_ROOT_CA` that selects the operating system's roots.
pub const SYSTEM_ROOTS: &str = "SYSTEM";

/// Where the roots that verify istiod come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCa {
    /// A PEM file, read again whenever a channel is built.
    File(PathBuf),
    /// PEM text given inline.
    Pem(String),
    /// The operating system's trust store.
    System,
}

impl RootCa {
    /// ztunnel's `XDS_ROOT_CA` / `CA_ROOT_CA` rule: an existing path is a file, `SYSTEM`
    /// means the OS roots, anything else is inline PEM (so a missing default file ends as
    /// "not PEM" when loaded, naming the value).
    pub fn parse(value: &str) -> RootCa {
        if Path::new(value).exists() {
            RootCa::File(PathBuf::from(value))
        } else if value == SYSTEM_ROOTS {
            RootCa::System
        } else {
            RootCa::Pem(value.to_string())
        }
    }
}

/// How to reach istiod (the xDS or the CA endpoint: ztunnel configures them separately).
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// `https://host:port`, as [`normalize_address`] writes it.
    pub address: String,
    pub root: RootCa,
    /// A second accepted server name (`ALT_XDS_HOSTNAME` / `ALT_CA_HOSTNAME`).
    pub alt_hostname: Option<String>,
    pub token: TokenSource,
    /// Sent as `clusterid` with the token: istiod picks the cluster whose API server
    /// reviews the token by it.
    pub cluster_id: String,
    /// Extra request headers (`XDS_HEADER_*` / `CA_HEADER_*`), name → value.
    pub headers: Vec<(String, String)>,
}

impl ChannelConfig {
    /// `address` is normalized ([`normalize_address`]); no token, cluster id
    /// [`DEFAULT_CLUSTER_ID`], no extra headers.
    pub fn new(address: &str, root: RootCa) -> Result<ChannelConfig, Error> {
        Ok(ChannelConfig {
            address: normalize_address(address)?,
            root,
            alt_hostname: None,
            token: TokenSource::None,
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            headers: Vec::new(),
        })
    }
}

/// `host:port` gets `https://`; any other scheme, a missing host, a path or a query is
/// refused. Returns `https://<authority>`.
pub fn normalize_address(value: &str) -> Result<String, Error> {
    let v = value.trim();
    let full = if v.contains("://") {
        v.to_string()
    } else {
        format!("https://{v}")
    };
    let target = Target::parse(&full).map_err(|reason| Error::Address {
        address: peer_text(value),
        reason,
    })?;
    Ok(format!("https://{}", target.authority))
}

/// The request headers named by `prefix` (`XDS_HEADER_` or `CA_HEADER_`) among `vars`, name
/// lower-cased as gRPC metadata keys are, sorted by name. Checked when a channel is built.
pub fn headers_from_env(
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(prefix)?;
            (!name.is_empty()).then(|| (name.to_ascii_lowercase(), v))
        })
        .collect();
    out.sort();
    out
}

/// The dial target taken from an `https` URL.
#[derive(Clone, Debug)]
struct Target {
    /// `host:port` as written (IPv6 in brackets), port possibly omitted.
    authority: String,
    /// Without brackets, for DNS resolution and the TLS server name.
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => {
                return Err(format!(
                    "scheme {other:?}: only https is supported (istiod's 15012 is TLS)"
                ));
            }
            None => return Err("no scheme".into()),
        }
        let authority = uri.authority().ok_or("no host")?;
        let host = authority.host();
        if host.is_empty() {
            return Err("no host".into());
        }
        if let Some(pq) = uri.path_and_query()
            && ((pq.path() != "/" && !pq.path().is_empty()) || pq.query().is_some())
        {
            return Err("a gRPC address has no path or query".into());
        }
        if authority.as_str().contains('@') {
            return Err("user info is not supported".into());
        }
        let port = authority.port_u16().unwrap_or(443);
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(Target {
            authority: authority.as_str().to_string(),
            host: host.to_string(),
            port,
        })
    }
}

/// A channel to istiod and the headers each call on it carries.
#[derive(Clone, Debug)]
pub struct IstiodChannel {
    channel: Channel,
    headers: CallHeaders,
    address: Arc<str>,
}

impl IstiodChannel {
    /// The bare channel (calls on it carry no headers; see [`IstiodChannel::request`] and
    /// [`IstiodChannel::intercepted`]).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The channel with the [`CallHeaders`] interceptor: for generated clients built
    /// outside this crate.
    pub fn intercepted(&self) -> InterceptedService<Channel, CallHeaders> {
        InterceptedService::new(self.channel.clone(), self.headers.clone())
    }

    /// A request carrying the headers (the token file is read now).
    pub fn request<T>(&self, message: T) -> Result<tonic::Request<T>, Error> {
        let mut req = tonic::Request::new(message);
        self.headers.apply(req.metadata_mut())?;
        Ok(req)
    }

    /// The configured address.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// Everything but the dial: the roots are read, the names and headers checked.
fn prepare(config: &ChannelConfig) -> Result<(Endpoint, tls::Connector, CallHeaders), Error> {
    let target = Target::parse(&config.address).map_err(|reason| Error::Address {
        address: peer_text(&config.address),
        reason,
    })?;
    let server_name = ServerName::try_from(target.host.clone()).map_err(|e| Error::Address {
        address: config.address.clone(),
        reason: format!("host {:?} is not a TLS server name: {e}", target.host),
    })?;
    let alt = match &config.alt_hostname {
        Some(name) => Some(
            ServerName::try_from(name.clone()).map_err(|e| Error::AltHostname {
                name: name.clone(),
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    let headers = CallHeaders::new(config)?;
    let roots = config.root.load()?;
    let connector = tls::Connector {
        host: target.host.clone(),
        port: target.port,
        server_name,
        tls: Arc::new(tls::client_config(roots, alt)?),
        address: Arc::from(config.address.as_str()),
    };
    let bad = |e: &dyn std::fmt::Display| Error::Address {
        address: config.address.clone(),
        reason: e.to_string(),
    };
    // tonic would insist on its own TLS for an https endpoint; our connector does TLS, so
    // the endpoint is dialed as plain `http` and the requests still say `https` (origin).
    let origin: http::Uri = format!("https://{}", target.authority)
        .parse()
        .map_err(|e| bad(&e))?;
    let endpoint = Endpoint::from_shared(format!("http://{}", target.authority))
        .map_err(|e| bad(&e))?
        .origin(origin)
        .http2_keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    Ok((endpoint, connector, headers))
}

/// Builds a channel and dials istiod now (TCP, TLS, HTTP/2), within [`CONNECT_TIMEOUT`].
/// Must run on a tokio runtime (the control runtime).
pub async fn connect(config: &ChannelConfig) -> Result<IstiodChannel, Error> {
    let (endpoint, connector, headers) = prepare(config)?;
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| transport_error(&config.address, &e))?;
    Ok(IstiodChannel {
        channel,
        headers,
        address: Arc::from(config.address.as_str()),
    })
}

/// Builds a channel that dials on its first call (and again after a connection is lost).
/// The roots are read now. Must be called inside a tokio runtime (the control runtime):
/// the channel's worker task is spawned there.
pub fn connect_lazy(config: &ChannelConfig) -> Result<IstiodChannel, Error> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::NoRuntime);
    }
    let (endpoint, connector, headers) = prepare(config)?;
    Ok(IstiodChannel {
        channel: endpoint.connect_with_connector_lazy(connector),
        headers,
        address: Arc::from(config.address.as_str()),
    })
}

/// Our own error if one is in the chain (the connector's, with the TLS reason), else the
/// whole chain as text.
fn transport_error(address: &str, e: &(dyn std::error::Error + 'static)) -> Error {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(ours) = err.downcast_ref::<Error>() {
            return ours.clone();
        }
        cur = err.source();
    }
    Error::Unreachable {
        address: address.to_string(),
        reason: chain_text(e),
    }
}

/// What a failed call means: our own error (unreachable, timed out) when the failure
/// happened here, else the peer's status.
pub(crate) fn status_error(address: &str, status: &tonic::Status, after: Duration) -> Error {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = cur {
        if let Some(ours) = err.downcast_ref::<Error>() {
            return ours.clone();
        }
        if err.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return Error::Timeout {
                address: address.to_string(),
                after,
            };
        }
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return transport_error(address, err);
        }
        cur = err.source();
    }
    Error::Status {
        address: address.to_string(),
        code: status.code(),
        message: peer_text(status.message()),
    }
}

#[cfg(test)]
mod tests;
