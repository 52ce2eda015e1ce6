//! Small loopback helpers: ephemeral ports, readiness waits, a tiny HTTP/1.0 GET for admin
//! endpoints, and finding the programs the harness launches.
//!
//! Every wait here has a deadline and polls a condition (a connect, a file, an HTTP
//! status) — never a bare sleep standing in for readiness.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::{Group, Proc};
use crate::{Error, Result};

/// Poll period of readiness waits: short against a proxy's ~0.3–1 s start-up.
pub const POLL: Duration = Duration::from_millis(20);

/// Per-attempt timeout of a loopback connect or admin request; loopback answers in µs, so
/// anything slower is a process still starting.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// A loopback port that was free a moment ago (bind to port 0, read it, release it). Used
/// only where a program must be told its port up front; where a program can report the
/// port it bound (Envoy's admin), that is used instead.
pub fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::os("binding an ephemeral loopback port", e))?;
    l.local_addr()
        .map_err(|e| Error::os("reading an ephemeral port", e))
}

/// True when a TCP connect to `addr` succeeds now and reaches a listener.
///
/// A connect to an unbound loopback port in the ephemeral range can pick that very port as
/// its source and "succeed" by TCP simultaneous open with itself; that is not a listener.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, ATTEMPT_TIMEOUT)
        .is_ok_and(|s| s.local_addr().is_ok_and(|local| local != addr))
}

/// Polls `ready` every [`POLL`] until it returns `Ok(Some(v))`, it errors, or `deadline`.
pub fn wait_for<T>(
    deadline: Instant,
    mut ready: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    loop {
        if let Some(v) = ready()? {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// `GET path` over HTTP/1.1 with `connection: close` to `addr`: the status code and body
/// (chunked bodies decoded). Envoy's admin refuses HTTP/1.0 with 426.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, ATTEMPT_TIMEOUT)?;
    s.set_read_timeout(Some(ATTEMPT_TIMEOUT))?;
    s.set_write_timeout(Some(ATTEMPT_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&String::from_utf8_lossy(&raw))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}

/// Status and body of a complete HTTP/1.1 response; `None` when it is malformed.
pub fn parse_response(text: &str) -> Option<(u16, String)> {
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    if !chunked {
        return Some((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some((status, out));
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Finds `name`: the explicit path if given, else next to the running executable, else in
/// the workspace's `target/{release,debug}`, else on `PATH`.
pub fn find_program(name: &str, explicit: Option<&Path>, hint: &str) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(Error::MissingProgram {
            program: p.display().to_string(),
            hint: "the path given does not exist".into(),
        });
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // A test binary lives in target/<profile>/deps; the binaries one level up.
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(name));
        }
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target");
    for profile in ["release", "debug"] {
        candidates.push(workspace.join(profile).join(name));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingProgram {
            program: name.to_string(),
            hint: hint.to_string(),
        })
}

/// Finds `name` on `PATH` only.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Waits until `proc` (started in `group` as `what`) accepts TCP connections on `listen`,
/// for at most `within`. An exit before that, or the deadline, is a [`Error::NotReady`]
/// naming `what`, the reason (with `cmdline` after an exit) and the tail of its log.
pub fn wait_accepting(
    group: &Group,
    proc: &Proc,
    what: &str,
    listen: SocketAddr,
    within: Duration,
    cmdline: &str,
) -> Result<()> {
    let ready = wait_for(Instant::now() + within, || {
        if let Some(status) = group.exited(proc) {
            return Err(Error::NotReady {
                what: what.to_string(),
                reason: format!("exited with {status}: {cmdline}"),
                log: group.log_tail(proc),
            });
        }
        Ok(accepts(listen).then_some(()))
    })?;
    ready.ok_or_else(|| Error::NotReady {
        what: what.to_string(),
        reason: format!("{listen} did not accept before the deadline"),
        log: group.log_tail(proc),
    })?;
    // The port accepting is not proof that this process serves it: a port picked free a
    // moment ago may have been taken by another process since. One that has exited by
    // now did not.
    std::thread::sleep(EXIT_GRACE);
    if let Some(status) = group.exited(proc) {
        return Err(Error::NotReady {
            what: what.to_string(),
            reason: format!("exited with {status} (and {listen} is someone else's): {cmdline}"),
            log: group.log_tail(proc),
        });
    }
    Ok(())
}

/// How long a started proxy must stay up after its port first accepts.
const EXIT_GRACE: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn plain_and_chunked_bodies() {
        assert_eq!(
            parse_response("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nLIVE"),
            Some((200, "LIVE".into()))
        );
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nLI\r\n\r\n2\r\nVE\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, "LI\r\nVE".into())));
        assert_eq!(
            parse_response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            None
        );
        assert_eq!(parse_response("garbage"), None);
    }
}
