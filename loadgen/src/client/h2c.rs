//! HTTP/2 client: N connections × M streams. Each slot is one stream at a time; the slots of
//! a connection share an [`H2Group`], which dials the connection once and redials after it
//! fails.
//!
//! Invariants:
//! - At most one dial per group is in flight: slots that find the group disconnected wait on
//!   the same shared dial future.
//! - A slot that sees a connection-level failure retires that connection (by generation,
//!   so a newer connection is never torn down by a stale error).
//! - Response bodies are drained and their flow-control capacity released as read, so a
//!   slow slot never stalls its siblings' windows.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{LocalBoxFuture, Shared};
use h2::client::SendRequest;
use http::{Method as HttpMethod, Request, Uri};

use super::{ClientConfig, HttpSpec, IoTally, connect};
use crate::http1::{Method, pattern};
use crate::stats::ErrorKind;

/// Stream window. 4 MiB, as HBONE uses (DESIGN.md): large enough that bulk bodies are not
/// window-bound on loopback.
const STREAM_WINDOW: u32 = 4 << 20;
/// Connection window: 16 MiB, as HBONE uses.
const CONN_WINDOW: u32 = 16 << 20;

type Dial = Shared<LocalBoxFuture<'static, Result<(u64, SendRequest<Bytes>), ErrorKind>>>;

/// One HTTP/2 connection shared by several slots.
pub struct H2Group {
    cfg: ClientConfig,
    state: RefCell<GroupState>,
}

struct GroupState {
    dial: Option<Dial>,
    generation: u64,
}

impl H2Group {
    pub fn new(cfg: ClientConfig) -> H2Group {
        H2Group {
            cfg,
            state: RefCell::new(GroupState {
                dial: None,
                generation: 0,
            }),
        }
    }

    /// The connection, dialing it if needed. Returns its generation; `dialed` is set when this
    /// call started the dial (so the caller counts one connect).
    async fn get(&self, dialed: &mut bool) -> Result<(u64, SendRequest<Bytes>), ErrorKind> {
        let dial = {
            let mut st = self.state.borrow_mut();
            if st.dial.is_none() {
                st.generation += 1;
                *dialed = true;
                let generation = st.generation;
                let cfg = self.cfg.clone();
                st.dial = Some(
                    async move { dial(cfg, generation).await }
                        .boxed_local()
                        .shared(),
                );
            }
            st.dial.clone().expect("set above")
        };
        let res = dial.await;
        if res.is_err() {
            // Let the next request try again rather than caching the failure.
            let mut st = self.state.borrow_mut();
            if st
                .dial
                .as_ref()
                .is_some_and(|d| d.peek().is_some_and(|r| r.is_err()))
            {
                st.dial = None;
            }
        }
        res
    }

    /// Retires connection `generation` if it is still the current one.
    fn retire(&self, generation: u64) {
        let mut st = self.state.borrow_mut();
        if st.generation == generation {
            st.dial = None;
        }
    }
}

async fn dial(cfg: ClientConfig, generation: u64) -> Result<(u64, SendRequest<Bytes>), ErrorKind> {
    let mut tally = IoTally::default();
    let stream = connect(cfg.target, cfg.connect_timeout, &mut tally).await?;
    let handshake = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .handshake::<_, Bytes>(stream);
    let (send, conn) = match runtime::time::timeout(cfg.connect_timeout, handshake).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(h2_kind(&e)),
        Err(_) => return Err(ErrorKind::ConnectTimeout),
    };
    runtime::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "http2 connection ended");
        }
    })
    .detach();
    Ok((generation, send))
}

/// Classifies an h2 error.
pub fn h2_kind(e: &h2::Error) -> ErrorKind {
    if let Some(io) = e.get_io() {
        return ErrorKind::from_io(io);
    }
    if e.is_reset() || e.is_go_away() {
        return ErrorKind::Reset;
    }
    ErrorKind::Other
}

/// One stream slot.
pub struct H2Slot {
    group: Rc<H2Group>,
    spec: HttpSpec,
    uri: Uri,
    body: Bytes,
}

impl H2Slot {
    pub fn new(group: Rc<H2Group>, spec: &HttpSpec) -> H2Slot {
        let uri = format!("http://{}{}", spec.authority, spec.path)
            .parse()
            .unwrap_or_else(|_| Uri::from_static("http://localhost/"));
        H2Slot {
            group,
            spec: spec.clone(),
            uri,
            body: pattern(spec.body_size).collect::<Vec<u8>>().into(),
        }
    }

    pub async fn exchange(&mut self, io: &mut IoTally) -> Result<(), ErrorKind> {
        let mut dialed = false;
        let got = self.group.get(&mut dialed).await;
        if dialed {
            io.connects += 1;
        }
        let (generation, send) = got?;
        match self.request(send, io).await {
            Ok(()) => Ok(()),
            Err((kind, conn_broken)) => {
                if conn_broken {
                    self.group.retire(generation);
                }
                Err(kind)
            }
        }
    }

    async fn request(
        &self,
        send: SendRequest<Bytes>,
        io: &mut IoTally,
    ) -> Result<(), (ErrorKind, bool)> {
        let conn_err = |e: h2::Error| {
            let broken = e.is_io() || e.is_go_away() || !e.is_reset();
            (h2_kind(&e), broken)
        };
        let mut send = send.ready().await.map_err(conn_err)?;
        let method = match self.spec.method {
            Method::Get => HttpMethod::GET,
            Method::Post => HttpMethod::POST,
        };
        let req = Request::builder()
            .method(method)
            .uri(self.uri.clone())
            .body(())
            .map_err(|_| (ErrorKind::Other, false))?;
        let has_body = !self.body.is_empty();
        let (resp, mut stream) = send.send_request(req, !has_body).map_err(conn_err)?;
        if has_body {
            stream
                .send_data(self.body.clone(), true)
                .map_err(conn_err)?;
            io.sent += self.body.len() as u64;
        }
        let resp = resp.await.map_err(conn_err)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut len = 0u64;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(conn_err)?;
            len += chunk.len() as u64;
            let _ = body.flow_control().release_capacity(chunk.len());
            if len > self.spec.max_body {
                return Err((ErrorKind::Other, false));
            }
        }
        io.received += len;
        if !self.spec.status_ok(status) {
            return Err((ErrorKind::BadStatus, false));
        }
        Ok(())
    }

    pub fn abort(&mut self) {
        // The stream is reset by h2 when its handles drop; the connection stays usable.
    }
}
