//! A mirror's copy of a request body that streams (gRPC, chunked uploads, bodies over the
//! replay limit): the client's frames, as the request's own attempt reads them, queued for
//! the mirror's request.
//!
//! Invariants:
//! - the client never waits for the mirror: the request's side only queues (`Bytes`
//!   handles, no copy) and wakes the copy; it never blocks and never fails;
//! - a copy is whole or fails: when the mirror has fallen [`MIRROR_QUEUE_LIMIT`] behind,
//!   or the client's body errs or is dropped before its end, the copy's next read is an
//!   error, so the mirror's request is reset, never ended as if complete;
//! - the bytes queued per mirrored request stay within [`MIRROR_QUEUE_LIMIT`] (a frame
//!   that would pass it is not queued; the `Bytes` handles may keep their read buffers);
//! - a copy the mirror dropped (its timeout, a failed send) takes nothing more.

use std::collections::VecDeque;
use std::task::Waker;

use super::*;

/// How far a mirror may fall behind the request it copies. A mirror starts late: its
/// request waits for a connection (an HBONE stream to the mirror's node) while the
/// request's own attempt already streams, on loopback at hundreds of MB/s; 64 KiB (what a
/// retry keeps) was outrun by one 4 MiB upload in three in the end-to-end test. 256 KiB
/// holds a typical upload's lead, and bounds a mirrored request's memory at four times
/// a retried one's.
pub(super) const MIRROR_QUEUE_LIMIT: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Ended,
    Failed(&'static str),
}

struct Queue {
    chunks: VecDeque<Bytes>,
    queued: usize,
    trailers: Option<HeaderMap>,
    end: End,
    waker: Option<Waker>,
    /// The source's declared length has all been read: what is left is its end (an empty
    /// frame, trailers) that a reader may not wait for.
    complete: bool,
}

impl Queue {
    /// Ends the copy (once), and hands back the copy's waker to wake once the queue's
    /// borrow is let go.
    #[must_use]
    fn finish(&mut self, end: End) -> Option<Waker> {
        if self.end == End::Open {
            self.end = end;
            if matches!(end, End::Failed(_)) {
                self.drop_queued();
            }
        }
        self.waker.take()
    }

    fn drop_queued(&mut self) {
        self.chunks.clear();
        self.queued = 0;
        self.trailers = None;
    }
}

/// Ends the copy behind `q` with `end` and wakes its reader.
fn finish(q: &RefCell<Queue>, end: End) {
    let waker = q.borrow_mut().finish(end);
    if let Some(w) = waker {
        w.wake();
    }
}

/// The request's side: what the client sends is queued for the copy.
pub(super) struct Tap(Rc<RefCell<Queue>>);

/// The mirror's side: a request body that yields what the tap queued.
pub(super) struct Copy(Rc<RefCell<Queue>>);

/// A tap and the copy it feeds.
pub(super) fn channel() -> (Tap, Copy) {
    let q = Rc::new(RefCell::new(Queue {
        chunks: VecDeque::new(),
        queued: 0,
        trailers: None,
        end: End::Open,
        waker: None,
        complete: false,
    }));
    (Tap(q.clone()), Copy(q))
}

