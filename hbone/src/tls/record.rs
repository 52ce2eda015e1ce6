//! The TLS 1.3 record layer HBONE runs after rustls has finished the handshake: one
//! direction's AEAD key and sequence number, sealing and opening records, no I/O.
//!
//! Why our own: rustls' buffered API copies every plaintext byte into a record buffer before
//! sealing it in place, and every opened record out of its receive buffer again
//! (docs/design-notes.md, "Bytes between two nodes"). Here a record is sealed straight from
//! the caller's slice into the buffer that goes to the socket (one pass: aws-lc's
//! `EVP_AEAD_CTX_seal_scatter` reads the plaintext and writes the ciphertext), and opened in
//! place in the buffer it was read into. The handshake, the key schedule and key updates stay
//! rustls' (`rustls::kernel`), so no secret is derived here.
//!
//! Invariants (RFC 8446 §5):
//! - every record this side writes is `application_data` (23) on the outside, version
//!   0x0303, its inner plaintext at most [`MAX_PLAINTEXT`] bytes followed by the real content
//!   type, and no padding; the 5-byte header is the AEAD's additional data;
//! - the nonce is the traffic IV XOR the record's 64-bit sequence number, which grows by one
//!   per record and restarts at 0 with a new key; a [`Direction`] never reuses one;
//! - a record is only accepted whole: at most [`MAX_CIPHERTEXT`] bytes of ciphertext, outer
//!   type 23, tag verified, padding stripped, a known inner content type and at most
//!   [`MAX_PLAINTEXT`] bytes of content. Anything else is an error naming the alert the
//!   connection ends with.

use std::ops::Range;

use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// Record header: content type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// AES-GCM's tag.
pub const TAG_LEN: usize = 16;
/// The most content one record carries (2^14, RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// The most ciphertext one record may carry (2^14 + 256, RFC 8446 §5.2).
pub const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// What a record adds around its content when we write it: header, inner type, tag.
pub const OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;
/// The largest record a peer may send, header included.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_CIPHERTEXT;

/// The content types that travel inside a TLS 1.3 record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    Alert = 21,
    Handshake = 22,
    ApplicationData = 23,
}

/// Alert descriptions this layer ends a connection with or reacts to (RFC 8446 §6).
pub mod alert {
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const RECORD_OVERFLOW: u8 = 22;
    pub const ILLEGAL_PARAMETER: u8 = 47;
    pub const DECODE_ERROR: u8 = 50;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const USER_CANCELED: u8 = 90;
}

/// A record the peer sent that ends the connection: what was wrong, and the alert to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub alert: u8,
    pub what: String,
}

