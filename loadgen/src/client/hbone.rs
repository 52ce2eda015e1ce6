//! Native HBONE client: mutual TLS with a workload certificate to a node proxy's inbound
//! port (15008), HTTP/2 CONNECT to the destination `ip:port`, then TCP request/response of
//! `size` bytes through the tunnel (the destination echoes). Built on the `hbone` crate's
//! client (`hbone::client::connect`, `ClientConn::send_connect`).
//!
//! Invariants:
//! - N connections × M slots, as for HTTP/2: the slots of a connection share one mTLS +
//!   HTTP/2 connection ([`HboneGroup`]), dialed once and redialed after it fails.
//! - By default a slot keeps its tunnel open across requests (the steady-state data path);
//!   with `tunnel_per_request` every request opens a fresh CONNECT stream (the CONNECT path).
//! - Echoed bytes are compared with what was sent; a CONNECT answered non-200 is
//!   `bad_status`, a TLS or identity failure `other`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{LocalBoxFuture, Shared};
use hbone::client::ClientConn;
use hbone::h2conn::H2Settings;
use hbone::stream::HboneStream;
use hbone::wire::ConnectRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{IoTally, h2c::h2_kind};
use crate::http1::pattern;
use crate::stats::ErrorKind;

/// What every HBONE slot needs; shared by all workers.
#[derive(Clone, Debug)]
pub struct HboneSpec {
    /// Client config from `hbone::tls::client_config` (workload certificate, expected server
    /// identities).
    pub tls: Arc<rustls::ClientConfig>,
    /// The destination inside the tunnel (`:authority`).
    pub dest: SocketAddr,
    /// Bytes per request (echoed by the destination).
    pub size: usize,
    /// Open a new CONNECT stream for every request.
    pub tunnel_per_request: bool,
}

/// Classifies an `hbone` error.
pub fn hbone_kind(e: &hbone::Error, connecting: bool) -> ErrorKind {
    match e {
        hbone::Error::Io(io) if connecting => ErrorKind::from_connect(io),
        hbone::Error::Io(io) => ErrorKind::from_io(io),
        hbone::Error::H2(h2) => h2_kind(h2),
        hbone::Error::Rejected { .. } | hbone::Error::Denied(_) | hbone::Error::Unavailable(_) => {
            ErrorKind::BadStatus
        }
        hbone::Error::Timeout { .. } if connecting => ErrorKind::ConnectTimeout,
        hbone::Error::Timeout { .. } => ErrorKind::Timeout,
        _ => ErrorKind::Other,
    }
}

type Dial = Shared<LocalBoxFuture<'static, Result<(u64, ClientConn), ErrorKind>>>;

/// One mTLS + HTTP/2 connection to the node, shared by several slots.
pub struct HboneGroup {
    node: SocketAddr,
    connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    state: RefCell<(Option<Dial>, u64)>,
}

impl HboneGroup {
    pub fn new(
        node: SocketAddr,
        connect_timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> HboneGroup {
        HboneGroup {
            node,
            connect_timeout,
            tls,
            state: RefCell::new((None, 0)),
        }
    }

    async fn get(&self, dialed: &mut bool) -> Result<(u64, ClientConn), ErrorKind> {
        let dial = {
            let mut st = self.state.borrow_mut();
            if st.0.is_none() {
                st.1 += 1;
                *dialed = true;
                let (generation, node, tls, to) =
                    (st.1, self.node, self.tls.clone(), self.connect_timeout);
                let fut = async move {
                    let settings = H2Settings::default();
                    match runtime::time::timeout(to, hbone::client::connect(node, tls, &settings))
                        .await
                    {
                        Ok(Ok(conn)) => Ok((generation, conn)),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %node, "HBONE connect failed");
                            Err(hbone_kind(&e, true))
                        }
                        Err(_) => Err(ErrorKind::ConnectTimeout),
                    }
                };
                st.0 = Some(fut.boxed_local().shared());
            }
            st.0.clone().expect("set above")
        };
        let res = dial.await;
        let stale = match &res {
            Err(_) => true,
            Ok((_, conn)) => !conn.is_usable(),
        };
        if stale {
            let generation = res
                .as_ref()
                .map(|(g, _)| *g)
                .unwrap_or(self.state.borrow().1);
            self.retire(generation);
        }
        res
    }

    fn retire(&self, generation: u64) {
        let mut st = self.state.borrow_mut();
        if st.1 == generation {
            st.0 = None;
        }
    }
}

