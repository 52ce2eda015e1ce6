//! ZDS on the wire (AF_UNIX SOCK_SEQPACKET, one protobuf message per packet, SCM_RIGHTS)
//! and [`FakeCni`], istio-cni's node agent, which the node proxy connects to.
use super::*;

// ---------------------------------------------------------------------------------------
// ZDS packets: AF_UNIX SOCK_SEQPACKET, one packet = one protobuf message, SCM_RIGHTS.
// Written here rather than taken from the node's own code, so a bug there is not mirrored.
// ---------------------------------------------------------------------------------------

/// istio-cni's (and ztunnel's) read buffer: a longer packet is cut, and refused.
pub const ZDS_MAX_PACKET: usize = 1024;

/// How long istio-cni waits for each ack (`readWriteDeadline`).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Binds and listens on a ZDS socket at `path` (a stale file there is removed first).
pub fn zds_listen(path: &Path) -> io::Result<OwnedFd> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let sock = seqpacket()?;
    rustix::net::bind(&sock, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&sock, 16)?;
    Ok(sock)
}

/// Connects to a ZDS socket at `path` (what the node proxy does).
pub fn zds_connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = seqpacket()?;
    rustix::net::connect(&sock, &SocketAddrUnix::new(path)?)?;
    Ok(sock)
}

/// Sends `bytes` as one packet with `fds` as its SCM_RIGHTS descriptors (none if empty).
/// No size limit: hostile tests send oversized packets on purpose.
pub fn zds_send(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one test packet"));
    }
    rustix::net::sendmsg(
        fd,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Waits up to `timeout` for `fd` to be readable or hung up; `Ok(false)` on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: left.subsec_nanos().into(),
        };
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) if Instant::now() < deadline => {}
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one packet within `timeout` (`TimedOut` otherwise): its bytes and descriptors.
/// `None` when the peer closed the connection. A packet longer than [`ZDS_MAX_PACKET`] is
/// `InvalidData`, as istio-cni and ztunnel treat it.
pub fn zds_recv(
    fd: BorrowedFd<'_>,
    timeout: Duration,
) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    if !wait_readable(fd, timeout)? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no ZDS packet within {timeout:?}"),
        ));
    }
    let mut buf = vec![0u8; ZDS_MAX_PACKET];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if got
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "truncated ZDS packet",
        ));
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(got.bytes);
    Ok(Some((buf, fds)))
}

