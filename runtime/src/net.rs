//! TCP sockets driven by readiness on the owning core's event loop.
//!
//! Every socket here is non-blocking. A read or write is first tried as a plain syscall;
//! only when the kernel answers `EAGAIN` does the task wait for readiness, which compio's
//! `PollFd` turns into a one-shot `POLL_ADD` on io_uring or an epoll registration on the
//! polling driver. This is the shape rustls and h2 want (poll-style `AsyncRead`/`AsyncWrite`)
//! without the extra copy a completion-to-poll adapter costs (DESIGN.md, "Runtime choice").
//!
//! Invariants:
//! - a readiness wait that is dropped consumes no bytes: the data stays in the kernel until
//!   a later syscall reads it, so these streams may be used under `select!` and timeouts;
//! - the file descriptor is closed when the last owner drops, after any in-flight readiness
//!   operation has been cancelled and completed (compio's `SharedFd` keeps it alive until then).

use std::cell::Cell;
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use compio::runtime::fd::PollFd;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Listen backlog for every listener. A node proxy absorbs connection bursts from every pod
/// on the node; 4096 matches the default `net.core.somaxconn` of current kernels (the kernel
/// caps it there anyway).
const LISTEN_BACKLOG: i32 = 4096;

/// Where a socket is made: the network namespace (`None`: the calling thread's) and the
/// packet mark (`SO_MARK`) it carries. In in-pod mode a pod's sockets are made in its
/// namespace with the mark istio-cni's rules exempt from capture, so the node's own
/// connections are not redirected back to it. Equal placements make interchangeable
/// sockets (a connection pool may key on it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Placement {
    pub netns: Option<std::sync::Arc<crate::netns::Netns>>,
    pub mark: Option<u32>,
}

impl Placement {
    /// A TCP socket for `addr`'s family, made here.
    fn socket(&self, addr: SocketAddr) -> io::Result<Socket> {
        self.socket_of(addr, Type::STREAM, Protocol::TCP)
    }

    /// A socket of `kind` for `addr`'s family, made here.
    fn socket_of(&self, addr: SocketAddr, kind: Type, proto: Protocol) -> io::Result<Socket> {
        let make = || Socket::new(Domain::for_address(addr), kind, Some(proto));
        let socket = match &self.netns {
            Some(ns) => ns.run(make)??,
            None => make()?,
        };
        if let Some(mark) = self.mark {
            socket
                .set_mark(mark)
                .map_err(|e| io::Error::new(e.kind(), format!("SO_MARK {mark:#x}: {e}")))?;
        }
        Ok(socket)
    }
}

