//! A fake Kubernetes API server for the waypoint's `--kube` source: HTTPS with a
//! certificate for its IP from a CA of its own, a bearer token required, and for each
//! resource path a LIST (`GET PATH`) and a WATCH (`GET PATH?watch=1&resourceVersion=N`,
//! a chunked stream of JSON events, one per line, from after version N) that the test
//! drives by applying and deleting objects while it runs.
//!
//! A thread per connection, one request per connection (`connection: close`), as the
//! waypoint opens a connection per list and per watch.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// One change: its resource version, type and object.
type Event = (u64, &'static str, Value);

#[derive(Default)]
struct State {
    version: u64,
    /// Path → (namespace, name) → object.
    objects: HashMap<String, BTreeMap<(String, String), Value>>,
    /// Path → every change, in order.
    events: HashMap<String, Vec<Event>>,
    /// Path → lists and watches asked for.
    requests: HashMap<String, u32>,
    /// Paths answered with an error status instead: 404 as for a kind whose CRD is not
    /// installed, 403 as for one the token may not read.
    refused: HashMap<String, u16>,
}

/// A running fake; stops accepting when dropped.
pub struct FakeKube {
    pub addr: SocketAddr,
    /// `https://ADDR`.
    pub base: String,
    /// The CA that signed the server's certificate, as PEM.
    pub ca_pem: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeKube {
    /// Serves on `addr` (port 0 for any), requiring `Authorization: Bearer TOKEN`.
    pub fn start(addr: SocketAddr, token: &str) -> Result<FakeKube> {
        let (config, ca_pem) = crate::web::tls_for(addr.ip())?;
        let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stopping, token) = (state.clone(), stop.clone(), token.to_string());
        let watches_stop = stopping.clone();
        crate::web::accept_threads(listener, stopping, move |s| {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            let tls = rustls::StreamOwned::new(conn, s);
            let _ = serve(tls, &st, &watches_stop, &token);
        });
        Ok(FakeKube {
            addr,
            base: format!("https://{addr}"),
            ca_pem,
            state,
            stop,
        })
    }

    /// Creates or replaces `object` (its metadata names it) under resource `path`.
    pub fn apply(&self, path: &str, mut object: Value) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.version += 1;
        let v = s.version;
        object["metadata"]["resourceVersion"] = json!(v.to_string());
        let key = (
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let old = s
            .objects
            .entry(path.to_string())
            .or_default()
            .insert(key, object.clone());
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        s.events
            .entry(path.to_string())
            .or_default()
            .push((v, kind, object));
    }

    /// Deletes `namespace/name` under `path`.
    pub fn delete(&self, path: &str, namespace: &str, name: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.version += 1;
        let v = s.version;
        let removed = s
            .objects
            .entry(path.to_string())
            .or_default()
            .remove(&(namespace.to_string(), name.to_string()));
        if let Some(mut o) = removed {
            o["metadata"]["resourceVersion"] = json!(v.to_string());
            s.events
                .entry(path.to_string())
                .or_default()
                .push((v, "DELETED", o));
        }
    }

    /// Answers `path` with `status` from now on: 404 as a server without the kind's CRD
    /// does, 403 as one whose RBAC does not let the token read it.
    pub fn refuse(&self, path: &str, status: u16) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.refused.insert(path.to_string(), status);
    }

    /// Answers `path` again (a CRD installed, a role granted).
    pub fn serve(&self, path: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.refused.remove(path);
    }

    /// Lists and watches asked for on `path` so far.
    pub fn requests(&self, path: &str) -> u32 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests.get(path).copied().unwrap_or(0)
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    mut s: rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    state: &Mutex<State>,
    stop: &AtomicBool,
    token: &str,
) -> Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if s.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let target = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let authorized = text.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("authorization:")
            && l.trim_end().ends_with(&format!("Bearer {token}"))
    });
    if !authorized {
        let body = r#"{"kind":"Status","code":401,"message":"Unauthorized"}"#;
        write!(
            s,
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    *state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .requests
        .entry(path.to_string())
        .or_default() += 1;
    let refused = state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .refused
        .get(path)
        .copied();
    if let Some(code) = refused {
        let message = if code == 404 {
            "the server could not find the requested resource"
        } else {
            "forbidden: the service account cannot list this resource"
        };
        let body = format!(r#"{{"kind":"Status","code":{code},"message":"{message}"}}"#);
        write!(
            s,
            "HTTP/1.1 {code} Refused\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )?;
        s.flush()?;
        return Ok(());
    }
    if param("watch").is_none() {
        let body = {
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            let items: Vec<Value> = st
                .objects
                .get(path)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": st.version.to_string()}, "items": items}).to_string()
        };
        write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )?;
        s.flush()?;
        return Ok(());
    }
    let mut from: u64 = param("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let seconds: u64 = param("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )?;
    s.flush()?;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        let fresh: Vec<Event> = {
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.events
                .get(path)
                .map(|e| e.iter().filter(|(v, _, _)| *v > from).cloned().collect())
                .unwrap_or_default()
        };
        for (v, kind, object) in fresh {
            let line = format!("{}\n", json!({"type": kind, "object": object}));
            write!(s, "{:x}\r\n{line}\r\n", line.len())?;
            s.flush()?;
            from = v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    write!(s, "0\r\n\r\n")?;
    s.flush()?;
    Ok(())
}
