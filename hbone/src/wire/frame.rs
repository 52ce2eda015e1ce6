//! Raw HTTP/2 framing (RFC 9113 §4.1) for tools that must send what no HTTP/2 library
//! would: the scripted peers of the protocol tests, the hostile-peer suite and the bench's
//! fairness attacker. The proxy's own HTTP/2 is `h2`; nothing on its data path uses this.
//!
//! Encoding is total; [`RawFrame::split`] takes bytes a peer sent and never panics (a
//! header announcing more than the buffer holds is "not yet", not an error: callers bound
//! their buffers).

/// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const CANCEL: u32 = 0x8;
pub const CONNECT_ERROR: u32 = 0xa;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame header.
pub const HEADER_LEN: usize = 9;

/// Appends one frame to `buf`. `payload` must fit the 24-bit length (16 MiB).
pub fn encode(buf: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    debug_assert!(payload.len() < 1 << 24, "frame payload over 2^24 bytes");
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    buf.push(kind);
    buf.push(flags);
    buf.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    buf.extend_from_slice(payload);
}

/// A CONNECT request header block: HPACK "literal without indexing, indexed name"
/// (RFC 7541 §6.2.2) for `:method` (static index 2) and `:authority` (static index 1), no
/// Huffman. `authority` must be under 127 bytes (one-byte length prefix).
pub fn connect_block(authority: &str) -> Vec<u8> {
    debug_assert!(
        authority.len() < 127,
        "authority too long for a 7-bit length"
    );
    let mut block = vec![0x02, 7];
    block.extend_from_slice(b"CONNECT");
    block.push(0x01);
    block.push(authority.len() as u8);
    block.extend_from_slice(authority.as_bytes());
    block
}

/// One frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The first whole frame in `buf` and the bytes it used, or `None` when `buf` does not
    /// hold one yet.
    pub fn split(buf: &[u8]) -> Option<(RawFrame, usize)> {
        let header = buf.get(..HEADER_LEN)?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let payload = buf.get(HEADER_LEN..HEADER_LEN + len)?;
        let frame = RawFrame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload: payload.to_vec(),
        };
        Some((frame, HEADER_LEN + len))
    }

    /// The increment of a WINDOW_UPDATE (0 when the payload is short).
    pub fn window_increment(&self) -> u32 {
        self.u32_at(0) & 0x7fff_ffff
    }

    /// A GOAWAY's last stream id and error code.
    pub fn goaway(&self) -> (u32, u32) {
        (self.u32_at(0) & 0x7fff_ffff, self.u32_at(4))
    }

    /// An RST_STREAM's error code.
    pub fn rst_code(&self) -> u32 {
        self.u32_at(0)
    }

    fn u32_at(&self, at: usize) -> u32 {
        self.payload
            .get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_split_gives_the_frame_back() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            HEADERS,
            END_HEADERS,
            3,
            &connect_block("10.0.0.1:80"),
        );
        encode(&mut buf, GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0xb]);
        let (a, used) = RawFrame::split(&buf).unwrap();
        assert_eq!((a.kind, a.flags, a.stream), (HEADERS, END_HEADERS, 3));
        let (b, rest) = RawFrame::split(&buf[used..]).unwrap();
        assert_eq!(used + rest, buf.len());
        assert_eq!(b.goaway(), (3, ENHANCE_YOUR_CALM));
    }

    #[test]
    fn partial_frames_are_not_yet_and_short_payloads_read_as_zero() {
        let mut buf = Vec::new();
        encode(&mut buf, DATA, 0, 1, &[1; 100]);
        for cut in 0..buf.len() {
            assert!(RawFrame::split(&buf[..cut]).is_none());
        }
        let f = RawFrame::split(&[0, 0, 1, RST_STREAM, 0, 0, 0, 0, 1, 9])
            .unwrap()
            .0;
        assert_eq!(f.rst_code(), 0);
        assert_eq!(f.window_increment(), 0);
    }
}