/// A listening socket bound with `SO_REUSEPORT`, so that each core binds its own socket to
/// the same address and the kernel spreads new connections over the cores.
#[derive(Debug)]
pub struct TcpListener {
    inner: PollFd<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`. Call it on a worker thread.
    /// The kernel picks the listener of each new connection by hashing its addresses.
    ///
    /// Errors name the address: "address in use" and "permission denied" abort start-up.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        Self::bind_on_core(addr, None)
    }

    /// Like [`bind`](Self::bind), and with `Some(core)` (the calling worker's pinned core)
    /// the listener also takes `SO_INCOMING_CPU = core`: among the group's listeners the
    /// kernel then hands a new connection to the one whose core processed its SYN, and
    /// falls back to the hash when no listener claims that core. For a connection from a
    /// process on this host (a captured pod, loopback) that core is the one the connecting
    /// thread ran on, so the connection stays on the core — and the cache — of its sender,
    /// and the proxy wakes the sender without a cross-core interrupt.
    pub fn bind_on_core(addr: SocketAddr, core: Option<usize>) -> io::Result<TcpListener> {
        Self::bind_placed(&Placement::default(), addr, core)
    }

    /// [`bind_on_core`](Self::bind_on_core) with the socket made where `place` says (a pod's
    /// network namespace, a packet mark).
    pub fn bind_placed(
        place: &Placement,
        addr: SocketAddr,
        core: Option<usize>,
    ) -> io::Result<TcpListener> {
        let socket = place.socket(addr)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        if let Some(core) = core {
            socket.set_cpu_affinity(core).map_err(|e| {
                io::Error::new(e.kind(), format!("SO_INCOMING_CPU {core} on {addr}: {e}"))
            })?;
        }
        socket
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        socket
            .listen(LISTEN_BACKLOG)
            .map_err(|e| io::Error::new(e.kind(), format!("listen {addr}: {e}")))?;
        Self::from_std(socket.into())
    }

    /// Wraps a listening std socket (set non-blocking here).
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener {
            inner: PollFd::new(listener)?,
        })
    }

    /// Accepts one connection; the returned stream is non-blocking with `TCP_NODELAY` set
    /// (a proxy forwards what it gets at once; batching is the endpoints' business).
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = poll_fn(|cx| {
            // An accept loop under a connection flood yields like any other busy task.
            std::task::ready!(crate::coop::poll_proceed(cx));
            let r = std::task::ready!(self.inner.poll_accept_with(cx, |l| l.accept()));
            crate::coop::spend();
            Poll::Ready(r)
        })
        .await?;
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok((TcpStream::from_nonblocking(stream)?, peer))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Fails with `AddrInUse` when some socket already listens on `addr` (this process's
/// included), by binding it once without `SO_REUSEPORT`, then closing.
///
/// [`TcpListener::bind`] joins any `SO_REUSEPORT` group of the same user on the address, so
/// it cannot tell "another process serves this" from "my other cores bound it": call this
/// before the first core binds. `SO_REUSEADDR` is set, so connections of an earlier process
/// still in TIME_WAIT do not count.
pub fn probe_unserved(addr: SocketAddr) -> io::Result<()> {
    probe_unserved_placed(&Placement::default(), addr)
}

/// [`probe_unserved`] for an address in the namespace `place` names.
pub fn probe_unserved_placed(place: &Placement, addr: SocketAddr) -> io::Result<()> {
    let socket = place.socket(addr)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())
}

/// Whether `ip` is an address of this network namespace (so a connection to it reaches a
/// local socket): binding a datagram socket to it succeeds only then. One syscall pair;
/// callers use it only for ports the node itself listens on.
pub fn is_local_ip(ip: std::net::IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    let addr = SocketAddr::new(ip, 0);
    Socket::new(Domain::for_address(addr), Type::DGRAM, None)
        .and_then(|s| s.bind(&addr.into()))
        .is_ok()
}

impl AsFd for TcpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

/// A connected, non-blocking TCP socket with readiness-driven async I/O.
///
/// `&TcpStream` reads and writes too, so the two directions of a relay can run at once on
/// one socket (read and write readiness are tracked separately).
#[derive(Debug)]
pub struct TcpStream {
    inner: PollFd<std::net::TcpStream>,
    /// Set after a read hit EAGAIN or came back short (the socket drained); cleared when the
    /// kernel reports readability. While set,
    /// a poll does not try the syscall again: the readiness wait still in flight says the
    /// socket has nothing (rustls and h2 poll their socket on every wake-up, most of which
    /// are not about it, and each would otherwise cost a failing `recv`).
    read_parked: Cell<bool>,
    /// The same for writes.
    write_parked: Cell<bool>,
    /// Whether a short read parks too (io_uring only; see `park_if_drained`).
    park_on_short_read: bool,
}

impl TcpStream {
    /// Connects to `addr` without blocking the core.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        Self::connect_from(None, addr).await
    }

    /// Connects to `addr`, first binding the local side to `local` when given (a proxy may
    /// keep the original source address, or pin traffic to a workload IP).
    pub async fn connect_from(
        local: Option<SocketAddr>,
        addr: SocketAddr,
    ) -> io::Result<TcpStream> {
        Self::connect_placed(&Placement::default(), local, addr).await
    }

    /// [`connect_from`](Self::connect_from) with the socket made where `place` says: from
    /// inside a pod's network namespace the peer sees the pod's address.
    pub async fn connect_placed(
        place: &Placement,
        local: Option<SocketAddr>,
        addr: SocketAddr,
    ) -> io::Result<TcpStream> {
        let socket = place.socket(addr)?;
        Self::connect_socket(socket, local, addr).await
    }

    /// Connects to `addr` from `source`, an address of another host (the original client),
    /// with `IP_TRANSPARENT` (needs `CAP_NET_ADMIN`): the peer sees the client's address.
    /// Replies reach this socket only if the namespace routes them back locally, as
    /// istio-cni's in-pod rules do for packets of marked connections. When the kernel
    /// refuses transparency, it connects from the namespace's own address instead and says
    /// so in the second value (`false`).
    pub async fn connect_transparent(
        place: &Placement,
        source: std::net::IpAddr,
        addr: SocketAddr,
    ) -> io::Result<(TcpStream, bool)> {
        let socket = place.socket(addr)?;
        let transparent = if addr.is_ipv4() {
            socket.set_ip_transparent_v4(true)
        } else {
            socket.set_ip_transparent_v6(true)
        };
        match transparent {
            Ok(()) => {
                let local = SocketAddr::new(source, 0);
                Ok((Self::connect_socket(socket, Some(local), addr).await?, true))
            }
            Err(_) => Ok((Self::connect_socket(socket, None, addr).await?, false)),
        }
    }

    async fn connect_socket(
        socket: Socket,
        local: Option<SocketAddr>,
        addr: SocketAddr,
    ) -> io::Result<TcpStream> {
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(local) = local {
            socket.bind(&local.into())?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let stream = TcpStream::from_nonblocking(socket.into())?;
        stream.inner.connect_ready().await?;
        if let Some(err) = stream.inner.take_error()? {
            return Err(err);
        }
        // A readiness report without an error still has to be a connected socket.
        stream.peer_addr()?;
        Ok(stream)
    }

    /// Wraps a connected std socket; it is switched to non-blocking mode.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        Self::from_nonblocking(stream)
    }

    fn from_nonblocking(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        // Parking after a short read pays on io_uring, where the readiness wait is a
        // POLL_ADD that rides along with the ring's next enter; on epoll it is an
        // `epoll_ctl` and a wait, dearer than the `recv` it saves (see `park_if_drained`).
        let park_on_short_read =
            compio::runtime::Runtime::try_with_current(|rt| rt.driver_type().is_iouring())
                .unwrap_or(false);
        Ok(TcpStream {
            inner: PollFd::new(stream)?,
            park_on_short_read,
            read_parked: Cell::new(false),
            write_parked: Cell::new(false),
        })
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.set_nodelay(on)
    }

    /// Sends FIN: the peer reads end of stream, and our read side stays open.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self.inner.shutdown(std::net::Shutdown::Write) {
            // Already shut or reset by the peer: the write side is closed either way.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        }
    }

    /// A handle that reads this connection's round-trip time from the kernel after the
    /// stream has been handed to a TLS and HTTP/2 stack (see [`RttProbe`]).
    pub fn rtt_probe(&self) -> io::Result<RttProbe> {
        Ok(RttProbe {
            fd: self.inner.as_fd().try_clone_to_owned()?,
        })
    }

    /// Makes the close that follows send RST instead of FIN (used to propagate a reset).
    pub fn set_zero_linger(&self) -> io::Result<()> {
        SockRef::from(&*self.inner).set_linger(Some(Duration::ZERO))
    }

    /// Sets the kernel's send and receive buffer sizes (bulk paths), ignoring refusals.
    pub fn set_buffer_sizes(&self, bytes: usize) {
        let sock = SockRef::from(&*self.inner);
        let _ = sock.set_send_buffer_size(bytes);
        let _ = sock.set_recv_buffer_size(bytes);
    }

    /// The destination before iptables redirected this connection to us.
    pub fn original_dst(&self) -> io::Result<SocketAddr> {
        let ipv6 = self.local_addr()?.is_ipv6();
        crate::sys::original_dst(self.as_fd(), ipv6)
    }

    /// Reads into `buf`; `Ok(0)` is end of stream.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read_buf(cx, buf)).await
    }

    /// Writes some of `buf`.
    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_write_buf(cx, buf)).await
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    pub fn poll_read_buf(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let want = buf.len();
        let n = std::task::ready!(self.poll_io(cx, &self.read_parked, true, |mut s| s.read(buf)))?;
        self.park_if_drained(n, want);
        Poll::Ready(Ok(n))
    }

    /// A read that returned less than it could take drained the socket: on io_uring the
    /// next read waits for readiness instead of trying a `recv` that would almost always
    /// fail with EAGAIN (a syscall saved per wake-up on request/response traffic; a read
    /// that fills the buffer, as under bulk backlog, tries again at once). On epoll the
    /// wait costs more than the failing `recv`, and the socket tries again as before
    /// (docs/design-notes.md, "Park after a short read, on io_uring only").
    fn park_if_drained(&self, got: usize, wanted: usize) {
        if self.park_on_short_read && got > 0 && got < wanted {
            self.read_parked.set(true);
        }
    }

    pub fn poll_write_buf(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_io(cx, &self.write_parked, false, |mut s| s.write(buf))
    }

    /// Tries `op` unless an earlier EAGAIN is still unanswered by the kernel; on EAGAIN,
    /// parks on readiness (see `read_parked`). An operation that completes spends one unit
    /// of the task's budget, and a spent budget yields before trying (`crate::coop`).
    fn poll_io<R>(
        &self,
        cx: &mut Context<'_>,
        parked: &Cell<bool>,
        read: bool,
        mut op: impl FnMut(&std::net::TcpStream) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        let ready = |cx: &mut Context<'_>| {
            if read {
                self.inner.poll_read_ready(cx)
            } else {
                self.inner.poll_write_ready(cx)
            }
        };
        std::task::ready!(crate::coop::poll_proceed(cx));
        loop {
            if parked.get() {
                // Pending without a syscall while the readiness wait is in flight.
                std::task::ready!(ready(cx))?;
                parked.set(false);
            }
            match op(&self.inner) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => parked.set(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => {
                    crate::coop::spend();
                    return Poll::Ready(other);
                }
            }
        }
    }

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }

    /// Ready when a read is worth a syscall: at once, unless the last read hit EAGAIN and
    /// the kernel has not reported readability since (then it waits for that report, with no
    /// syscall). Lets a caller hold a read buffer only once bytes may be there, without
    /// paying a readiness round trip on a socket that is known to be busy.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.read_parked.get() {
            std::task::ready!(self.inner.poll_read_ready(cx))?;
            self.read_parked.set(false);
        }
        Poll::Ready(Ok(()))
    }

    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_write_ready(cx)
    }

    pub(crate) async fn read_ready(&self) -> io::Result<()> {
        self.inner.read_ready().await
    }

    pub(crate) async fn write_ready(&self) -> io::Result<()> {
        self.inner.write_ready().await
    }

    /// Hands the socket to compio's completion-based stream (the buffered relay path).
    pub fn into_compio(self) -> io::Result<compio::net::TcpStream> {
        let shared = compio::buf::IntoInner::into_inner(self.inner);
        let std = shared
            .try_unwrap()
            .map_err(|_| io::Error::other("socket still has an operation in flight"))?;
        // compio wants a blocking socket on io_uring (the ring arms its own poll) and a
        // non-blocking one on the polling driver; `from_std` sets the latter.
        std.set_nonblocking(false)?;
        compio::net::TcpStream::from_std(std)
    }
}

/// Reads a TCP connection's smallest round-trip time (`TCP_INFO`) from a duplicate of its
/// descriptor, for code that no longer owns the stream (an HTTP/2 driver tuning its windows).
///
/// Invariant: the duplicate keeps the socket open, so the probe must be dropped together
/// with the stream it came from (a close on the stream alone sends no FIN while a probe
/// lives), and it must not outlive it for long.
#[derive(Debug)]
pub struct RttProbe {
    fd: std::os::fd::OwnedFd,
}

impl RttProbe {
    /// The smallest round trip the kernel has seen on this connection; `None` before its
    /// first sample or if the socket cannot say.
    pub fn min_rtt(&self) -> Option<Duration> {
        crate::sys::tcp_min_rtt(self.fd.as_fd()).ok().flatten()
    }
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl tokio::io::AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Straight into the caller's (possibly uninitialised) memory: no memset first.
        let (want, before) = (buf.remaining(), buf.filled().len());
        std::task::ready!(self.poll_io(cx, &self.read_parked, true, |s| {
            crate::sys::recv_into(s.as_fd(), buf)
        }))?;
        self.park_if_drained(buf.filled().len() - before, want);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_buf(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(crate::coop::poll_proceed(cx));
        let r = std::task::ready!(
            self.inner
                .poll_write_with(cx, |mut s| s.write_vectored(bufs))
        );
        crate::coop::spend();
        Poll::Ready(r)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the kernel; there is nothing buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

/// A UDP socket driven by readiness on the owning core's event loop (the DNS proxy's).
/// Every core binds its own with `SO_REUSEPORT`, as for TCP listeners.
#[derive(Debug)]
pub struct UdpSocket {
    inner: PollFd<std::net::UdpSocket>,
}

impl UdpSocket {
    /// Binds `addr` (with `SO_REUSEADDR` and `SO_REUSEPORT`) where `place` says.
    pub fn bind_placed(place: &Placement, addr: SocketAddr) -> io::Result<UdpSocket> {
        let socket = place.socket_of(addr, Type::DGRAM, Protocol::UDP)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        socket
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind udp {addr}: {e}")))?;
        let std: std::net::UdpSocket = socket.into();
        Ok(UdpSocket {
            inner: PollFd::new(std)?,
        })
    }

    /// An unbound socket for talking to `peer` (an upstream resolver), made where `place`
    /// says and connected to it.
    pub fn connect_placed(place: &Placement, peer: SocketAddr) -> io::Result<UdpSocket> {
        let socket = place.socket_of(peer, Type::DGRAM, Protocol::UDP)?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        socket.connect(&peer.into())?;
        let std: std::net::UdpSocket = socket.into();
        Ok(UdpSocket {
            inner: PollFd::new(std)?,
        })
    }

    /// Receives one datagram (truncated to `buf`) and its sender. Spends the task's budget
    /// like every other operation here ([`crate::coop`]): a socket that always has a
    /// datagram waiting does not keep its core from the other tasks.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| {
            std::task::ready!(crate::coop::poll_proceed(cx));
            let r = std::task::ready!(self.inner.poll_read_with(cx, |s| s.recv_from(buf)));
            crate::coop::spend();
            Poll::Ready(r)
        })
        .await
    }

    /// Receives one datagram from the connected peer.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.inner.read_ready().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Sends one datagram to `to`.
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        loop {
            match self.inner.send_to(buf, to) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.inner.write_ready().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Sends one datagram to the connected peer.
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.inner.send(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.inner.write_ready().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
