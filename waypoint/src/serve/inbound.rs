//! The client's request body, with what was read of it ahead of the rest: a CUSTOM
//! provider that asks for the body (`includeRequestBodyInCheck`) gets its first bytes
//! before the request goes on, and the backend still gets all of it, in order.
//!
//! Invariants:
//! - frames read ahead are handed out first, unchanged (data and the trailers, as they
//!   came), then the source's: nothing is lost, copied or sent twice;
//! - reading ahead holds at most the limit plus one frame (HTTP/2's frames and hyper's
//!   HTTP/1 reads are bounded), and stops at the limit, so a client cannot make the
//!   waypoint hold more than the provider's `maxRequestBytes` for it;
//! - a body nothing was read ahead of costs one empty-queue check per frame.

use std::collections::VecDeque;

use super::*;
use crate::security::ext_authz::{BodyInCheck, CheckBody};

/// A request body, with the frames read ahead of it first.
pub(super) struct Inbound<B = Incoming> {
    /// Frames read ahead (data, then perhaps the trailers), handed out first.
    ahead: VecDeque<Frame<Bytes>>,
    /// Data bytes in `ahead`.
    ahead_len: u64,
    source: B,
    /// The source ended (it returned `None`, or its trailers, which come last).
    done: bool,
}

/// Why the body could not be read for a check.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadAhead {
    /// Longer than the limit, and the provider takes no partial body: 413.
    TooLarge,
    /// The client's body failed (a reset, a malformed chunk).
    Failed(String),
}

impl<B> Inbound<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: fmt::Display,
{
    pub(super) fn new(source: B) -> Inbound<B> {
        Inbound {
            ahead: VecDeque::new(),
            ahead_len: 0,
            source,
            done: false,
        }
    }

    fn ended(&self) -> bool {
        self.done || self.source.is_end_stream()
    }

    /// Data bytes read ahead and not handed out yet (what a request refused after its
    /// check received of the client).
    pub(super) fn read_ahead(&self) -> u64 {
        self.ahead_len
    }

    /// Reads the body for a check, as Envoy's `ext_authz` buffers it: until it ends or, with
    /// `allow_partial`, until `max` bytes are in. `None` when the body has no data (a check
    /// then carries none, and no partial-body header).
    pub(super) async fn read_for_check(
        &mut self,
        limit: BodyInCheck,
    ) -> Result<Option<CheckBody>, ReadAhead> {
        let max = limit.max as u64;
        let full = |b: &Self| limit.allow_partial && b.ahead_len >= max;
        while !(self.ended() || full(self)) {
            match self.source.frame().await {
                None => self.done = true,
                Some(Err(e)) => return Err(ReadAhead::Failed(e.to_string())),
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        self.ahead_len += d.len() as u64;
                    } else if frame.is_trailers() {
                        self.done = true;
                    }
                    self.ahead.push_back(frame);
                    if !limit.allow_partial && self.ahead_len > max {
                        return Err(ReadAhead::TooLarge);
                    }
                }
            }
        }
        if self.ahead_len == 0 {
            return Ok(None);
        }
        let take = self.ahead_len.min(max) as usize;
        let mut chunks = self.ahead.iter().filter_map(|f| f.data_ref());
        let bytes = match chunks.next() {
            // The usual case, one frame holds it: a handle on it, no copy.
            Some(first) if first.len() >= take => first.slice(..take),
            first => {
                let mut out = bytes::BytesMut::with_capacity(take);
                for d in first.into_iter().chain(chunks) {
                    let room = take - out.len();
                    out.extend_from_slice(&d[..d.len().min(room)]);
                    if out.len() == take {
                        break;
                    }
                }
                out.freeze()
            }
        };
        // Partial when cut, or when the body had not ended at the limit (the waypoint
        // cannot know that nothing follows; Envoy says `false` there).
        let partial = self.ahead_len > max || !self.ended();
        Ok(Some(CheckBody { bytes, partial }))
    }
}

