//! The zero-copy path: socket → pipe → socket with non-blocking `splice(2)`, waiting on
//! readiness of the owning core's event loop only when the kernel says `EAGAIN`.
//!
//! Invariant per direction: the pipe is drained completely into the writer before the next
//! splice from the reader, so a `WouldBlock` from the reader can only mean "no data" (never
//! "pipe full"), and at end of stream no byte is left behind in the pipe.

use std::io;
use std::os::fd::AsFd;

use futures_util::future::try_join;

use super::{DirResult, Direction, Progress, is_reset};
use crate::net::TcpStream;
use crate::sys::{self, Pipe};

/// Pipe capacity per direction. The kernel default is 64 KiB (16 pages); 256 KiB lets one
/// splice carry a full TCP receive window's worth on loopback bulk, halving the syscalls per
/// byte, and costs nothing for idle connections (pipe pages are allocated as data arrives).
/// When the kernel refuses (pipe-max-size or the per-user pipe quota), the default stays.
const PIPE_CAPACITY: usize = 256 * 1024;

pub(super) async fn relay(a: &TcpStream, b: &TcpStream, progress: &Progress) -> DirResult {
    let ab = Pipe::new().map_err(|e| (Direction::AToB, e))?;
    let ba = Pipe::new().map_err(|e| (Direction::BToA, e))?;
    let cap_ab = ab.set_capacity(PIPE_CAPACITY).unwrap_or(64 * 1024);
    let cap_ba = ba.set_capacity(PIPE_CAPACITY).unwrap_or(64 * 1024);
    try_join(
        direction(a, b, &ab, cap_ab, Direction::AToB, progress),
        direction(b, a, &ba, cap_ba, Direction::BToA, progress),
    )
    .await
    .map(|_| ())
}

async fn direction(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    capacity: usize,
    dir: Direction,
    progress: &Progress,
) -> DirResult {
    let fail = |e: io::Error, reset_other: &TcpStream| {
        if is_reset(&e) {
            // Make our close of the other side a reset too.
            let _ = reset_other.set_zero_linger();
        }
        (dir, e)
    };
    loop {
        let mut in_pipe = match sys::splice(from.as_fd(), pipe.write.as_fd(), capacity) {
            Ok(0) => {
                // End of stream: pass the FIN on and let the other direction go on.
                to.shutdown_write().map_err(|e| (dir, e))?;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                from.read_ready().await.map_err(|e| (dir, e))?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(e, to)),
        };
        while in_pipe > 0 {
            match sys::splice(pipe.read.as_fd(), to.as_fd(), in_pipe) {
                Ok(n) => {
                    in_pipe -= n;
                    progress.add(dir, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    to.write_ready().await.map_err(|e| (dir, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(e, from)),
            }
        }
    }
}
