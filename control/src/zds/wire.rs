//! ZDS packet I/O, shared by the node proxy's client and by anything that plays istio-cni's
//! node agent (tests, tools).
//!
//! Owns: the `AF_UNIX` `SOCK_SEQPACKET` sockets and the mapping between one packet and one
//! protobuf message plus its `SCM_RIGHTS` descriptors.
//! Invariants:
//! - One packet is one message, never more than [`MAX_MESSAGE_BYTES`]; nothing is
//!   length-prefixed. A packet the kernel had to cut (`MSG_TRUNC`, `MSG_CTRUNC`) is an
//!   `InvalidData` error, and any descriptors that did arrive with it are closed.
//! - Every descriptor this module creates or receives is close-on-exec and owned
//!   (`OwnedFd`): dropping a result never leaks one.
//! - Sends never raise `SIGPIPE` (`MSG_NOSIGNAL`); a closed peer is an `io::Error`.
//! - Blocking calls: callers poll for readiness first when they must stay responsive.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The largest packet either side reads: ztunnel's receive buffer and istio-cni's read
/// buffer are both 1024 bytes, so a longer packet would be cut at the peer.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Descriptors one receive makes room for. A well-formed packet carries at most one; room
/// for a few more lets "more than one" be told apart from "cut off", and the kernel closes
/// any beyond this (and flags `MSG_CTRUNC`).
const MAX_RECEIVED_FDS: usize = 4;

/// Listen backlog for agents and tests: one node proxy connects at a time (a restarting one
/// may briefly make two), so a small queue is plenty.
const LISTEN_BACKLOG: i32 = 16;

/// Encodes `msg` and sends it as one packet, with `pass` as its one `SCM_RIGHTS` descriptor.
pub fn send(
    fd: BorrowedFd<'_>,
    msg: &impl prost::Message,
    pass: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let bytes = msg.encode_to_vec();
    match pass {
        Some(pass) => send_packet(fd, &bytes, &[pass]),
        None => send_packet(fd, &bytes, &[]),
    }
}

/// Sends `bytes` as one packet with `fds` as its `SCM_RIGHTS` descriptors (none if empty).
/// [`send`] is the usual entry; this one also lets a test send malformed packets.
pub fn send_packet(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "ZDS message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte packet limit",
                bytes.len()
            ),
        ));
    }
    if fds.len() > MAX_RECEIVED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_RECEIVED_FDS} descriptors per ZDS packet"),
        ));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_RECEIVED_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("SCM_RIGHTS does not fit its buffer"));
    }
    let sent = rustix::net::sendmsg(
        fd,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != bytes.len() {
        // SOCK_SEQPACKET sends whole records or fails; a short count would be a kernel bug.
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

/// Receives one packet: its bytes and the descriptors that came with it (close-on-exec).
/// `None` when the peer has closed the connection.
pub fn recv(fd: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_RECEIVED_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    // Take ownership first, so an error below still closes whatever arrived.
    let fds = take_fds(&mut control);
    if got
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "received a truncated packet (longer than {MAX_MESSAGE_BYTES} bytes or more than \
                 {MAX_RECEIVED_FDS} descriptors)"
            ),
        ));
    }
    if got.bytes == 0 && fds.is_empty() {
        // SOCK_SEQPACKET: zero bytes is the peer's orderly shutdown. (An empty packet is
        // also zero bytes; ZDS never sends one, since every message it sends is non-empty
        // except an empty SnapshotSent, which is wrapped in a non-empty WorkloadRequest.)
        return Ok(None);
    }
    buf.truncate(got.bytes);
    Ok(Some((buf, fds)))
}

fn take_fds(control: &mut RecvAncillaryBuffer<'_>) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    fds
}

/// Connects to the agent's socket at `path` (blocking, close-on-exec).
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = seqpacket_socket()?;
    rustix::net::connect(&sock, &SocketAddrUnix::new(path)?)?;
    Ok(sock)
}

/// The agent's side: removes a stale socket file at `path`, binds and listens there.
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let sock = seqpacket_socket()?;
    rustix::net::bind(&sock, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&sock, LISTEN_BACKLOG)?;
    Ok(sock)
}

/// Accepts one connection on a socket from [`listen`] (blocking, close-on-exec).
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::net::accept_with(listener, SocketFlags::CLOEXEC)?)
}

/// Waits up to `timeout` for `fd` to be readable (or hung up). `Ok(false)` on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    let mut fds = [PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::zds::{Version, ZdsHello};
    use std::fs::File;
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn message_round_trips_with_a_descriptor() {
        let (a, b) = pair();
        let file = File::open("/proc/self/ns/net").unwrap();
        let hello = ZdsHello {
            version: Version::V1.into(),
        };
        send(a.as_fd(), &hello, Some(file.as_fd())).unwrap();
        let (bytes, fds) = recv(b.as_fd()).unwrap().unwrap();
        assert_eq!(
            <ZdsHello as prost::Message>::decode(&bytes[..]).unwrap(),
            hello
        );
        assert_eq!(fds.len(), 1);
        let (ours, theirs) = (
            rustix::fs::fstat(&file).unwrap(),
            rustix::fs::fstat(&fds[0]).unwrap(),
        );
        assert_eq!((ours.st_dev, ours.st_ino), (theirs.st_dev, theirs.st_ino));
    }

    #[test]
    fn oversized_send_is_refused_and_eof_is_none() {
        let (a, b) = pair();
        let err = send_packet(a.as_fd(), &[0; MAX_MESSAGE_BYTES + 1], &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        drop(a);
        assert!(recv(b.as_fd()).unwrap().is_none());
    }

    #[test]
    fn oversized_packet_is_invalid_data() {
        let (a, b) = pair();
        rustix::net::send(&a, &[7; MAX_MESSAGE_BYTES + 10], SendFlags::empty()).unwrap();
        let err = recv(b.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn wait_readable_times_out_then_sees_data() {
        let (a, b) = pair();
        let short = std::time::Duration::from_millis(10);
        assert!(!wait_readable(b.as_fd(), short).unwrap());
        send_packet(a.as_fd(), b"x", &[]).unwrap();
        assert!(wait_readable(b.as_fd(), short).unwrap());
    }
}