/// Whether the peer of `fd` is still there (nothing read: a pending packet stays queued).
fn peer_open(fd: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    match rustix::net::recv(fd, &mut byte[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((_, n)) => n > 0,
        Err(e) => e == rustix::io::Errno::AGAIN,
    }
}

// ---------------------------------------------------------------------------------------
// FakeCni: istio-cni's node agent, the ZDS server the node proxy connects to.
// ---------------------------------------------------------------------------------------

/// Plays istio-cni's node agent: listens on a ZDS socket in its own temporary directory,
/// accepts the node proxy's connection and hello, and sends it workloads one request at a
/// time, waiting for each ack (5 s) as istio-cni does. All methods take `&self`.
pub struct FakeCni {
    dir: tempfile::TempDir,
    path: PathBuf,
    listener: OwnedFd,
    state: Mutex<CniConn>,
}

#[derive(Default)]
struct CniConn {
    conn: Option<OwnedFd>,
    hello: Option<ZdsHello>,
    accepted: usize,
}

impl FakeCni {
    /// Listens at `<tempdir>/ztunnel.sock` (pass [`FakeCni::path`] as the node's
    /// `INPOD_UDS`).
    pub fn start() -> Result<FakeCni> {
        let dir = tempfile::Builder::new().prefix("ringmesh-cni-").tempdir()?;
        let path = dir.path().join("ztunnel.sock");
        let listener =
            zds_listen(&path).with_context(|| format!("listen on {}", path.display()))?;
        Ok(FakeCni {
            dir,
            path,
            listener,
            state: Mutex::default(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary directory holding the socket (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits up to `timeout` for the node proxy to connect and send its `ZdsHello`, which
    /// must say V1. Replaces (closes) any previous connection.
    pub fn accept(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        if !wait_readable(self.listener.as_fd(), timeout)? {
            bail!(
                "no ZDS connection at {} within {timeout:?}",
                self.path.display()
            );
        }
        let conn = rustix::net::accept_with(&self.listener, SocketFlags::CLOEXEC)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((bytes, fds)) = zds_recv(conn.as_fd(), left.max(Duration::from_millis(100)))
            .context("reading the node's ZdsHello")?
        else {
            bail!("the node closed its ZDS connection before its hello");
        };
        if !fds.is_empty() {
            bail!("the node's hello carried {} descriptors", fds.len());
        }
        let hello = ZdsHello::decode(&bytes[..]).context("decoding the node's ZdsHello")?;
        if hello.version != Version::V1 as i32 {
            bail!("the node's hello says version {}, not V1", hello.version);
        }
        let mut st = self.state.lock().unwrap();
        st.conn = Some(conn);
        st.hello = Some(hello);
        st.accepted += 1;
        Ok(())
    }

    /// The hello of the current connection.
    pub fn hello(&self) -> Option<ZdsHello> {
        self.state.lock().unwrap().hello
    }

    /// How many connections [`FakeCni::accept`] has taken so far.
    pub fn accepted(&self) -> usize {
        self.state.lock().unwrap().accepted
    }

    /// Whether a connection is held and the node has not closed it.
    pub fn connected(&self) -> bool {
        let st = self.state.lock().unwrap();
        st.conn.as_ref().is_some_and(|c| peer_open(c.as_fd()))
    }

    /// Waits until the node closes the current connection (e.g. after a NACKed read error).
    pub fn wait_closed(&self, timeout: Duration) -> Result<()> {
        crate::wait_for(timeout, "the node to close its ZDS connection", || {
            !self.connected()
        })
    }

    /// Checks that the node sends nothing unsolicited for `period` (istio-cni treats any
    /// unsolicited message as a protocol error) and keeps the connection open.
    pub fn quiet_for(&self, period: Duration) -> Result<()> {
        let st = self.state.lock().unwrap();
        let conn = st.conn.as_ref().context("no ZDS connection")?;
        if wait_readable(conn.as_fd(), period)? {
            if peer_open(conn.as_fd()) {
                bail!("the node sent an unsolicited ZDS message");
            }
            bail!("the node closed its ZDS connection");
        }
        Ok(())
    }

    /// Closes the current connection (as istio-cni restarting does); the node should
    /// reconnect, which [`FakeCni::accept`] then takes.
    pub fn restart(&self) {
        let mut st = self.state.lock().unwrap();
        st.conn = None;
        st.hello = None;
    }

    /// Sends `AddWorkload` for pod `uid` with the namespace at `netns` as its SCM_RIGHTS
    /// descriptor. Returns the ack's error text ("" = OK).
    pub fn add(
        &self,
        uid: &str,
        name: &str,
        namespace: &str,
        service_account: &str,
        netns: &Path,
    ) -> Result<String> {
        let file = File::open(netns).with_context(|| format!("open {}", netns.display()))?;
        let req = Payload::Add(AddWorkload {
            uid: uid.into(),
            workload_info: Some(WorkloadInfo {
                name: name.into(),
                namespace: namespace.into(),
                service_account: service_account.into(),
            }),
        });
        self.request(req, Some(file.as_fd()))
    }

    /// Sends `KeepWorkload` (only valid before the snapshot ends). Returns the ack's text.
    pub fn keep(&self, uid: &str) -> Result<String> {
        self.request(Payload::Keep(KeepWorkload { uid: uid.into() }), None)
    }

    /// Sends `DelWorkload`. Returns the ack's error text.
    pub fn del(&self, uid: &str) -> Result<String> {
        self.request(Payload::Del(DelWorkload { uid: uid.into() }), None)
    }

    /// Sends `SnapshotSent`. Returns the ack's error text.
    pub fn snapshot_sent(&self) -> Result<String> {
        self.request(Payload::SnapshotSent(SnapshotSent {}), None)
    }

    /// Sends `WorkloadRequest{payload}` with `fd` attached; returns the ack's error text.
    pub fn request(&self, payload: Payload, fd: Option<BorrowedFd<'_>>) -> Result<String> {
        let req = WorkloadRequest {
            payload: Some(payload),
        };
        self.send_raw(&req.encode_to_vec(), fd)
    }

    /// Sends arbitrary bytes as one packet (with `fd` attached) and returns the ack's error
    /// text; an error if the node closed the connection instead of acking, or sent no ack
    /// within 5 s.
    pub fn send_raw(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<String> {
        match fd {
            Some(fd) => self.send_raw_fds(bytes, &[fd]),
            None => self.send_raw_fds(bytes, &[]),
        }
    }

    /// [`FakeCni::send_raw`] with any number of descriptors (istio-cni never sends more
    /// than one).
    pub fn send_raw_fds(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<String> {
        let mut st = self.state.lock().unwrap();
        let conn = st
            .conn
            .as_ref()
            .context("no ZDS connection (call accept)")?;
        if let Err(e) = zds_send(conn.as_fd(), bytes, fds) {
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                st.conn = None;
                bail!("the node closed its ZDS connection (send: {e})");
            }
            return Err(e).context("sending a ZDS request");
        }
        let resp = match zds_recv(conn.as_fd(), ACK_TIMEOUT) {
            Ok(Some((bytes, fds))) => {
                if !fds.is_empty() {
                    bail!("the node's ack carried {} descriptors", fds.len());
                }
                WorkloadResponse::decode(&bytes[..]).context("decoding the node's ack")?
            }
            Ok(None) => {
                st.conn = None;
                bail!("the node closed its ZDS connection instead of acking");
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                st.conn = None;
                bail!("the node closed its ZDS connection instead of acking ({e})");
            }
            Err(e) => return Err(e).context("waiting for the node's ack"),
        };
        match resp.payload {
            Some(RespPayload::Ack(ack)) => Ok(ack.error),
            None => bail!("the node's WorkloadResponse has no payload"),
        }
    }
}
