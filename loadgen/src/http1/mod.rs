//! Minimal HTTP/1.1 framing for the load generator: a bounded, incremental message reader
//! (responses for the client, requests for the `serve --mode http1` backend) and request
//! encoding. No I/O here; callers feed bytes and get back how many were consumed.
//!
//! Invariants:
//! - Never panics and never allocates on a message: all input is bounded (head ≤
//!   [`MAX_HEAD`] bytes, chunk-size lines ≤ [`MAX_CHUNK_LINE`], bodies ≤ the reader's limit)
//!   and every malformed input is a [`ParseError`].
//! - Body bytes are counted, not kept: the caller may discard consumed bytes at once.
//! - Framing follows RFC 9112 §6.3: `Transfer-Encoding: chunked` wins over
//!   `Content-Length` (and then the connection is not reused); differing repeated
//!   `Content-Length`s are an error; 1xx, 204 and 304 responses have no body; a response
//!   with neither header runs to connection close; a request with neither has no body.

use std::fmt::Write as _;

/// Largest accepted head (start line + headers + blank line). 16 KiB: larger than any
/// response our backends or common servers send, small enough to bound per-connection memory.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest accepted chunk-size line (size, extensions, CRLF).
pub const MAX_CHUNK_LINE: usize = 1024;

/// Why a message could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed start line")]
    BadStartLine,
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("malformed header line")]
    BadHeader,
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,
    #[error("unsupported Transfer-Encoding")]
    BadTransferEncoding,
    #[error("malformed chunk")]
    BadChunk,
    #[error("body exceeds the {0}-byte limit")]
    BodyTooLarge(u64),
    #[error("connection closed before the message was complete")]
    UnexpectedEof,
}

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// What the start line and headers said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Response status (0 for requests).
    pub status: u16,
    /// Request method was GET/HEAD/DELETE… (true) — informational for servers.
    pub is_request: bool,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    /// Body framing.
    pub framing: Framing,
    /// The connection must not be reused after this message.
    pub close: bool,
}

/// A completed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// Response status (0 for requests).
    pub status: u16,
    /// Body bytes (after de-chunking).
    pub body_len: u64,
    /// Wire bytes of the whole message.
    pub wire_len: u64,
    /// The connection must be closed after this message.
    pub close: bool,
}

/// Result of feeding bytes to a [`MessageReader`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The message is not complete; read more and feed the unconsumed bytes again.
    NeedMore,
    /// The message is complete.
    Done(Message),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Body { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailers { seen: usize },
    UntilClose,
}

/// Incremental reader of one HTTP/1.1 message at a time; reusable across messages.
#[derive(Clone, Debug)]
pub struct MessageReader {
    request: bool,
    max_body: u64,
    state: State,
    head: Option<Head>,
    body_len: u64,
    wire_len: u64,
}

impl MessageReader {
    /// A reader of responses with bodies up to `max_body` bytes.
    pub fn response(max_body: u64) -> MessageReader {
        Self::new(false, max_body)
    }

    /// A reader of requests with bodies up to `max_body` bytes.
    pub fn request(max_body: u64) -> MessageReader {
        Self::new(true, max_body)
    }

    fn new(request: bool, max_body: u64) -> MessageReader {
        MessageReader {
            request,
            max_body,
            state: State::Head,
            head: None,
            body_len: 0,
            wire_len: 0,
        }
    }

    /// The head of the message being read, once parsed.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// True when no byte of the current message has been consumed.
    pub fn is_idle(&self) -> bool {
        self.state == State::Head && self.wire_len == 0
    }

