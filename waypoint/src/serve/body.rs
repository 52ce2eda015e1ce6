//! Bodies: the boxed body both sides use (no `Send`: a body never leaves its core), and
//! the wrappers that count bytes, finish a request's record and return an upstream
//! connection to the pool when a body ends.

use super::*;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies on both sides: a streamed hyper body or bytes in hand. Boxed without `Send`:
/// a body never leaves its core.
pub struct Body(Pin<Box<dyn http_body::Body<Data = Bytes, Error = BoxError>>>);

impl Body {
    pub fn new<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + 'static,
        B::Error: Into<BoxError>,
    {
        Body(Box::pin(body.map_err(Into::into)))
    }

    /// Bytes in hand.
    pub fn full(bytes: Bytes) -> Body {
        Body::new(Full::new(bytes).map_err(|e| match e {}))
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A response body that hands its connection back to the endpoint's pool when it ends
/// cleanly, and counts its request in flight until then.
pub(super) struct ReturnOnEnd {
    pub(super) body: Incoming,
    pub(super) conn: Option<Conn>,
    pub(super) key: Option<Endpoint>,
    pub(super) idle: Idle,
    /// The Service's limits (or the defaults), which decide whether the connection is kept.
    pub(super) policy: Option<Arc<Limits>>,
    pub(super) active: Option<Active>,
}

impl http_body::Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => {
                self.conn = None;
                self.active = None;
            }
            // hyper stops polling a body that says it has ended (a known length, all read):
            // the connection goes back as soon as the last frame is out.
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            _ => {}
        }
        polled.map(|o| o.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ReturnOnEnd {
    fn drop(&mut self) {
        // A body read to its end but never polled past it (an empty one, say).
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl ReturnOnEnd {
    pub(super) fn give_back(&mut self) {
        self.active = None;
        if let (Some(conn), Some(key)) = (self.conn.take(), self.key.take()) {
            let default = PoolPolicy::default();
            let policy = self.policy.as_ref().map_or(&default, |l| &l.policy);
            self.idle.borrow_mut().give_back(key, conn, policy);
        }
    }
}

/// A body that keeps something alive until it is dropped (an HTTP/2 response's request
/// in flight).
pub(super) struct Holding<B> {
    pub(super) body: B,
    pub(super) _active: Active,
}

impl<B: http_body::Body + Unpin> http_body::Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that counts its bytes (and a gRPC stream's messages) as they stream
/// through.
pub(super) struct Counted {
    pub(super) inner: super::Inbound,
    pub(super) n: Rc<Cell<u64>>,
    /// A gRPC request's messages: where the scan is, and the stream's counts.
    pub(super) messages: Option<(crate::grpc::Frames, Rc<Messages>)>,
    /// A mirror's copy of a body that streams ([`super::mirror`]).
    pub(super) mirror: Option<super::mirror::Tap>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled
            && let Some(d) = f.data_ref()
        {
            self.n.set(self.n.get() + d.len() as u64);
            if let Some((frames, m)) = &mut self.messages {
                m.request.set(m.request.get() + frames.scan(d));
            }
        }
        if let Some(tap) = &self.mirror {
            let left = self.inner.size_hint().exact();
            match &polled {
                Poll::Ready(Some(Ok(f))) => {
                    tap.frame(f);
                    // A reader may stop once the declared length is in (hyper's HTTP/1
                    // client does), or once the body says it has ended.
                    if f.is_data() && left == Some(0) {
                        tap.complete();
                    }
                    if self.inner.is_end_stream() {
                        tap.end();
                    }
                }
                // An HTTP/2 client's RST_STREAM(NO_ERROR) ends a body early without an
                // error; a declared length not reached tells it from a whole body.
                Poll::Ready(None) if left.is_some_and(|n| n > 0) => tap.fail(),
                Poll::Ready(None) => tap.end(),
                Poll::Ready(Some(Err(_))) => tap.fail(),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that finishes its request's record when it ends or is dropped.
pub(super) struct Finish {
    pub(super) inner: Body,
    pub(super) rec: Option<Pending>,
}

pub(super) struct Pending {
    pub(super) record: Record,
    pub(super) response_bytes: u64,
    /// Where the scan of a gRPC response's messages is.
    pub(super) frames: crate::grpc::Frames,
}

impl http_body::Body for Finish {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(rec) = self.rec.as_mut() {
                    if let Some(d) = f.data_ref() {
                        rec.response_bytes += d.len() as u64;
                        if let Some(m) = &rec.record.messages {
                            m.response.set(m.response.get() + rec.frames.scan(d));
                        }
                    } else if let Some(t) = f.trailers_ref()
                        && rec.record.grpc
                        && let Some(status) = crate::grpc::status_in(t)
                    {
                        rec.record.grpc_status = Some(status);
                    }
                }
                // hyper stops at a body that says it ended: finish now.
                if self.inner.is_end_stream()
                    && let Some(rec) = self.rec.take()
                {
                    let n = rec.response_bytes;
                    rec.record.finish(n, true);
                }
            }
            Poll::Ready(None) => {
                if let Some(rec) = self.rec.take() {
                    let n = rec.response_bytes;
                    rec.record.finish(n, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(rec) = self.rec.take() {
                    let n = rec.response_bytes;
                    rec.record.finish(n, false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            let n = rec.response_bytes;
            // An empty body is complete without a single poll.
            rec.record.finish(n, self.inner.is_end_stream());
        }
    }
}