/// One tunnel slot.
pub struct HboneSlot {
    group: Rc<HboneGroup>,
    spec: HboneSpec,
    tunnel: Option<(u64, HboneStream)>,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl HboneSlot {
    pub fn new(group: Rc<HboneGroup>, spec: &HboneSpec) -> HboneSlot {
        HboneSlot {
            group,
            spec: spec.clone(),
            tunnel: None,
            out: pattern(spec.size).collect(),
            inbuf: vec![0; spec.size],
        }
    }

    pub async fn exchange(&mut self, io: &mut IoTally) -> Result<(), ErrorKind> {
        let res = self.exchange_inner(io).await;
        if (res.is_err() || self.spec.tunnel_per_request)
            && let Some((generation, mut t)) = self.tunnel.take()
        {
            if res.is_ok() {
                // END_STREAM our side; dropping then resets whatever the peer still sends.
                let _ = t.shutdown().await;
            } else if !self.group_usable(generation) {
                self.group.retire(generation);
            }
        }
        res
    }

    fn group_usable(&self, generation: u64) -> bool {
        let st = self.group.state.borrow();
        st.1 == generation
            && st
                .0
                .as_ref()
                .and_then(|d| d.peek())
                .is_some_and(|r| r.as_ref().is_ok_and(|(_, c)| c.is_usable()))
    }

    async fn exchange_inner(&mut self, io: &mut IoTally) -> Result<(), ErrorKind> {
        if self.tunnel.is_none() {
            let mut dialed = false;
            let got = self.group.get(&mut dialed).await;
            if dialed {
                io.connects += 1;
            }
            let (generation, conn) = got?;
            let req = ConnectRequest::new(self.spec.dest);
            let t = conn
                .send_connect(&req)
                .await
                .map_err(|e| hbone_kind(&e, false))?;
            self.tunnel = Some((generation, t));
        }
        let Some((_, t)) = self.tunnel.as_mut() else {
            return Err(ErrorKind::Other);
        };
        if self.out.is_empty() {
            return Ok(());
        }
        // Write and read at once (through a split of the tunnel), so an echo larger than
        // the HTTP/2 windows cannot stall with both directions' buffers full.
        let (mut rd, mut wr) = tokio::io::split(t);
        let out = &self.out;
        let inbuf = &mut self.inbuf;
        let write = async {
            wr.write_all(out).await?;
            wr.flush().await
        };
        let read = async {
            let mut got = 0;
            while got < inbuf.len() {
                match rd.read(&mut inbuf[got..]).await {
                    Ok(0) => return Err((ErrorKind::ShortRead, got)),
                    Ok(n) => got += n,
                    Err(e) => return Err((ErrorKind::from_io(&e), got)),
                }
            }
            Ok(got)
        };
        let (w, r) = futures_util::future::join(write, read).await;
        if w.is_ok() {
            io.sent += out.len() as u64;
        }
        io.received += r.as_ref().map_or_else(|(_, n)| *n, |n| *n) as u64;
        w.map_err(|e| ErrorKind::from_io(&e))?;
        r.map_err(|(kind, _)| kind)?;
        if self.inbuf != self.out {
            return Err(ErrorKind::Other);
        }
        Ok(())
    }

    pub fn abort(&mut self) {
        self.tunnel = None;
    }
}
