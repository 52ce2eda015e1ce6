//! The socket → tunnel direction of [`relay`](super::relay) holds a read buffer only while
//! bytes flow, and still grows it for bulk. Driven against a real h2 pair over an in-memory
//! pipe, with a scripted socket whose reads would block until the script says otherwise.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runtime::DriverChoice;
use runtime::meter::{Flow, Meter};

use super::*;

/// A socket that returns the scripted reads in order and would block once they run out
/// (then it is "parked" until [`Scripted::feed`], as `runtime::net::TcpStream` is after
/// EAGAIN). Writes are accepted and dropped.
#[derive(Default)]
struct Scripted {
    reads: VecDeque<Bytes>,
    parked: bool,
    /// Reads attempted (syscalls, for a real socket).
    attempts: usize,
    waker: Option<std::task::Waker>,
}

impl Scripted {
    fn feed(&mut self, data: Bytes) {
        self.reads.push_back(data);
        self.parked = false;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.attempts += 1;
        let Some(mut next) = this.reads.pop_front() else {
            this.parked = true;
            this.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let n = next.len().min(buf.remaining());
        buf.put_slice(&next[..n]);
        next.advance(n);
        if !next.is_empty() {
            this.reads.push_front(next);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Abort for Scripted {
    fn abort(&self) {}

    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The waker was kept by the read that parked; `feed` wakes it.
        if self.parked {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

/// A tunnel (client end) and the server's receiving end of the same h2 stream.
async fn tunnel_pair() -> (HboneStream, h2::RecvStream) {
    let (a, b) = tokio::io::duplex(1 << 20);
    runtime::spawn(async move {
        let mut server = h2::server::handshake(b).await.expect("server handshake");
        while let Some(Ok((req, mut respond))) = server.accept().await {
            let resp = http::Response::new(());
            let _ = respond.send_response(resp, false);
            REQUEST_BODY.with(|slot| *slot.borrow_mut() = Some(req.into_body()));
        }
    })
    .detach();
    let (send_request, conn) = h2::client::handshake(a).await.expect("client handshake");
    runtime::spawn(async move {
        let _ = conn.await;
    })
    .detach();
    let mut send_request = send_request.ready().await.expect("ready");
    let req = http::Request::post("http://test/")
        .body(())
        .expect("request");
    let (response, send) = send_request.send_request(req, false).expect("send");
    let response = response.await.expect("response");
    let server_body = REQUEST_BODY
        .with(|slot| slot.borrow_mut().take())
        .expect("server saw the stream");
    (
        HboneStream::new(send, response.into_body(), None),
        server_body,
    )
}

thread_local! {
    static REQUEST_BODY: std::cell::RefCell<Option<h2::RecvStream>> =
        const { std::cell::RefCell::new(None) };
}

/// Polls `up` once with the task's waker.
async fn poll_up(up: &mut Up, tunnel: &mut HboneStream, sock: &mut Scripted) -> Poll<()> {
    let meter = Meter::new();
    poll_fn(|cx| {
        Poll::Ready(
            up.poll(cx, tunnel, sock, &meter, Flow::FromOriginator)
                .map(|r| r.expect("relay direction failed")),
        )
    })
    .await
}

/// Polls `up` until the socket's script is used up and h2 took every byte read (a send may
/// wait for h2's connection task first), with a deadline.
async fn drain(up: &mut Up, tunnel: &mut HboneStream, sock: &mut Scripted) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            poll_up(up, tunnel, sock).await.is_pending(),
            "no end of stream here"
        );
        if sock.reads.is_empty() && up.out.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the direction did not drain");
        runtime::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Receives `n` bytes at the server end (releasing their window), with a deadline.
async fn recv_exactly(body: &mut h2::RecvStream, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = 0;
    while got < n {
        assert!(Instant::now() < deadline, "only {got} of {n} bytes arrived");
        let chunk = body.data().await.expect("stream open").expect("data");
        got += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    assert_eq!(got, n);
}

fn on_both_drivers(f: impl AsyncFn()) {
    for driver in [DriverChoice::IoUring, DriverChoice::Epoll] {
        match runtime::block_on(driver, f()) {
            Ok(()) => {}
            // A kernel or sandbox without io_uring: the epoll run still covers the logic.
            Err(e) if driver == DriverChoice::IoUring => eprintln!("io_uring unavailable: {e}"),
            Err(e) => panic!("{driver:?}: {e}"),
        }
    }
}

#[test]
fn an_idle_direction_holds_no_read_buffer() {
    on_both_drivers(async || {
        let (mut tunnel, mut body) = tunnel_pair().await;
        let mut sock = Scripted::default();
        let mut up = Up::new();

        // Nothing to read yet: the read would block, and no buffer stays behind.
        assert!(poll_up(&mut up, &mut tunnel, &mut sock).await.is_pending());
        assert_eq!(up.buf.capacity(), 0, "an idle direction parks no buffer");
        // Woken for something else (the other direction, say): still no buffer, no read.
        let attempts = sock.attempts;
        assert!(poll_up(&mut up, &mut tunnel, &mut sock).await.is_pending());
        assert_eq!(up.buf.capacity(), 0);
        assert_eq!(
            sock.attempts, attempts,
            "no read before the socket is readable"
        );

        // A small message: it goes out, and the rest of the buffer is given back.
        sock.feed(Bytes::from_static(&[7; 64]));
        drain(&mut up, &mut tunnel, &mut sock).await;
        assert_eq!(
            up.buf.capacity(),
            0,
            "the spare capacity is not kept while idle"
        );
        recv_exactly(&mut body, 64).await;
    });
}

#[test]
fn bulk_reads_still_grow_the_buffer() {
    on_both_drivers(async || {
        let (mut tunnel, mut body) = tunnel_pair().await;
        let mut sock = Scripted::default();
        let mut up = Up::new();
        // Reads that fill each buffer (4 + 8 + 16 KiB fit in h2's initial 64 KiB window).
        let total = RELAY_BUF_MIN + 2 * RELAY_BUF_MIN + 4 * RELAY_BUF_MIN;
        sock.feed(Bytes::from(vec![1u8; total]));
        drain(&mut up, &mut tunnel, &mut sock).await;
        assert_eq!(
            up.next,
            8 * RELAY_BUF_MIN,
            "each full read doubled the next buffer"
        );
        assert_eq!(up.buf.capacity(), 0);
        recv_exactly(&mut body, total).await;
    });
}