impl<B> http_body::Body for Inbound<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.ahead.pop_front() {
            if let Some(d) = frame.data_ref() {
                this.ahead_len -= d.len() as u64;
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        Pin::new(&mut this.source).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && (self.done || self.source.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(self.ahead_len);
        }
        let rest = self.source.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + self.ahead_len);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + self.ahead_len);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_channel::mpsc;

    type Sender = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

    /// A body whose frames the test sends as it goes.
    fn source() -> (Sender, Inbound<Body>) {
        let (tx, rx) = mpsc::unbounded();
        (
            tx,
            Inbound::new(Body::new(http_body_util::StreamBody::new(rx))),
        )
    }

    fn data(b: &'static [u8]) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(b)))
    }

    fn limit(max: usize, allow_partial: bool) -> BodyInCheck {
        BodyInCheck {
            max,
            allow_partial,
            raw: false,
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        runtime::block_on(runtime::DriverChoice::default(), f).expect("an event loop")
    }

    /// Everything the body hands out after the check: its data and its trailers.
    async fn drain(b: &mut Inbound<Body>) -> (Vec<u8>, Option<HeaderMap>) {
        let mut out = Vec::new();
        let mut trailers = None;
        while let Some(f) = b.frame().await {
            match f.expect("a frame").into_data() {
                Ok(d) => out.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (out, trailers)
    }

    #[test]
    fn a_whole_body_is_read_for_the_check_and_still_goes_on_whole() {
        run(async {
            let (tx, mut b) = source();
            tx.unbounded_send(data(b"hello ")).unwrap();
            tx.unbounded_send(data(b"world")).unwrap();
            let mut t = HeaderMap::new();
            t.insert("x-sum", HeaderValue::from_static("1"));
            tx.unbounded_send(Ok(Frame::trailers(t))).unwrap();
            let check = b.read_for_check(limit(64, false)).await.unwrap().unwrap();
            assert_eq!(&check.bytes[..], b"hello world");
            assert!(!check.partial);
            assert_eq!(b.read_ahead(), 11);
            assert_eq!(b.size_hint().exact(), Some(11));
            drop(tx);
            let (body, trailers) = drain(&mut b).await;
            assert_eq!(body, b"hello world");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
            assert!(b.is_end_stream());
        });
    }

    #[test]
    fn a_partial_check_reads_to_the_limit_and_leaves_the_rest_streaming() {
        run(async {
            let (tx, mut b) = source();
            tx.unbounded_send(data(b"0123")).unwrap();
            tx.unbounded_send(data(b"4567")).unwrap();
            // Not sent yet: the check must not wait for it.
            let check = b.read_for_check(limit(6, true)).await.unwrap().unwrap();
            assert_eq!(&check.bytes[..], b"012345");
            assert!(check.partial);
            tx.unbounded_send(data(b"89")).unwrap();
            drop(tx);
            assert_eq!(drain(&mut b).await.0, b"0123456789");
        });
    }

    #[test]
    fn exactly_the_limit_is_partial_only_while_the_body_may_go_on() {
        run(async {
            let (tx, mut b) = source();
            tx.unbounded_send(data(b"0123")).unwrap();
            let check = b.read_for_check(limit(4, true)).await.unwrap().unwrap();
            assert!(check.partial, "the body had not ended");
            drop(tx);
            let (tx, mut b) = source();
            tx.unbounded_send(data(b"0123")).unwrap();
            drop(tx);
            let check = b.read_for_check(limit(4, false)).await.unwrap().unwrap();
            assert!(!check.partial, "the body ended at the limit");
            assert_eq!(&check.bytes[..], b"0123");
        });
    }

    #[test]
    fn over_the_limit_without_partial_messages_is_too_large() {
        run(async {
            let (tx, mut b) = source();
            tx.unbounded_send(data(b"0123")).unwrap();
            tx.unbounded_send(data(b"45")).unwrap();
            assert_eq!(
                b.read_for_check(limit(5, false)).await.unwrap_err(),
                ReadAhead::TooLarge
            );
            // What it held: the limit plus one frame.
            assert_eq!(b.read_ahead(), 6);
        });
    }

    #[test]
    fn an_empty_body_gives_no_check_body_and_a_failed_one_an_error() {
        run(async {
            let (tx, mut b) = source();
            drop(tx);
            assert_eq!(b.read_for_check(limit(5, false)).await.unwrap(), None);
            let (tx, mut b) = source();
            tx.unbounded_send(data(b"01")).unwrap();
            tx.unbounded_send(Err("reset by the client".into()))
                .unwrap();
            assert!(matches!(
                b.read_for_check(limit(5, false)).await,
                Err(ReadAhead::Failed(e)) if e.contains("reset")
            ));
        });
    }

    #[test]
    fn a_body_nothing_was_read_ahead_of_passes_through() {
        run(async {
            let (tx, mut b) = source();
            tx.unbounded_send(data(b"abc")).unwrap();
            drop(tx);
            assert_eq!(b.read_ahead(), 0);
            assert_eq!(drain(&mut b).await.0, b"abc");
        });
    }
}