    /// Consumes a prefix of `buf`; returns the bytes consumed and whether the message is
    /// complete. Unconsumed bytes must be fed again, followed by more input.
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, Step), ParseError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                State::Head => {
                    let Some(head) = parse_head(rest, self.request)? else {
                        if rest.len() >= MAX_HEAD {
                            return Err(ParseError::HeadTooLarge);
                        }
                        return Ok((pos, Step::NeedMore));
                    };
                    pos += head.len;
                    self.wire_len += head.len as u64;
                    self.state = match head.framing {
                        Framing::Length(n) => {
                            if n > self.max_body {
                                return Err(ParseError::BodyTooLarge(self.max_body));
                            }
                            State::Body { remaining: n }
                        }
                        Framing::Chunked => State::ChunkSize,
                        Framing::UntilClose => State::UntilClose,
                    };
                    self.head = Some(head);
                }
                State::Body { remaining } => {
                    let take = remaining.min(rest.len() as u64);
                    pos += take as usize;
                    self.count_body(take)?;
                    if take < remaining {
                        self.state = State::Body {
                            remaining: remaining - take,
                        };
                        return Ok((pos, Step::NeedMore));
                    }
                    return Ok((pos, Step::Done(self.finish())));
                }
                State::ChunkSize => {
                    let Some(line_end) = find_crlf(rest, MAX_CHUNK_LINE)? else {
                        return Ok((pos, Step::NeedMore));
                    };
                    let size = parse_chunk_size(&rest[..line_end])?;
                    if size > self.max_body - self.body_len {
                        return Err(ParseError::BodyTooLarge(self.max_body));
                    }
                    pos += line_end + 2;
                    self.wire_len += line_end as u64 + 2;
                    self.state = if size == 0 {
                        State::Trailers { seen: 0 }
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::ChunkData { remaining } => {
                    let take = remaining.min(rest.len() as u64);
                    pos += take as usize;
                    self.count_body(take)?;
                    if take < remaining {
                        self.state = State::ChunkData {
                            remaining: remaining - take,
                        };
                        return Ok((pos, Step::NeedMore));
                    }
                    self.state = State::ChunkDataEnd;
                }
                State::ChunkDataEnd => {
                    if rest.len() < 2 {
                        return Ok((pos, Step::NeedMore));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ParseError::BadChunk);
                    }
                    pos += 2;
                    self.wire_len += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers { seen } => {
                    let Some(line_end) = find_crlf(rest, MAX_HEAD - seen)? else {
                        return Ok((pos, Step::NeedMore));
                    };
                    pos += line_end + 2;
                    self.wire_len += line_end as u64 + 2;
                    if line_end == 0 {
                        return Ok((pos, Step::Done(self.finish())));
                    }
                    self.state = State::Trailers {
                        seen: seen + line_end + 2,
                    };
                }
                State::UntilClose => {
                    let take = rest.len() as u64;
                    pos += rest.len();
                    self.count_body(take)?;
                    return Ok((pos, Step::NeedMore));
                }
            }
        }
    }

    /// The peer closed the connection: completes a read-to-close body, otherwise the message
    /// was cut short (or, when idle, there was no message at all).
    pub fn on_eof(&mut self) -> Result<Message, ParseError> {
        match self.state {
            State::UntilClose => Ok(self.finish()),
            _ => Err(ParseError::UnexpectedEof),
        }
    }

    fn count_body(&mut self, n: u64) -> Result<(), ParseError> {
        self.body_len += n;
        self.wire_len += n;
        if self.body_len > self.max_body {
            return Err(ParseError::BodyTooLarge(self.max_body));
        }
        Ok(())
    }

    fn finish(&mut self) -> Message {
        let head = self
            .head
            .take()
            .expect("a message finishes only after its head");
        let m = Message {
            status: head.status,
            body_len: self.body_len,
            wire_len: self.wire_len,
            close: head.close || head.framing == Framing::UntilClose,
        };
        self.state = State::Head;
        self.body_len = 0;
        self.wire_len = 0;
        m
    }
}

/// Position of the first CRLF in `buf` within `limit` bytes; `None` if more input is needed.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, ParseError> {
    let scan = &buf[..buf.len().min(limit)];
    match scan.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(i)),
        None if buf.len() >= limit => Err(ParseError::BadChunk),
        None => Ok(None),
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let digits = line.split(|&b| b == b';').next().unwrap_or(&[]);
    let digits = trim_ows(digits);
    if digits.is_empty() || digits.len() > 15 {
        return Err(ParseError::BadChunk);
    }
    let mut n: u64 = 0;
    for &b in digits {
        let d = (b as char).to_digit(16).ok_or(ParseError::BadChunk)?;
        n = n * 16 + u64::from(d);
    }
    Ok(n)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses a complete head at the start of `buf`, or returns `None` if the blank line has not
