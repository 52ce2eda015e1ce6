//! A client connection's deadlines: a request head must complete in time once it has
//! begun (slowloris), and a connection with nothing in flight is closed when idle. One
//! watchdog task per connection, fed by a counting wrapper around its stream.

use super::*;

/// Deadlines of a client connection (a tunnel's HTTP connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Once a request's first byte has arrived, its head must be complete within this
    /// (slowloris); 10 s by default. HTTP/1.1 only: an HTTP/2 head arrives in one frame
    /// sequence that h2 bounds by size.
    pub head_timeout: Duration,
    /// A connection with no request in flight for this long is closed; 1 h by default, as
    /// Envoy's HTTP connection manager.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// What a client connection has been doing, for its deadlines.
pub(super) struct Activity {
    /// Bytes read from the client so far.
    pub(super) bytes: Cell<u64>,
    /// Requests between head and response head.
    pub(super) in_flight: Cell<u32>,
    /// Since when nothing has been in flight, and the byte count then.
    pub(super) idle_since: Cell<Instant>,
    pub(super) bytes_at_idle: Cell<u64>,
    pub(super) http2: Cell<bool>,
}

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            bytes: Cell::new(0),
            in_flight: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            bytes_at_idle: Cell::new(0),
            http2: Cell::new(false),
        }
    }

    pub(super) fn begin(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
    }

    pub(super) fn end(&self) {
        let n = self.in_flight.get().saturating_sub(1);
        self.in_flight.set(n);
        if n == 0 {
            self.idle_since.set(Instant::now());
            self.bytes_at_idle.set(self.bytes.get());
        }
    }

    /// Why the connection must close now, if it must.
    pub(super) fn verdict(&self, limits: ConnLimits, now: Instant) -> Option<String> {
        if self.in_flight.get() > 0 {
            return None;
        }
        let idle = now.saturating_duration_since(self.idle_since.get());
        let started = self.bytes.get() > self.bytes_at_idle.get();
        if started && !self.http2.get() && idle > limits.head_timeout {
            return Some(format!(
                "the request head was not complete {:?} after it began",
                limits.head_timeout
            ));
        }
        (idle > limits.idle_timeout).then(|| format!("no request for {:?}", limits.idle_timeout))
    }
}

/// Completes when the connection's deadlines say it must close, with why. One timer per
/// connection, not per request.
pub(super) async fn watchdog(activity: Rc<Activity>, limits: ConnLimits) -> String {
    let check = (limits.head_timeout.min(limits.idle_timeout) / 4).max(Duration::from_millis(50));
    loop {
        runtime::time::sleep(check).await;
        if let Some(why) = activity.verdict(limits, Instant::now()) {
            return why;
        }
    }
}

/// The client stream, counting what it reads.
pub(super) struct Watched<T> {
    pub(super) inner: T,
    pub(super) activity: Rc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.activity.bytes.set(self.activity.bytes.get() + n);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
