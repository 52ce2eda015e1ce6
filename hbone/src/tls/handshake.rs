//! The mTLS handshake HBONE streams start with: rustls' unbuffered API over our own buffer,
//! then the hand-over of its secrets (`rustls::kernel`) to a [`TlsStream`].
//!
//! Owns: [`connect`] and [`accept`].
//!
//! Invariants:
//! - no application byte is read or written before the handshake is complete in both
//!   directions; what follows the peer's last handshake record stays in our buffer, in
//!   order, and records rustls opened with it are handed over as plaintext;
//! - at most [`HANDSHAKE_BUFFER_MAX`] bytes are buffered while a handshake is in flight;
//! - a failed handshake sends the alert rustls queued for it, once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError, UnbufferedStatus};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::stream::{Kernel, Session, TlsStream};
use crate::error::{Error, Result};

/// The most handshake bytes buffered while a handshake is in flight: a certificate chain of
/// a few KiB and the records around it; a peer that sends more is not doing a handshake.
pub const HANDSHAKE_BUFFER_MAX: usize = 64 * 1024;

/// One side of the unbuffered handshake, client or server.
trait Side {
    type Data;
    fn common(&self) -> &rustls::CommonState;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn into_kernel(self) -> std::result::Result<(rustls::ExtractedSecrets, Kernel), rustls::Error>;
}

impl Side for UnbufferedClientConnection {
    fn common(&self) -> &rustls::CommonState {
        self
    }
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn into_kernel(self) -> std::result::Result<(rustls::ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection()
            .map(|(s, k)| (s, Kernel::Client(k)))
    }
}

impl Side for UnbufferedServerConnection {
    fn common(&self) -> &rustls::CommonState {
        self
    }
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn into_kernel(self) -> std::result::Result<(rustls::ExtractedSecrets, Kernel), rustls::Error> {
        self.dangerous_into_kernel_connection()
            .map(|(s, k)| (s, Kernel::Server(k)))
    }
}

/// The client side of the handshake over `io`, then the stream. `config` must have
/// `enable_secret_extraction` set (every config `crate::tls` builds has).
pub async fn connect<T>(io: T, config: Arc<ClientConfig>) -> Result<TlsStream<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedClientConnection::new(config, super::server_name())?;
    handshake(io, conn).await
}

/// The server side of the handshake over `io`, then the stream. `config` must have
/// `enable_secret_extraction` set (every config `crate::tls` builds has).
pub async fn accept<T>(io: T, config: Arc<ServerConfig>) -> Result<TlsStream<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config)?;
    handshake(io, conn).await
}

async fn handshake<T, S>(mut io: T, mut conn: S) -> Result<TlsStream<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Side,
{
    let mut inb = BytesMut::with_capacity(4096);
    let mut out: Vec<u8> = Vec::new();
    let mut out_len = 0;
    // Application data that came with the peer's last flight, opened by rustls.
    let mut early = Vec::new();
    loop {
        enum Next {
            Again,
            Read,
            Transmit,
            Done,
        }
        let UnbufferedStatus { discard, state } = conn.process(&mut inb[..]);
        let next = match state {
            Err(e) => {
                inb.advance(discard);
                // An alert rustls queued for the failure goes out first (best effort).
                send_pending_alert(&mut io, &mut conn).await;
                return Err(Error::Tls(e));
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                loop {
                    match enc.encode(&mut out[out_len..]) {
                        Ok(n) => {
                            out_len += n;
                            break;
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => out.resize(out_len + required_size, 0),
                        Err(e) => {
                            return Err(Error::TlsConfig(format!(
                                "encoding a handshake record: {e}"
                            )));
                        }
                    }
                }
                Next::Again
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Next::Transmit
            }
            Ok(ConnectionState::BlockedHandshake) => Next::Read,
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                while let Some(rec) = r.next_record() {
                    early.extend_from_slice(rec.map_err(Error::Tls)?.payload);
                }
                Next::Again
            }
            // 0.5-RTT: the server may write, but the client's Finished has not arrived yet.
            Ok(ConnectionState::WriteTraffic(_)) => Next::Done,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS handshake: the peer closed the connection",
                )));
            }
            Ok(other) => {
                return Err(Error::TlsConfig(format!(
                    "TLS handshake: unexpected state {other:?}"
                )));
            }
        };
        inb.advance(discard);
        match next {
            Next::Again => {}
            Next::Transmit => {
                io.write_all(&out[..out_len]).await?;
                io.flush().await?;
                out_len = 0;
            }
            Next::Done if !conn.common().is_handshaking() => break,
            Next::Done | Next::Read => {
                if out_len > 0 {
                    io.write_all(&out[..out_len]).await?;
                    io.flush().await?;
                    out_len = 0;
                }
                if inb.len() >= HANDSHAKE_BUFFER_MAX {
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("TLS handshake: over {HANDSHAKE_BUFFER_MAX} bytes buffered"),
                    )));
                }
                inb.reserve(4096);
                let n = std::future::poll_fn(|cx| {
                    tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut inb)
                })
                .await?;
                if n == 0 {
                    return Err(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "TLS handshake: the peer closed the connection",
                    )));
                }
            }
        }
    }
    if out_len > 0 {
        io.write_all(&out[..out_len]).await?;
        io.flush().await?;
    }
    let session = Session {
        alpn: conn.common().alpn_protocol().map(<[u8]>::to_vec),
        peer_identity: super::peer_identity(conn.common()),
    };
    let (secrets, kernel) = conn.into_kernel()?;
    TlsStream::after_handshake(io, session, kernel, &secrets, inb, early)
}

/// Encodes and writes the alert rustls queued for a failed handshake, if it did; errors are
/// ignored (the handshake has failed already).
///
/// rustls is asked only while it holds queued records (`wants_write`), and with no input:
/// given input again it would process it again (the bytes that failed would queue a second
/// fatal alert), and with none while a handshake message is half-buffered it would look for
/// that message's bytes in an empty slice.
async fn send_pending_alert<T, S>(io: &mut T, conn: &mut S)
where
    T: AsyncWrite + Unpin,
    S: Side,
{
    let mut out = [0u8; 64];
    let mut len = 0;
    while conn.common().wants_write() {
        let UnbufferedStatus { state, .. } = conn.process(&mut []);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut enc)) => match enc.encode(&mut out[len..]) {
                Ok(n) => len += n,
                Err(_) => break,
            },
            _ => break,
        }
    }
    if len > 0 {
        let _ = io.write_all(&out[..len]).await;
        let _ = io.flush().await;
    }
}
