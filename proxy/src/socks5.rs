//! The SOCKS5 entry (RFC 1928): CONNECT with no authentication, for hosts where traffic is
//! not redirected (the demo, a developer's laptop). Only IP address targets are accepted:
//! the mesh routes by address, and resolving names is not a node proxy's job.
//!
//! Two layers, as the HBONE wire types: [`parse_greeting`] and [`parse_request`] read bytes
//! with no I/O (fuzzed: `fuzz/fuzz_targets/socks5.rs`), and [`accept`] drives them over a
//! socket.
//!
//! Invariants: the handshake reads at most 2 + 255 bytes of greeting and 4 + 16 + 2 bytes of
//! request, into a fixed buffer, within the caller's deadline; every refusal the protocol can
//! express gets its reply before the socket closes.

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

/// A handshake that failed; `reply` is what the client was told (if anything could be).
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("SOCKS5: {what}")]
    Protocol {
        what: &'static str,
        /// The reply owed to the client, if the protocol has one for this.
        reply: Option<Reply>,
    },
    #[error("SOCKS5: I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn refuse(what: &'static str, reply: Option<Reply>) -> Socks5Error {
    Socks5Error::Protocol { what, reply }
}

/// The greeting's largest size: version, method count, 255 methods.
pub const MAX_GREETING: usize = 2 + 255;
/// The request's largest size we accept: header, IPv6 address, port.
pub const MAX_REQUEST: usize = 4 + 16 + 2;

/// Parses a greeting from the start of `buf`. `Ok(None)`: more bytes needed. `Ok(Some(n))`:
/// the greeting is `n` bytes and offers "no authentication".
pub fn parse_greeting(buf: &[u8]) -> Result<Option<usize>, Socks5Error> {
    let [version, count, ..] = *buf else {
        return Ok(None);
    };
    if version != 5 {
        return Err(refuse("not SOCKS version 5", None));
    }
    let len = 2 + count as usize;
    let Some(methods) = buf.get(2..len) else {
        return Ok(None);
    };
    if !methods.contains(&0) {
        return Err(refuse("client offers no 'no authentication' method", None));
    }
    Ok(Some(len))
}

/// Parses a CONNECT request from the start of `buf`. `Ok(None)`: more bytes needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<(SocketAddr, usize)>, Socks5Error> {
    let [version, command, _reserved, atyp, ..] = *buf else {
        return Ok(None);
    };
    if version != 5 {
        return Err(refuse("bad request version", None));
    }
    if command != 1 {
        return Err(refuse(
            "only CONNECT is supported",
            Some(Reply::CommandNotSupported),
        ));
    }
    let addr_len = match atyp {
        1 => 4,
        4 => 16,
        _ => {
            return Err(refuse(
                "only IPv4 and IPv6 targets are supported",
                Some(Reply::AddressTypeNotSupported),
            ));
        }
    };
    let len = 4 + addr_len + 2;
    let Some(rest) = buf.get(4..len) else {
        return Ok(None);
    };
    let (addr, port) = rest.split_at(addr_len);
    let ip = match addr_len {
        4 => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(addr).unwrap_or_default(),
        )),
        _ => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(addr).unwrap_or_default(),
        )),
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    Ok(Some((SocketAddr::new(ip, port), len)))
}

/// Encodes a reply; `bound` is our side's address when the CONNECT succeeded.
pub fn encode_reply(code: Reply, bound: Option<SocketAddr>) -> Vec<u8> {
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
    out
}

/// Reads from `s` into `buf[*filled..]` until `parse` has an answer.
async fn read_until<T>(
    s: &TcpStream,
    buf: &mut [u8],
    filled: &mut usize,
    parse: impl Fn(&[u8]) -> Result<Option<T>, Socks5Error>,
) -> Result<T, Socks5Error> {
    loop {
        if let Some(v) = parse(&buf[..*filled])? {
            return Ok(v);
        }
        if *filled == buf.len() {
            return Err(refuse("message too long", None));
        }
        let n = s.read(&mut buf[*filled..]).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        *filled += n;
    }
}