impl RecordError {
    pub fn new(alert: u8, what: impl Into<String>) -> RecordError {
        RecordError {
            alert,
            what: what.into(),
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS record: {}", self.what)
    }
}

/// The whole length (header included) of the record whose header is `header`, checked
/// against the limits a TLS 1.3 peer must keep.
pub fn record_len(header: &[u8]) -> Result<usize, RecordError> {
    let [typ, _, _, hi, lo] = header[..HEADER_LEN] else {
        unreachable!("caller passes at least HEADER_LEN bytes")
    };
    // The legacy version is ignored (RFC 8446 §5.1: "MUST be ignored for all purposes").
    if typ != ContentType::ApplicationData as u8 {
        return Err(RecordError::new(
            alert::UNEXPECTED_MESSAGE,
            format!("unencrypted record of type {typ} after the handshake"),
        ));
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_CIPHERTEXT {
        return Err(RecordError::new(
            alert::RECORD_OVERFLOW,
            format!("record of {len} bytes, above the limit of {MAX_CIPHERTEXT}"),
        ));
    }
    if len < 1 + TAG_LEN {
        return Err(RecordError::new(
            alert::DECODE_ERROR,
            format!("record of {len} bytes cannot hold a content type and a tag"),
        ));
    }
    Ok(HEADER_LEN + len)
}

fn header(content_len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = u16::try_from(content_len + 1 + TAG_LEN)
        .expect("content is at most MAX_PLAINTEXT")
        .to_be_bytes();
    [ContentType::ApplicationData as u8, 0x03, 0x03, hi, lo]
}

/// One direction of a connection: its AEAD key, IV and next sequence number.
pub struct Direction {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the IV.
        f.debug_struct("Direction")
            .field("algorithm", self.key.algorithm())
            .field("seq", &self.seq)
            .finish()
    }
}

impl Direction {
    /// The direction rustls handed over: its traffic secret and the sequence number of its
    /// next record. Only the AES-GCM suites HBONE negotiates (`crate::tls::provider`).
    pub fn new(secrets: &ConnectionTrafficSecrets, seq: u64) -> Result<Direction, String> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            _ => return Err("negotiated cipher suite is not AES-GCM".into()),
        };
        let key = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| "traffic key of the wrong length".to_string())?;
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| "traffic IV of the wrong length".to_string())?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// Records sealed or opened with this key so far (the next sequence number).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn next_nonce(&mut self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        // Sequence numbers never wrap: a key is replaced long before 2^64 records
        // (`TlsStream` updates it at the suite's confidentiality limit).
        self.seq += 1;
        Nonce::assume_unique_for_key(n)
    }

    /// Seals `content` (at most [`MAX_PLAINTEXT`] bytes) of type `typ` into one whole record
    /// at the start of `out`, reading `content` once. Returns the record's length,
    /// `content.len() + OVERHEAD`.
    pub fn seal_to(&mut self, typ: ContentType, content: &[u8], out: &mut [u8]) -> usize {
        debug_assert!(content.len() <= MAX_PLAINTEXT);
        let n = content.len();
        let hdr = header(n);
        let (head, rest) = out[..n + OVERHEAD].split_at_mut(HEADER_LEN);
        head.copy_from_slice(&hdr);
        let (ct, extra) = rest.split_at_mut(n);
        let nonce = self.next_nonce();
        self.key
            .seal_out_of_place_scatter(nonce, Aad::from(hdr), content, ct, &[typ as u8], extra)
            .expect("buffer lengths are exact and the content is within the AEAD's limit");
        n + OVERHEAD
    }

    /// Seals a record built in place: `record` is `content_len + OVERHEAD` bytes whose
    /// content sits at `HEADER_LEN..HEADER_LEN + content_len`; header, content type and tag
    /// are written around it.
    pub fn seal_in_place(&mut self, typ: ContentType, record: &mut [u8], content_len: usize) {
        debug_assert!(content_len <= MAX_PLAINTEXT);
        debug_assert_eq!(record.len(), content_len + OVERHEAD);
        let hdr = header(content_len);
        record[..HEADER_LEN].copy_from_slice(&hdr);
        record[HEADER_LEN + content_len] = typ as u8;
        let (body, tag) = record[HEADER_LEN..].split_at_mut(content_len + 1);
        let nonce = self.next_nonce();
        let t = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(hdr), body)
            .expect("the content is within the AEAD's limit");
        tag.copy_from_slice(t.as_ref());
    }

    /// Opens the whole record `record` (header included, its length from [`record_len`]) in
    /// place. Returns its content type and where its content now lies in `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(ContentType, Range<usize>), RecordError> {
        let mut aad = [0u8; HEADER_LEN];
        aad.copy_from_slice(&record[..HEADER_LEN]);
        let body_len = record.len() - HEADER_LEN - TAG_LEN;
        let (body, tag) = record[HEADER_LEN..].split_at_mut(body_len);
        let nonce = self.next_nonce();
        self.key
            .open_in_place_separate_tag(nonce, Aad::from(aad), tag, body)
            .map_err(|_| RecordError::new(alert::BAD_RECORD_MAC, "record failed to decrypt"))?;
        // The content type is the last non-zero byte; zeros after it are padding.
        let Some(last) = body.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::new(
                alert::UNEXPECTED_MESSAGE,
                "record holds only padding, no content type",
            ));
        };
        let typ = match body[last] {
            21 => ContentType::Alert,
            22 => ContentType::Handshake,
            23 => ContentType::ApplicationData,
            other => {
                return Err(RecordError::new(
                    alert::UNEXPECTED_MESSAGE,
                    format!("record of unknown content type {other}"),
                ));
            }
        };
        if last > MAX_PLAINTEXT {
            return Err(RecordError::new(
                alert::RECORD_OVERFLOW,
                format!("record content of {last} bytes, above {MAX_PLAINTEXT}"),
            ));
        }
        if last == 0 && typ != ContentType::ApplicationData {
            return Err(RecordError::new(
                alert::UNEXPECTED_MESSAGE,
                format!("empty {typ:?} record"),
            ));
        }
        Ok((typ, HEADER_LEN..HEADER_LEN + last))
    }
}

