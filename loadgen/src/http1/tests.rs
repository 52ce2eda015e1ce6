use super::*;
use rand::{Rng, SeedableRng, rngs::SmallRng};

fn read_all(
    reader: &mut MessageReader,
    input: &[u8],
    splits: &[usize],
) -> Result<Vec<Message>, ParseError> {
    // Feed `input` in pieces cut at `splits`, keeping unconsumed bytes like a client buffer.
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut cuts: Vec<usize> = splits
        .iter()
        .copied()
        .filter(|&c| c < input.len())
        .collect();
    cuts.sort_unstable();
    cuts.push(input.len());
    let mut prev = 0;
    for cut in cuts {
        buf.extend_from_slice(&input[prev..cut]);
        prev = cut;
        loop {
            let (n, step) = reader.advance(&buf)?;
            buf.drain(..n);
            match step {
                Step::Done(m) => out.push(m),
                Step::NeedMore => break,
            }
        }
    }
    Ok(out)
}

#[test]
fn content_length_response() {
    let mut r = MessageReader::response(1 << 20);
    let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello";
    let m = read_all(&mut r, input, &[]).unwrap();
    assert_eq!(
        m,
        vec![Message {
            status: 200,
            body_len: 5,
            wire_len: input.len() as u64,
            close: false
        }]
    );
}

#[test]
fn chunked_with_extensions_and_trailers() {
    let input = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
    let mut r = MessageReader::response(1 << 20);
    let m = read_all(&mut r, input, &[]).unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].status, 201);
    assert_eq!(m[0].body_len, 9);
    assert_eq!(m[0].wire_len, input.len() as u64);
}

#[test]
fn every_split_gives_the_same_messages() {
    let mut input = Vec::new();
    input.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
    input.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n");
    input.extend_from_slice(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
    let whole = read_all(&mut MessageReader::response(100), &input, &[]).unwrap();
    assert_eq!(
        whole.iter().map(|m| m.status).collect::<Vec<_>>(),
        [200, 500, 204]
    );
    assert_eq!(
        whole.iter().map(|m| m.body_len).collect::<Vec<_>>(),
        [3, 3, 0]
    );
    for a in 0..input.len() {
        for b in [a + 1, a + 7, a + 40] {
            let got = read_all(&mut MessageReader::response(100), &input, &[a, b]).unwrap();
            assert_eq!(got, whole, "split at {a},{b}");
        }
    }
}

#[test]
fn read_to_close_and_eof() {
    let mut r = MessageReader::response(100);
    let (n, step) = r.advance(b"HTTP/1.0 200 OK\r\n\r\nbody").unwrap();
    assert_eq!((n, step), (23, Step::NeedMore));
    let m = r.on_eof().unwrap();
    assert_eq!((m.body_len, m.close), (4, true));

    let mut r = MessageReader::response(100);
    r.advance(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    assert_eq!(r.on_eof(), Err(ParseError::UnexpectedEof));
}

#[test]
fn connection_close_and_http10_keepalive() {
    let head = parse_head(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(head.close);
    let head = parse_head(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(!head.close);
    let head = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
        .unwrap()
        .unwrap();
    assert!(head.close);
}

#[test]
fn malformed_inputs_are_errors() {
    let cases: &[(&[u8], ParseError)] = &[
        (b"HTTP/1.1 2000 OK\r\n\r\n", ParseError::BadStartLine),
        (b"HTTP/2.0 200 OK\r\n\r\n", ParseError::BadVersion),
        (b"SMTP ready\r\n\r\n", ParseError::BadStartLine),
        (
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            ParseError::BadHeader,
        ),
        (
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            ParseError::BadHeader,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            ParseError::BadContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            ParseError::BadContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            ParseError::BadTransferEncoding,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            ParseError::BadChunk,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
            ParseError::BadChunk,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            ParseError::BodyTooLarge(100),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFF\r\n",
            ParseError::BodyTooLarge(100),
        ),
    ];
    for (input, want) in cases {
        let mut r = MessageReader::response(100);
        let got = read_all(&mut r, input, &[]);
        let got = match got {
            // A chunk too large is only detected once its bytes arrive.
            Ok(_) if *want == ParseError::BodyTooLarge(100) => r.advance(&[b'x'; 200]).map(|_| ()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        assert_eq!(got, Err(want.clone()), "{}", String::from_utf8_lossy(input));
    }
}

#[test]
fn oversized_head_is_rejected() {
    let mut input = b"HTTP/1.1 200 OK\r\n".to_vec();
    while input.len() < MAX_HEAD + 10 {
        input.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let mut r = MessageReader::response(100);
    assert_eq!(r.advance(&input), Err(ParseError::HeadTooLarge));
}

#[test]
fn requests_parse_and_roundtrip_with_encoder() {
    let mut out = Vec::new();
    encode_request(&mut out, Method::Post, "127.0.0.1:80", "/x", 300);
    let mut r = MessageReader::request(1 << 20);
    let m = read_all(&mut r, &out, &[17]).unwrap();
    assert_eq!(
        m,
        vec![Message {
            status: 0,
            body_len: 300,
            wire_len: out.len() as u64,
            close: false
        }]
    );

    encode_request(&mut out, Method::Get, "h", "/", 0);
    assert!(!out.windows(14).any(|w| w == b"Content-Length"));
    let m = read_all(&mut MessageReader::request(0), &out, &[]).unwrap();
    assert_eq!(m[0].body_len, 0);

    encode_response(&mut out, 500, 42, true);
    let m = read_all(&mut MessageReader::response(100), &out, &[]).unwrap();
    assert_eq!((m[0].status, m[0].body_len, m[0].close), (500, 42, true));
}

/// A cheap stand-in for a fuzzer (run under `cargo test`): random and mutated inputs, fed in
/// random pieces, never panic and never consume more than they were given.
#[test]
fn random_and_mutated_inputs_never_panic() {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let seeds: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    ];
    for i in 0..20_000 {
        let mut input: Vec<u8> = if i % 4 == 0 {
            (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect()
        } else {
            seeds[i % 3].to_vec()
        };
        for _ in 0..rng.random_range(0..4) {
            if input.is_empty() {
                break;
            }
            let at = rng.random_range(0..input.len());
            match rng.random_range(0..3) {
                0 => input[at] = rng.random(),
                1 => {
                    input.remove(at);
                }
                _ => input.insert(at, *b"\r\n:0 ;".get(rng.random_range(0..6)).unwrap()),
            }
        }
        let mut r = if i % 2 == 0 {
            MessageReader::response(64)
        } else {
            MessageReader::request(64)
        };
        let mut buf = Vec::new();
        for chunk in input.chunks(rng.random_range(1..16)) {
            buf.extend_from_slice(chunk);
            match r.advance(&buf) {
                Ok((n, _)) => {
                    assert!(n <= buf.len());
                    buf.drain(..n);
                }
                Err(_) => break,
            }
        }
        let _ = r.on_eof();
    }
}