/// Reads the greeting and the CONNECT request; returns the target. Replies itself to what it
/// refuses (no acceptable method, a command or address type it does not support).
pub async fn accept(s: &TcpStream) -> Result<SocketAddr, Socks5Error> {
    let mut buf = [0u8; MAX_GREETING];
    let mut filled = 0;
    let greeting = match read_until(s, &mut buf, &mut filled, parse_greeting).await {
        Ok(n) => n,
        Err(e) => {
            if matches!(&e, Socks5Error::Protocol { what, .. } if what.contains("no authentication"))
            {
                // "No acceptable methods" (RFC 1928 §3).
                s.write_all(&[5, 0xff]).await?;
            }
            return Err(e);
        }
    };
    s.write_all(&[5, 0]).await?;
    // A client may send its request right behind its greeting.
    let mut req = [0u8; MAX_REQUEST];
    let mut req_filled = (filled - greeting).min(MAX_REQUEST);
    req[..req_filled].copy_from_slice(&buf[greeting..greeting + req_filled]);
    match read_until(s, &mut req, &mut req_filled, parse_request).await {
        Ok((addr, _)) => Ok(addr),
        Err(e) => {
            if let Socks5Error::Protocol {
                reply: Some(code), ..
            } = &e
            {
                reply(s, *code, None).await?;
            }
            Err(e)
        }
    }
}

/// Sends the reply to a CONNECT; `bound` is our side's address when it succeeded.
pub async fn reply(s: &TcpStream, code: Reply, bound: Option<SocketAddr>) -> std::io::Result<()> {
    s.write_all(&encode_reply(code, bound)).await
}

/// Runs both parsers on arbitrary bytes and checks what they promise (the fuzz target and its
/// corpus test call this): no panic, and a parse that succeeds consumed no more than it was
/// given.
pub fn fuzz_check(data: &[u8]) {
    if let Ok(Some(n)) = parse_greeting(data) {
        assert!(n <= data.len() && n <= MAX_GREETING);
    }
    if let Ok(Some((addr, n))) = parse_request(data) {
        assert!(n <= data.len() && n <= MAX_REQUEST);
        let reply = encode_reply(Reply::Succeeded, Some(addr));
        assert!(reply.len() <= MAX_REQUEST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_and_requests_parse_in_pieces_and_refuse_with_the_right_reply() {
        let greeting = [5, 2, 2, 0];
        for cut in 0..greeting.len() {
            assert!(parse_greeting(&greeting[..cut]).unwrap().is_none());
        }
        assert_eq!(parse_greeting(&greeting).unwrap(), Some(4));
        assert!(parse_greeting(&[4, 1, 0]).is_err());
        assert!(parse_greeting(&[5, 1, 2]).is_err(), "user/pass only");

        let req = [5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];
        for cut in 0..req.len() {
            assert!(parse_request(&req[..cut]).unwrap().is_none());
        }
        assert_eq!(
            parse_request(&req).unwrap(),
            Some(("127.0.0.1:8080".parse().unwrap(), 10))
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 80]);
        assert_eq!(
            parse_request(&v6).unwrap(),
            Some(("[::1]:80".parse().unwrap(), 22))
        );
        let bind = parse_request(&[5, 2, 0, 1]).unwrap_err();
        assert!(matches!(
            bind,
            Socks5Error::Protocol {
                reply: Some(Reply::CommandNotSupported),
                ..
            }
        ));
        let name = parse_request(&[5, 1, 0, 3, 7]).unwrap_err();
        assert!(matches!(
            name,
            Socks5Error::Protocol {
                reply: Some(Reply::AddressTypeNotSupported),
                ..
            }
        ));
        assert_eq!(
            encode_reply(Reply::NotAllowed, None),
            [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        fuzz_check(&[5, 255]);
        fuzz_check(&[]);
    }
}
