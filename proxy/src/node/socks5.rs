//! The SOCKS5 entry (RFC 1928): CONNECT with no authentication, for hosts where traffic is
//! not redirected (the demo, a developer's laptop). Only IP address targets are accepted:
//! the mesh routes by address, and resolving names is not a node proxy's job.
//!
//! The handshake is bounded: at most 2 + 255 bytes of greeting and 4 + 16 + 2 bytes of
//! request are read, each within the caller's timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use runtime::net::TcpStream;

/// Reply codes (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// A handshake that failed, with the reply already sent when there was one to send.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("SOCKS5: {0}")]
    Protocol(&'static str),
    #[error("SOCKS5: I/O: {0}")]
    Io(#[from] std::io::Error),
}

async fn read_exact(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let n = s.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(())
}

/// Reads the greeting and the CONNECT request; returns the target address. Replies with an
/// error itself for requests it refuses.
pub async fn accept(s: &TcpStream) -> Result<SocketAddr, Socks5Error> {
    let mut head = [0u8; 2];
    read_exact(s, &mut head).await?;
    if head[0] != 5 {
        return Err(Socks5Error::Protocol("not SOCKS version 5"));
    }
    let mut methods = vec![0u8; head[1] as usize];
    read_exact(s, &mut methods).await?;
    if !methods.contains(&0) {
        // "No acceptable methods".
        s.write_all(&[5, 0xff]).await?;
        return Err(Socks5Error::Protocol(
            "client offers no 'no authentication' method",
        ));
    }
    s.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    read_exact(s, &mut req).await?;
    if req[0] != 5 {
        return Err(Socks5Error::Protocol("bad request version"));
    }
    if req[1] != 1 {
        reply(s, Reply::CommandNotSupported, None).await?;
        return Err(Socks5Error::Protocol("only CONNECT is supported"));
    }
    let ip = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            read_exact(s, &mut a).await?;
            IpAddr::V4(Ipv4Addr::from(a))
        }
        4 => {
            let mut a = [0u8; 16];
            read_exact(s, &mut a).await?;
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => {
            reply(s, Reply::AddressTypeNotSupported, None).await?;
            return Err(Socks5Error::Protocol(
                "only IPv4 and IPv6 targets are supported",
            ));
        }
    };
    let mut port = [0u8; 2];
    read_exact(s, &mut port).await?;
    Ok(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

/// Sends the reply to a CONNECT; `bound` is our side's address when it succeeded.
pub async fn reply(s: &TcpStream, code: Reply, bound: Option<SocketAddr>) -> std::io::Result<()> {
    let bound = bound.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[5, code as u8, 0]);
    match bound.ip() {
        IpAddr::V4(v4) => {
            out.push(1);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(4);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    s.write_all(&out).await
}
