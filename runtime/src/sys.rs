//! The syscalls the runtime makes that no safe crate wraps: `pipe2`, `splice`, pipe sizing,
//! `recv` into uninitialised memory, `TCP_INFO`, the netfilter original-destination
//! socket options, and `setns(2)` into a network namespace.
//!
//! This module is the crate's only home for `unsafe`. Every call here works on file
//! descriptors that the caller borrows for the duration of the call (`BorrowedFd`), so no
//! call can outlive or double-close a descriptor; each `unsafe` block says which other
//! invariant it relies on.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A kernel pipe used as the in-kernel buffer between two sockets for `splice(2)`.
///
/// Both ends are non-blocking and close-on-exec. Invariant: `len` is the number of bytes
/// spliced in and not yet spliced out; the owner drains it before the pipe is dropped or
/// accepts that those bytes are lost with the connection.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) read: OwnedFd,
    pub(crate) write: OwnedFd,
}

impl Pipe {
    pub(crate) fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { read, write })
    }

    /// Asks the kernel for a pipe of `bytes` capacity; returns the capacity granted.
    /// An unprivileged process may be refused sizes above `/proc/sys/fs/pipe-max-size`, in
    /// which case the default (64 KiB) stays and the caller still works, just in smaller steps.
    pub(crate) fn set_capacity(&self, bytes: usize) -> io::Result<usize> {
        let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ takes an int argument and only acts on the open pipe fd we own.
        let rc = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

/// Non-blocking `splice(2)` of up to `len` bytes from `from` to `to`.
///
/// Returns `Ok(0)` at end of stream on `from`, `WouldBlock` when `from` has no data or `to`
/// has no room. One of the two descriptors must be a pipe (the kernel enforces it).
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: both descriptors are borrowed and so open for the whole call; null offsets
    // mean "use and advance the file position", which is the only valid choice for sockets
    // and pipes. No user memory is passed.
    let rc = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// Non-blocking `recv(2)` into the unfilled part of `buf`, without zeroing it first.
///
/// A socket read into a fresh buffer would otherwise pay a `memset` per byte
/// (`ReadBuf::initialize_unfilled`) for memory the kernel overwrites anyway: under bulk
/// HBONE traffic that memset was ~4 % of a node's CPU. Advances `buf` by the bytes received;
/// `Ok(0)` is end of stream (or a full `buf`).
pub(crate) fn recv_into(fd: BorrowedFd<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> io::Result<usize> {
    // SAFETY: the slice is only handed to the kernel, which writes into it and never reads
    // or de-initialises it, so `ReadBuf`'s initialised prefix stays initialised.
    let dst = unsafe { buf.unfilled_mut() };
    // SAFETY: the descriptor is borrowed, so open for the call; `dst` is valid for writes of
    // `dst.len()` bytes for the whole call and the kernel writes at most that many.
    let rc = unsafe { libc::recv(fd.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len(), 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = rc as usize;
    // SAFETY: recv(2) returned `n`, so it wrote the first `n` bytes of `dst`.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// The kernel's smallest round-trip time seen on a TCP socket (`TCP_INFO`'s `tcpi_min_rtt`,
/// a windowed minimum of the ACK timings): the path's delay without the application's
/// queues. `None` before the kernel has a sample.
pub(crate) fn tcp_min_rtt(fd: BorrowedFd<'_>) -> io::Result<Option<std::time::Duration>> {
    // SAFETY: `tcp_info` is plain old data (integers only), valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is borrowed, so open for the call; `info` and `len` are valid
    // for writes and `len` holds the size of `info`, which the kernel never exceeds (it
    // copies min(len, its own struct size) bytes and writes the copied length back).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // An older kernel may return a shorter struct without the field: treat as unknown.
    let end = std::mem::offset_of!(libc::tcp_info, tcpi_min_rtt) + 4;
    if (len as usize) < end || info.tcpi_min_rtt == 0 || info.tcpi_min_rtt == u32::MAX {
        return Ok(None);
    }
    Ok(Some(std::time::Duration::from_micros(u64::from(
        info.tcpi_min_rtt,
    ))))
}

// From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>; libc does not
// export them for every target.
const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination a connection had before an iptables REDIRECT/TPROXY-less NAT rewrote it.
///
/// `ipv6` selects the socket option family; the caller knows it from its local address.
pub(crate) fn original_dst(fd: BorrowedFd<'_>, ipv6: bool) -> io::Result<SocketAddr> {
    if ipv6 {
        // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are valid for writes and `len` holds the buffer's size,
        // so the kernel writes at most that many bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_IPV6,
                IP6T_SO_ORIGINAL_DST,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(addr.sin6_port),
            addr.sin6_flowinfo,
            addr.sin6_scope_id,
        )))
    } else {
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: as above: valid out-pointers and the true buffer length.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(addr.sin_port),
        )))
    }
}

/// Moves the calling thread into the network namespace `ns` (`setns(2)` with
/// `CLONE_NEWNET`). Sockets the thread creates afterwards belong to that namespace; sockets
/// it already holds keep theirs.
pub(crate) fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `ns` is a descriptor borrowed for the call; setns only reads it, and with
    // CLONE_NEWNET the kernel checks that it names a network namespace (EINVAL otherwise).
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn splice_moves_bytes_through_a_pipe() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let pipe = Pipe::new().unwrap();
        // Nothing to read yet: non-blocking splice must say so, not block.
        let err = splice(server.as_fd(), pipe.write.as_fd(), 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b"hello").unwrap();
        let mut n = 0;
        for _ in 0..1000 {
            match splice(server.as_fd(), pipe.write.as_fd(), 4096) {
                Ok(k) => {
                    n = k;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(n, 5);
        let mut out = [0u8; 8];
        let mut reader = std::fs::File::from(pipe.read.try_clone().unwrap());
        assert_eq!(reader.read(&mut out).unwrap(), 5);
        assert_eq!(&out[..5], b"hello");
    }

    #[test]
    fn original_dst_on_unredirected_socket_is_the_real_destination_or_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // Without conntrack the kernel answers ENOENT/ENOPROTOOPT; with conntrack loaded, an
        // unredirected connection's original destination is simply where it arrived.
        match original_dst(server.as_fd(), false) {
            Ok(addr) => assert_eq!(addr, server.local_addr().unwrap()),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }

    #[test]
    fn tcp_min_rtt_is_known_after_an_exchange_and_small_on_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        server.write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        let rtt = tcp_min_rtt(client.as_fd())
            .unwrap()
            .expect("an RTT after an exchange");
        assert!(rtt < std::time::Duration::from_millis(100), "{rtt:?}");
        // Not a TCP socket: the kernel refuses, it is not a zero RTT.
        let pipe = Pipe::new().unwrap();
        assert!(tcp_min_rtt(pipe.read.as_fd()).is_err());
    }

    #[test]
    fn recv_into_fills_uninitialised_memory_and_reports_end_of_stream() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"hello").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut mem = [std::mem::MaybeUninit::<u8>::uninit(); 16];
        let mut buf = tokio::io::ReadBuf::uninit(&mut mem);
        let mut total = 0;
        loop {
            let n = recv_into(server.as_fd(), &mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 5);
        assert_eq!(buf.filled(), b"hello");
    }
}