/// arrived yet (the caller enforces [`MAX_HEAD`]).
pub fn parse_head(buf: &[u8], request: bool) -> Result<Option<Head>, ParseError> {
    let limit = buf.len().min(MAX_HEAD);
    let Some(end) = buf[..limit].windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head_len = end + 4;
    let mut lines = buf[..end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = lines.next().ok_or(ParseError::BadStartLine)?;
    let (status, http10) = if request {
        (0, parse_request_line(start)?)
    } else {
        parse_status_line(start)?
    };

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = http10;
    for line in lines {
        if line.contains(&b'\r') {
            return Err(ParseError::BadHeader);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(ParseError::BadHeader)?;
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|b| !is_tchar(*b)) {
            return Err(ParseError::BadHeader);
        }
        let value = trim_ows(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(ParseError::BadContentLength)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(ParseError::BadContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value
                .rsplit(|&b| b == b',')
                .next()
                .map(trim_ows)
                .unwrap_or(&[]);
            if !last.eq_ignore_ascii_case(b"chunked") {
                return Err(ParseError::BadTransferEncoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim_ows) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    let no_body = !request && (status < 200 || status == 204 || status == 304);
    let framing = if no_body {
        Framing::Length(0)
    } else if chunked {
        // RFC 9112 §6.3 item 3: with both headers, chunked wins and the connection is closed.
        if content_length.is_some() {
            close = true;
        }
        Framing::Chunked
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else if request {
        Framing::Length(0)
    } else {
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        is_request: request,
        len: head_len,
        framing,
        close,
    }))
}

/// `HTTP/1.x SP 3DIGIT [SP reason]`; returns the status and whether it is HTTP/1.0.
fn parse_status_line(line: &[u8]) -> Result<(u16, bool), ParseError> {
    let http10 = parse_version(line.get(..8).ok_or(ParseError::BadStartLine)?)?;
    let rest = &line[8..];
    if rest.len() < 4 || rest[0] != b' ' || (rest.len() > 4 && rest[4] != b' ') {
        return Err(ParseError::BadStartLine);
    }
    let code = &rest[1..4];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadStartLine);
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(100..=999).contains(&status) {
        return Err(ParseError::BadStartLine);
    }
    Ok((status, http10))
}

/// `method SP target SP HTTP/1.x`; returns whether it is HTTP/1.0.
fn parse_request_line(line: &[u8]) -> Result<bool, ParseError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine);
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) || target.is_empty() {
        return Err(ParseError::BadStartLine);
    }
    parse_version(version)
}

fn parse_version(v: &[u8]) -> Result<bool, ParseError> {
    match v {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        _ if v.starts_with(b"HTTP/") => Err(ParseError::BadVersion),
        _ => Err(ParseError::BadStartLine),
    }
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// HTTP method of generated requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// Encodes one request into `out` (cleared first). The body is `body_len` bytes of a
/// repeating pattern; with `Get` and `body_len == 0` no Content-Length is sent. The result is
/// built once per connection and re-sent unchanged for every request.
pub fn encode_request(out: &mut Vec<u8>, method: Method, host: &str, path: &str, body_len: usize) {
    out.clear();
    let mut head = String::with_capacity(128);
    let m = match method {
        Method::Get => "GET",
        Method::Post => "POST",
    };
    // Writing to a String cannot fail.
    let _ = write!(
        head,
        "{m} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringmesh-loadgen\r\n"
    );
    if body_len > 0 || method == Method::Post {
        let _ = write!(head, "Content-Length: {body_len}\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    out.extend(pattern(body_len));
}

/// Encodes a response with a `body_len`-byte body and the given status into `out`.
pub fn encode_response(out: &mut Vec<u8>, status: u16, body_len: usize, close: bool) {
    out.clear();
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut head = String::with_capacity(96);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {body_len}\r\n"
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    out.extend(pattern(body_len));
}

/// The payload pattern used for bodies and TCP messages: bytes `a..z` repeating, so a
/// corrupted or shifted echo is detectable.
pub fn pattern(len: usize) -> impl Iterator<Item = u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8)
}

#[cfg(test)]
mod tests;