/// The fuzz target's check (`fuzz/fuzz_targets/tls_record.rs`, replayed on stable by
/// `hbone/tests/wire_corpus.rs`): the first byte picks a mode, the rest is input.
/// - even: the bytes as a peer's record stream, opened with a fixed key: every record is
///   refused or opened without a panic, and an opened record's content lies inside it;
/// - odd: the bytes as inner plaintexts (content, type, padding) sealed with that key by a
///   peer that may break the rules, then opened: an accepted record gives back exactly the
///   content before its type byte.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    let secrets = || ConnectionTrafficSecrets::Aes128Gcm {
        key: rustls::crypto::cipher::AeadKey::from([0x42; 32]),
        iv: rustls::crypto::cipher::Iv::new([9; NONCE_LEN]),
    };
    let key = |s: &ConnectionTrafficSecrets| {
        // AES-128 takes the first 16 bytes of the fixed 32.
        let ConnectionTrafficSecrets::Aes128Gcm { key, iv } = s else {
            unreachable!()
        };
        Direction {
            key: LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key.as_ref()[..16]).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq: 0,
        }
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut rx = key(&secrets());
    if mode % 2 == 0 {
        let mut buf = rest.to_vec();
        let mut at = 0;
        while buf.len() - at >= HEADER_LEN {
            let Ok(len) = record_len(&buf[at..]) else {
                return;
            };
            if buf.len() - at < len {
                return;
            }
            if let Ok((_, range)) = rx.open(&mut buf[at..at + len]) {
                assert!(range.end <= len && range.start == HEADER_LEN);
            }
            at += len;
        }
        return;
    }
    let mut tx = key(&secrets());
    // Inner plaintexts separated by 0xFF; each is sealed as-is.
    for inner in rest.split(|&b| b == 0xFF).take(64) {
        let inner = &inner[..inner.len().min(MAX_PLAINTEXT + 64)];
        let n = u16::try_from(inner.len() + TAG_LEN).unwrap().to_be_bytes();
        let hdr = [23, 3, 3, n[0], n[1]];
        let mut rec = hdr.to_vec();
        rec.extend_from_slice(inner);
        let nonce = tx.next_nonce();
        let tag = tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(hdr), &mut rec[HEADER_LEN..])
            .unwrap();
        rec.extend_from_slice(tag.as_ref());
        match record_len(&rec) {
            Ok(len) => assert_eq!(len, rec.len()),
            Err(_) => {
                // Refused by length alone: the opener never sees it, so keep the sequence.
                rx.seq += 1;
                continue;
            }
        }
        if let Ok((typ, range)) = rx.open(&mut rec) {
            let last = inner.iter().rposition(|&b| b != 0).unwrap();
            assert_eq!(typ as u8, inner[last]);
            assert_eq!(&rec[range], &inner[..last]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn secrets(key_byte: u8) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([key_byte; 32]),
            iv: Iv::new([7; NONCE_LEN]),
        }
    }

    fn pair() -> (Direction, Direction) {
        (
            Direction::new(&secrets(1), 0).unwrap(),
            Direction::new(&secrets(1), 0).unwrap(),
        )
    }

    #[test]
    fn sealed_records_open_both_ways_and_carry_their_type() {
        let (mut tx, mut rx) = pair();
        let content: Vec<u8> = (0..MAX_PLAINTEXT).map(|i| i as u8).collect();
        for len in [0, 1, 9, 1000, MAX_PLAINTEXT] {
            let mut out = vec![0u8; len + OVERHEAD];
            assert_eq!(
                tx.seal_to(ContentType::ApplicationData, &content[..len], &mut out),
                len + OVERHEAD
            );
            assert_eq!(record_len(&out).unwrap(), out.len());
            let (typ, range) = rx.open(&mut out).unwrap();
            assert_eq!(typ, ContentType::ApplicationData);
            assert_eq!(&out[range], &content[..len]);

            let mut rec = vec![0u8; len + OVERHEAD];
            rec[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&content[..len]);
            tx.seal_in_place(ContentType::Handshake, &mut rec, len);
            if len == 0 {
                assert_eq!(
                    rx.open(&mut rec).unwrap_err().alert,
                    alert::UNEXPECTED_MESSAGE
                );
            } else {
                let (typ, range) = rx.open(&mut rec).unwrap();
                assert_eq!(typ, ContentType::Handshake);
                assert_eq!(&rec[range], &content[..len]);
            }
        }
        assert_eq!(tx.seq(), 10);
        assert_eq!(rx.seq(), 10);
    }

    #[test]
    fn both_seal_paths_give_the_same_bytes() {
        let (mut a, mut b) = pair();
        let content = b"the same record two ways";
        let mut out = vec![0u8; content.len() + OVERHEAD];
        a.seal_to(ContentType::ApplicationData, content, &mut out);
        let mut rec = vec![0u8; content.len() + OVERHEAD];
        rec[HEADER_LEN..HEADER_LEN + content.len()].copy_from_slice(content);
        b.seal_in_place(ContentType::ApplicationData, &mut rec, content.len());
        assert_eq!(out, rec);
    }

    #[test]
    fn a_changed_byte_a_replay_or_another_key_fails_as_bad_record_mac() {
        let (mut tx, mut rx) = pair();
        let mut rec = vec![0u8; 4 + OVERHEAD];
        tx.seal_to(ContentType::ApplicationData, b"data", &mut rec);
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 1;
            let mut fresh = Direction::new(&secrets(1), 0).unwrap();
            assert_eq!(
                fresh.open(&mut bad).unwrap_err().alert,
                alert::BAD_RECORD_MAC,
                "byte {i}"
            );
        }
        let mut copy = rec.clone();
        rx.open(&mut copy).unwrap();
        // The same record again: the sequence number moved on.
        let mut replay = rec.clone();
        assert_eq!(
            rx.open(&mut replay).unwrap_err().alert,
            alert::BAD_RECORD_MAC
        );
        let mut other = Direction::new(&secrets(2), 0).unwrap();
        assert_eq!(
            other.open(&mut rec).unwrap_err().alert,
            alert::BAD_RECORD_MAC
        );
    }

    #[test]
    fn headers_a_peer_must_not_send_are_refused() {
        assert_eq!(
            record_len(&[22, 3, 3, 0, 40]).unwrap_err().alert,
            alert::UNEXPECTED_MESSAGE
        );
        assert_eq!(
            record_len(&[20, 3, 3, 0, 1]).unwrap_err().alert,
            alert::UNEXPECTED_MESSAGE
        );
        let too_long = u16::try_from(MAX_CIPHERTEXT + 1).unwrap().to_be_bytes();
        assert_eq!(
            record_len(&[23, 3, 3, too_long[0], too_long[1]])
                .unwrap_err()
                .alert,
            alert::RECORD_OVERFLOW
        );
        assert_eq!(
            record_len(&[23, 3, 3, 0, 16]).unwrap_err().alert,
            alert::DECODE_ERROR
        );
        assert_eq!(record_len(&[23, 3, 1, 0, 17]).unwrap(), HEADER_LEN + 17);
    }

    /// Padding and content types are checked after the tag, with a record sealed by hand.
    #[test]
    fn padding_is_stripped_and_bad_inner_types_refused() {
        let (mut tx, mut rx) = pair();
        let seal_raw = |tx: &mut Direction, inner: &[u8]| {
            let mut rec = vec![0u8; inner.len() + HEADER_LEN + TAG_LEN];
            let hdr_len = u16::try_from(inner.len() + TAG_LEN).unwrap().to_be_bytes();
            let hdr = [23, 3, 3, hdr_len[0], hdr_len[1]];
            rec[..HEADER_LEN].copy_from_slice(&hdr);
            rec[HEADER_LEN..HEADER_LEN + inner.len()].copy_from_slice(inner);
            let (body, tag) = rec[HEADER_LEN..].split_at_mut(inner.len());
            let nonce = tx.next_nonce();
            let t = tx
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(hdr), body)
                .unwrap();
            tag.copy_from_slice(t.as_ref());
            rec
        };
        let mut rec = seal_raw(&mut tx, b"hi\x17\0\0\0");
        let (typ, range) = rx.open(&mut rec).unwrap();
        assert_eq!(
            (typ, &rec[range]),
            (ContentType::ApplicationData, &b"hi"[..])
        );
        let mut rec = seal_raw(&mut tx, b"\0\0\0");
        assert_eq!(
            rx.open(&mut rec).unwrap_err().alert,
            alert::UNEXPECTED_MESSAGE
        );
        let mut rec = seal_raw(&mut tx, b"x\x14");
        assert_eq!(
            rx.open(&mut rec).unwrap_err().alert,
            alert::UNEXPECTED_MESSAGE
        );
        let mut big = vec![1u8; MAX_PLAINTEXT + 1];
        big.push(23);
        let mut rec = seal_raw(&mut tx, &big);
        assert_eq!(rx.open(&mut rec).unwrap_err().alert, alert::RECORD_OVERFLOW);
    }
}
