//! The `external` scenario: any proxy, or pair of proxies, from command templates, so a
//! user can put ztunnel, Linkerd's proxy or anything else on the same bench.
//!
//! `--external-cmd TEMPLATE` is given once (one proxy: client → proxy → backend) or twice
//! (a pair: client → first → second → backend, like two sidecars or two node proxies).
//! Each template is run as `sh -c 'exec TEMPLATE'` (so the proxy keeps the PID that is
//! sampled) after these placeholders are replaced:
//!
//! | placeholder | value |
//! |---|---|
//! | `{listen}` `{listen_host}` `{listen_port}` | where this proxy must listen (loopback, free port) |
//! | `{upstream}` `{upstream_host}` `{upstream_port}` | where it must forward to (the next proxy, or the backend) |
//! | `{dir}` | a temporary directory for its files (removed afterwards) |
//! | `{ca}` `{ca_key}` | root certificate and key (PEM) shared by the pair |
//! | `{cert}` `{key}` | this side's SPIFFE leaf (`sa/client` for the first, `sa/server` for the second) |
//! | `{peer_id}` | the SPIFFE ID the other side presents |
//!
//! Example: `--external-cmd 'socat TCP-LISTEN:{listen_port},bind={listen_host},reuseaddr,fork TCP:{upstream}'`.
//! A proxy is ready when its `{listen}` address accepts a TCP connection; the server-side
//! proxy is started (and ready) before the client side.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::certs::{Ca, LeafFiles};
use crate::net::{free_port, wait_accepting};
use crate::procs::Supervisor;
use crate::scenario::{Kind, Options, Sut, launch};
use crate::{Error, Result};

/// Start-up deadline of one external proxy.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The placeholder names a template may use.
pub const PLACEHOLDERS: [&str; 12] = [
    "listen",
    "listen_host",
    "listen_port",
    "upstream",
    "upstream_host",
    "upstream_port",
    "dir",
    "ca",
    "ca_key",
    "cert",
    "key",
    "peer_id",
];

/// Replaces `{name}` placeholders with `value(name)`; an unknown or unclosed placeholder
/// is an error naming it.
pub fn render(template: &str, value: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| {
            Error::invalid("--external-cmd", format!("unclosed `{{` in `{template}`"))
        })?;
        let name = &after[..close];
        let v = value(name).ok_or_else(|| {
            Error::invalid(
                "--external-cmd",
                format!(
                    "unknown placeholder `{{{name}}}` in `{template}` (known: {})",
                    PLACEHOLDERS.join(", ")
                ),
            )
        })?;
        out.push_str(&v);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a template before anything starts: it must say where to listen and where to go.
pub fn validate(template: &str) -> Result<()> {
    let probe = render(template, |n| {
        PLACEHOLDERS.contains(&n).then(|| format!("<{n}>"))
    })?;
    let listens = probe.contains("<listen>") || probe.contains("<listen_port>");
    let forwards = probe.contains("<upstream>") || probe.contains("<upstream_port>");
    if !listens || !forwards {
        return Err(Error::invalid(
            "--external-cmd",
            format!(
                "`{template}` must use {{listen}} (or {{listen_port}}) and {{upstream}} (or {{upstream_port}})"
            ),
        ));
    }
    Ok(())
}

struct Side<'a> {
    listen: SocketAddr,
    upstream: SocketAddr,
    dir: &'a Path,
    ca: &'a Ca,
    leaf: &'a LeafFiles,
    peer_id: &'a str,
}

fn value(side: &Side<'_>, name: &str) -> Option<String> {
    Some(match name {
        "listen" => side.listen.to_string(),
        "listen_host" => side.listen.ip().to_string(),
        "listen_port" => side.listen.port().to_string(),
        "upstream" => side.upstream.to_string(),
        "upstream_host" => side.upstream.ip().to_string(),
        "upstream_port" => side.upstream.port().to_string(),
        "dir" => side.dir.display().to_string(),
        "ca" => side.ca.cert_path.display().to_string(),
        "ca_key" => side.ca.key_path.display().to_string(),
        "cert" => side.leaf.cert.display().to_string(),
        "key" => side.leaf.key.display().to_string(),
        "peer_id" => side.peer_id.to_string(),
        _ => return None,
    })
}

/// Starts the external proxy (pair) in front of `backend`.
pub fn start(opts: &Options, sup: &Supervisor, backend: SocketAddr) -> Result<Sut> {
    let templates = &opts.external_cmds;
    if templates.is_empty() || templates.len() > 2 {
        return Err(Error::invalid(
            "--external-cmd",
            format!(
                "the external scenario needs one or two templates, got {}",
                templates.len()
            ),
        ));
    }
    for t in templates {
        validate(t)?;
    }
    let mut group = sup.group("external")?;
    let dir = group.dir().to_path_buf();
    let ca = Ca::new(&dir)?;
    let client = ca.leaf(&dir, "default", "client")?;
    let server = ca.leaf(&dir, "default", "server")?;

    // Listen addresses from the client side inward: entry, then (for a pair) the middle hop.
    // On the veth the second proxy of a pair runs on side `b` and listens on its address.
    let topo = &opts.topology;
    let listens: Vec<SocketAddr> = (0..templates.len())
        .map(|i| {
            let port = free_port()?.port();
            let ip = if i == 0 {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            } else {
                topo.server_listen_ip()
            };
            Ok(SocketAddr::new(ip, port))
        })
        .collect::<Result<_>>()?;
    let mut configs = Vec::new();
    let mut pids = Vec::new();
    // Start the innermost proxy first so each one's upstream is up when it starts.
    for i in (0..templates.len()).rev() {
        let last = i + 1 == templates.len();
        let (leaf, peer) = if i == 0 && templates.len() == 2 {
            (&client, &server)
        } else {
            (&server, &client)
        };
        let side = Side {
            listen: listens[i],
            upstream: if last { backend } else { listens[i + 1] },
            dir: &dir,
            ca: &ca,
            leaf,
            peer_id: &peer.spiffe_id,
        };
        let line = render(&templates[i], |n| value(&side, n))?;
        let place = if i == 0 { &topo.proxy1 } else { &topo.proxy2 };
        let mut cmd = launch(&place.launcher, Path::new("sh"));
        cmd.arg("-c").arg(format!("exec {line}"));
        let what = format!("external proxy {}", i + 1);
        let listen = side.listen;
        let proc = place.run(|| {
            let proc = group.spawn(&what, cmd)?;
            wait_accepting(&group, &proc, &what, listen, START_DEADLINE, &line)?;
            Ok(proc)
        })?;
        configs.push((format!("external-{}.cmd", i + 1), line));
        pids.push(proc.pid);
    }
    pids.reverse();
    configs.reverse();
    Ok(Sut {
        kind: Kind::External,
        entry: listens[0],
        proxy_pids: pids,
        configs,
        group: Some(group),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_unknown_ones_rejected() {
        let s = render("p --l {listen} --u {upstream_port}", |n| match n {
            "listen" => Some("127.0.0.1:1".into()),
            "upstream_port" => Some("2".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s, "p --l 127.0.0.1:1 --u 2");
        let e = render("p {nope}", |_| None).unwrap_err().to_string();
        assert!(e.contains("{nope}"), "{e}");
        assert!(render("p {listen", |_| Some(String::new())).is_err());
        assert!(validate("p {listen} {upstream}").is_ok());
        assert!(validate("p {listen}").is_err());
    }
}