impl Tap {
    /// A frame the request read from the client. Trailers are a body's last frame: they
    /// end the copy.
    pub(super) fn frame(&self, frame: &Frame<Bytes>) {
        let waker = {
            let mut q = self.0.borrow_mut();
            if q.end != End::Open {
                return;
            }
            if let Some(d) = frame.data_ref() {
                if q.queued + d.len() > MIRROR_QUEUE_LIMIT {
                    q.finish(End::Failed("the mirror fell 256 KiB behind the request"))
                } else {
                    q.queued += d.len();
                    q.chunks.push_back(d.clone());
                    q.waker.take()
                }
            } else if let Some(t) = frame.trailers_ref() {
                q.trailers = Some(t.clone());
                q.finish(End::Ended)
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The source's declared length has all been read: a reader that stops here (hyper's
    /// HTTP/1 client, once it wrote `content-length` bytes) read the whole body.
    pub(super) fn complete(&self) {
        self.0.borrow_mut().complete = true;
    }

    /// The client's body ended: the copy ends once it has read what is queued.
    pub(super) fn end(&self) {
        finish(&self.0, End::Ended);
    }

    /// The client's body failed: so does the copy.
    pub(super) fn fail(&self) {
        finish(&self.0, End::Failed("the request's body failed"));
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Not ended: the request stopped reading its body. When all of its declared length
        // was read, the body was whole; otherwise (the client went away, the request was
        // answered first) the copy must not look complete.
        let complete = self.0.borrow().complete;
        let end = if complete {
            End::Ended
        } else {
            End::Failed("the request's body was not read to its end")
        };
        finish(&self.0, end);
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        // The mirror gave up (its timeout, a failed send): the request's side stops
        // queueing for it and lets go of what it queued.
        let mut q = self.0.borrow_mut();
        q.end = End::Failed("the mirror's request is gone");
        q.drop_queued();
        q.waker = None;
    }
}

impl http_body::Body for Copy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut q = self.0.borrow_mut();
        if let End::Failed(why) = q.end {
            return Poll::Ready(Some(Err(why.into())));
        }
        if let Some(d) = q.chunks.pop_front() {
            q.queued -= d.len();
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = q.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if q.end == End::Ended {
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let q = self.0.borrow();
        q.end == End::Ended && q.chunks.is_empty() && q.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn data(n: usize, b: u8) -> Frame<Bytes> {
        Frame::data(Bytes::from(vec![b; n]))
    }

    fn poll(c: &mut Copy) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let waker = std::task::Waker::noop();
        Pin::new(c).poll_frame(&mut Context::from_waker(waker))
    }

    #[test]
    fn the_copy_has_every_frame_and_the_trailers_in_order() {
        let (tap, copy) = channel();
        tap.frame(&data(3, b'a'));
        tap.frame(&data(2, b'b'));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        tap.frame(&Frame::trailers(trailers));
        tap.end();
        drop(tap);
        let collected = futures_executor_block_on(copy.collect()).unwrap();
        assert_eq!(
            collected.trailers().unwrap()["grpc-status"],
            HeaderValue::from_static("0")
        );
        assert_eq!(&collected.to_bytes()[..], b"aaabb");
    }

    #[test]
    fn the_copy_waits_for_the_request_and_is_woken() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = std::sync::Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let (tap, mut copy) = channel();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut copy).poll_frame(&mut cx).is_pending());
        assert!(!copy.is_end_stream());
        tap.frame(&data(4, b'x'));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(poll(&mut copy), Poll::Ready(Some(Ok(f))) if f.is_data()));
        tap.end();
        assert!(copy.is_end_stream());
        assert!(matches!(poll(&mut copy), Poll::Ready(None)));
    }

    /// Counts wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A copy that has polled once (and waits), and the count of its wake-ups.
    fn waiting() -> (Tap, Copy, std::sync::Arc<Count>) {
        let count = std::sync::Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let (tap, mut copy) = channel();
        assert!(
            Pin::new(&mut copy)
                .poll_frame(&mut Context::from_waker(&waker))
                .is_pending()
        );
        (tap, copy, count)
    }

    fn wakes(c: &Count) -> usize {
        c.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn trailers_end_the_copy_since_nothing_reads_past_them() {
        let (tap, mut copy, count) = waiting();
        tap.frame(&data(2, b't'));
        tap.frame(&Frame::trailers(HeaderMap::new()));
        // The request's reader stops after the trailers and drops its body: still whole.
        drop(tap);
        // Woken by the first frame; it reads what came after without waiting again.
        assert_eq!(wakes(&count), 1);
        assert!(matches!(poll(&mut copy), Poll::Ready(Some(Ok(f))) if f.is_data()));
        assert!(matches!(poll(&mut copy), Poll::Ready(Some(Ok(f))) if f.is_trailers()));
        assert!(copy.is_end_stream());
        assert!(matches!(poll(&mut copy), Poll::Ready(None)));
    }

    #[test]
    fn a_body_read_to_its_declared_length_is_whole_when_its_reader_stops() {
        // hyper's HTTP/1 client stops once it wrote `content-length` bytes, before the
        // client's HTTP/2 END_STREAM arrives.
        let (tap, mut copy, count) = waiting();
        tap.frame(&data(3, b'l'));
        tap.complete();
        drop(tap);
        assert_eq!(wakes(&count), 1);
        assert!(matches!(poll(&mut copy), Poll::Ready(Some(Ok(f))) if f.is_data()));
        assert!(matches!(poll(&mut copy), Poll::Ready(None)));
    }

    #[test]
    fn the_end_and_a_failure_wake_the_copy() {
        let (tap, _copy, count) = waiting();
        tap.end();
        assert_eq!(wakes(&count), 1);
        let (tap, _copy, count) = waiting();
        tap.fail();
        assert_eq!(wakes(&count), 1);
        let (tap, _copy, count) = waiting();
        drop(tap);
        assert_eq!(wakes(&count), 1);
    }

    #[test]
    fn a_copy_the_mirror_dropped_takes_nothing_more() {
        let (tap, copy) = channel();
        tap.frame(&data(8, b'd'));
        let q = copy.0.clone();
        drop(copy);
        assert_eq!(q.borrow().queued, 0);
        tap.frame(&data(8, b'd'));
        assert!(q.borrow().chunks.is_empty() && q.borrow().queued == 0);
    }

    #[test]
    fn a_mirror_that_falls_behind_fails_and_never_holds_more_than_the_limit() {
        let (tap, mut copy) = channel();
        let chunk = 16 * 1024;
        for _ in 0..MIRROR_QUEUE_LIMIT / chunk {
            tap.frame(&data(chunk, b'z'));
        }
        assert_eq!(copy.0.borrow().queued, MIRROR_QUEUE_LIMIT);
        // One more frame than the mirror can be behind: the copy fails, and lets go of
        // what it held; the request's side goes on untouched.
        tap.frame(&data(1, b'z'));
        assert_eq!(copy.0.borrow().queued, 0);
        assert!(copy.0.borrow().chunks.is_empty());
        tap.frame(&data(chunk, b'z'));
        tap.end();
        match poll(&mut copy) {
            Poll::Ready(Some(Err(e))) => assert!(e.to_string().contains("256 KiB"), "{e}"),
            other => panic!("{:?}", other.map(|o| o.map(|r| r.is_ok()))),
        }
        assert!(!copy.is_end_stream());
    }

    #[test]
    fn a_request_body_not_read_to_its_end_fails_the_copy() {
        let (tap, mut copy) = channel();
        tap.frame(&data(5, b'q'));
        drop(tap);
        // What was queued is let go: a copy is whole or fails.
        match poll(&mut copy) {
            Poll::Ready(Some(Err(e))) => assert!(e.to_string().contains("not read"), "{e}"),
            other => panic!("{:?}", other.map(|o| o.map(|r| r.is_ok()))),
        }
        let (tap, mut copy) = channel();
        tap.fail();
        assert!(matches!(poll(&mut copy), Poll::Ready(Some(Err(_)))));
    }

    /// Drives a future that needs no runtime (the copy's frames are all queued).
    fn futures_executor_block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut Context::from_waker(waker)) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("the copy waited with everything queued"),
        }
    }
}
