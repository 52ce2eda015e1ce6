//! A request body read once from the client and kept, up to [`REPLAY_LIMIT`], while it
//! streams to the first attempt, so a failed attempt can be retried from the start even
//! when the body's length is not known in advance (gRPC, chunked uploads) and even while
//! the client is still sending. Envoy buffers a retried request the same way.
//!
//! Invariants:
//! - the client's body is pulled once: each frame is counted once (the source is the
//!   request's [`Counted`]) and kept
//!   as a `Bytes` handle (no copy) while the total stays within [`REPLAY_LIMIT`];
//! - one attempt reads at a time: taking the body for a new attempt cuts the previous
//!   attempt's reader, which then fails (its connection is not reused with a truncated
//!   body);
//! - past the limit nothing more is kept and no further attempt can start: the attempt in
//!   flight streams on.

use super::*;

/// The shared side: the client's body, what was kept of it, and which attempt reads.
struct State {
    source: Body,
    /// The data frames so far, while within the limit.
    kept: Vec<Bytes>,
    held: u64,
    /// Past the limit: `kept` no longer holds the whole body.
    overflowed: bool,
    trailers: Option<HeaderMap>,
    /// The source ended (its last frame, trailers or not, was read).
    ended: bool,
    /// The attempt allowed to read.
    generation: u64,
}

/// A request body any number of attempts can read from the start, while it fits.
#[derive(Clone)]
pub(super) struct Tee(Rc<RefCell<State>>);

impl Tee {
    pub(super) fn new(source: Body) -> Tee {
        Tee(Rc::new(RefCell::new(State {
            source,
            kept: Vec::new(),
            held: 0,
            overflowed: false,
            trailers: None,
            ended: false,
            generation: 0,
        })))
    }

    /// Whether another attempt can read the body from its start.
    pub(super) fn replayable(&self) -> bool {
        !self.0.borrow().overflowed
    }

    /// The body for the next attempt, from its start; the previous attempt's reader is cut.
    pub(super) fn attempt(&self) -> Body {
        let generation = {
            let mut s = self.0.borrow_mut();
            s.generation += 1;
            s.generation
        };
        Body::new(TeeBody {
            tee: self.clone(),
            generation,
            next: 0,
            trailers_sent: false,
        })
    }
}

/// One attempt's reading of a [`Tee`].
struct TeeBody {
    tee: Tee,
    generation: u64,
    /// The next kept frame to give.
    next: usize,
    trailers_sent: bool,
}

impl http_body::Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let tee = self.tee.clone();
        let mut s = tee.0.borrow_mut();
        if s.generation != self.generation {
            return Poll::Ready(Some(Err("the request went to another attempt".into())));
        }
        if let Some(b) = s.kept.get(self.next) {
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(b.clone()))));
        }
        if s.ended {
            if !self.trailers_sent
                && let Some(t) = s.trailers.clone()
            {
                self.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        }
        match Pin::new(&mut s.source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if !s.overflowed {
                            s.held += data.len() as u64;
                            if s.held > REPLAY_LIMIT {
                                s.overflowed = true;
                                s.kept = Vec::new();
                                // From here this reader streams: no index to keep.
                                self.next = usize::MAX;
                            } else {
                                s.kept.push(data.clone());
                                self.next += 1;
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let Some(t) = frame.trailers_ref() {
                            s.trailers = Some(t.clone());
                            self.trailers_sent = true;
                        }
                        s.ended = true;
                        frame
                    }
                };
                if s.source.is_end_stream() {
                    s.ended = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.tee.0.borrow();
        s.generation == self.generation
            && s.ended
            && self.next >= s.kept.len()
            && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.tee.0.borrow();
        if s.ended && !s.overflowed {
            return SizeHint::with_exact(s.held);
        }
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_channel::mpsc;

    type Sender = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

    /// A body whose frames the test sends as it goes.
    fn source() -> (Sender, Body) {
        let (tx, rx) = mpsc::unbounded();
        (tx, Body::new(http_body_util::StreamBody::new(rx)))
    }

    fn data(b: &'static [u8]) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(b)))
    }

    fn run<F: Future>(f: F) -> F::Output {
        runtime::block_on(runtime::DriverChoice::default(), f).expect("an event loop")
    }

    /// The next frame's data, or `None` at the end.
    async fn next(b: &mut Body) -> Option<Result<Bytes, String>> {
        let f = b.frame().await?;
        Some(
            f.map_err(|e| e.to_string())
                .map(|f| f.into_data().unwrap_or_default()),
        )
    }

    #[test]
    fn a_retry_starts_over_while_the_client_still_sends() {
        run(async {
            let (tx, src) = source();
            let tee = Tee::new(src);
            let mut first = tee.attempt();
            tx.unbounded_send(data(b"one ")).unwrap();
            tx.unbounded_send(data(b"two ")).unwrap();
            assert_eq!(
                next(&mut first).await,
                Some(Ok(Bytes::from_static(b"one ")))
            );
            assert_eq!(
                next(&mut first).await,
                Some(Ok(Bytes::from_static(b"two ")))
            );
            // The first attempt failed: the retry reads from the start, then what comes.
            assert!(tee.replayable());
            let second = tee.attempt();
            assert!(
                matches!(next(&mut first).await, Some(Err(_))),
                "the old reader is cut"
            );
            tx.unbounded_send(data(b"three")).unwrap();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-timeout", HeaderValue::from_static("1S"));
            tx.unbounded_send(Ok(Frame::trailers(trailers))).unwrap();
            drop(tx);
            let got = second.collect().await.unwrap();
            assert_eq!(got.trailers().unwrap()["grpc-timeout"], "1S");
            assert_eq!(got.to_bytes(), Bytes::from_static(b"one two three"));
            // A third attempt gets it all again, with its length known.
            let third = tee.attempt();
            assert_eq!(third.size_hint().exact(), Some(13));
            let got = third.collect().await.unwrap();
            assert!(got.trailers().is_some());
            assert_eq!(got.to_bytes(), Bytes::from_static(b"one two three"));
        });
    }

    #[test]
    fn past_the_limit_it_streams_and_cannot_be_retried() {
        run(async {
            let (tx, src) = source();
            let tee = Tee::new(src);
            let mut first = tee.attempt();
            let chunk = Bytes::from(vec![7u8; 16 * 1024]);
            let chunks = REPLAY_LIMIT as usize / chunk.len() + 2;
            for _ in 0..chunks {
                tx.unbounded_send(Ok(Frame::data(chunk.clone()))).unwrap();
            }
            drop(tx);
            let mut n = 0;
            while let Some(d) = next(&mut first).await {
                n += d.unwrap().len();
            }
            assert_eq!(
                n,
                chunks * chunk.len(),
                "the attempt in flight gets everything"
            );
            assert!(!tee.replayable());
            assert_eq!(tee.0.borrow().kept.len(), 0, "nothing held past the limit");
        });
    }
}
