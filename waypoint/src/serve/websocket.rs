//! WebSockets through the waypoint: the handshake goes to the backend on a connection of
//! its own, and after its 101 the client's and the backend's streams are spliced until
//! either closes.
//!
//! hyper's upgrade API hands a connection over as a `Send` trait object, and HBONE streams
//! are per core, so both sides are taken back from hyper by polling their connections
//! without shutdown: the client connection in `Waypoint::serve_connection`, the backend's
//! here. The backend's stream reaches the client connection through [`Upgraded`], a slot
//! per client connection that the handshake's request fills.

use super::*;

/// The backend's side of a WebSocket, once its handshake answered 101: its stream and the
/// bytes it sent after the head.
pub(super) type UpgradedStream<U> =
    futures_channel::oneshot::Receiver<(<U as Upstreams>::Io, Bytes)>;
/// Per client connection: set by the request whose handshake succeeded.
pub(super) type Upgraded<U> = Rc<RefCell<Option<UpgradedStream<U>>>>;

/// Copies a WebSocket both ways until either side closes: the client stream (and what it
/// sent after its head) against the backend's.
pub(super) async fn splice<C, S>(
    mut client: C,
    client_early: Bytes,
    upstream: futures_channel::oneshot::Receiver<(S, Bytes)>,
) -> Result<(), String>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let (mut backend, backend_early) = upstream
        .await
        .map_err(|_| "the backend's WebSocket connection ended before the upgrade".to_string())?;
    if !client_early.is_empty() {
        backend
            .write_all(&client_early)
            .await
            .map_err(|e| e.to_string())?;
    }
    if !backend_early.is_empty() {
        client
            .write_all(&backend_early)
            .await
            .map_err(|e| e.to_string())?;
    }
    match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        Ok((up, down)) => {
            tracing::debug!(up, down, "WebSocket closed");
            Ok(())
        }
        Err(e) => Err(format!("WebSocket: {e}")),
    }
}

impl<U: Upstreams> Waypoint<U> {
    /// A WebSocket handshake on a new HTTP/1.1 connection to an endpoint. On `101` the
    /// connection is left in `upgraded` for the client connection to splice once hyper has
    /// written the 101 to the client; any other answer is a plain response, and the
    /// connection is not pooled.
    pub(super) async fn send_websocket(
        &self,
        to: &Upstream,
        req: Request<Body>,
        upgraded: &Upgraded<U>,
    ) -> Result<(Response<Body>, Reached), SendError> {
        let (picked, _active) = self.pick(to, &[])?;
        let timeout = picked
            .limits
            .as_ref()
            .map_or(crate::dr::pool::CONNECT_TIMEOUT, |l| {
                l.policy.connect_timeout
            });
        let endpoint = picked.endpoint;
        let io = self.connect(&endpoint, timeout).await?;
        let local = U::local_addr(&io);
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .handshake::<_, Body>(TokioIo::new(io))
            .await
            .map_err(super::upstream::handshake_failed)?;
        let (tx, rx) = futures_channel::oneshot::channel();
        runtime::spawn(async move {
            // Ends after the 101 with the stream handed back, or when the exchange is over.
            match conn.without_shutdown().await {
                Ok(parts) => {
                    let _ = tx.send((parts.io.into_inner(), parts.read_buf));
                }
                Err(e) => tracing::debug!(error = %e, "upstream WebSocket handshake failed"),
            }
        })
        .detach();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Reset(e.to_string()))?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.stats.websockets.set(self.stats.websockets.get() + 1);
            *upgraded.borrow_mut() = Some(rx);
        }
        Ok((resp.map(Body::new), Reached { endpoint, local }))
    }
}
