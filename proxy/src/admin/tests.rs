//! The admin server's request parsing and endpoints.
use super::*;

#[test]
fn parses_request_line_and_query() {
    let r = parse_head(b"POST /logging?level=info%2Cproxy%3Ddebug HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/logging");
    let q = r.query.unwrap();
    assert_eq!(
        query_param(&q, "level").unwrap().as_deref(),
        Some("info,proxy=debug")
    );
    assert_eq!(
        query_param("a=1&level=x=y", "level").unwrap().as_deref(),
        Some("x=y")
    );
    assert_eq!(query_param("a=1", "level").unwrap(), None);
    assert!(query_param("level=%zz", "level").is_err());
    assert!(query_param("level=%4", "level").is_err());
    assert!(query_param("level=%ff", "level").is_err());
}

#[test]
fn rejects_malformed_heads() {
    let bad: &[&[u8]] = &[
        b"",
        b"GET\r\n\r\n",
        b"GET /  HTTP/1.1\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / FTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\n\r\n",
    ];
    for head in bad {
        assert!(
            matches!(parse_head(head), Err(HeadError::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
    assert_eq!(
        parse_head(b"GET / HTTP/2.0\r\n\r\n"),
        Err(HeadError::Version)
    );
    assert!(parse_head(b"GET /metrics HTTP/1.0\n\n").is_ok());
}

#[test]
fn finds_head_end() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\r\nbody"), Some(17));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
}

#[test]
fn logging_levels_follow_ztunnel_and_accept_istioctls_forms() {
    assert_eq!(level_directives("debug").unwrap(), "debug");
    assert_eq!(level_directives("warning").unwrap(), "warn");
    assert_eq!(level_directives("critical").unwrap(), "error");
    assert_eq!(
        level_directives("access=debug,hbone::server:trace").unwrap(),
        "access=debug,hbone::server=trace"
    );
    assert_eq!(level_directives("").unwrap(), "");
    assert!(level_directives("loud").unwrap_err().contains("loud"));
    assert!(level_directives("access=loud").is_err());
    assert!(level_directives("=debug").is_err());
}

#[test]
fn wake_addr_maps_unspecified_to_loopback() {
    let a: SocketAddr = "0.0.0.0:99".parse().unwrap();
    assert_eq!(wake_addr(a), "127.0.0.1:99".parse().unwrap());
    let b: SocketAddr = "[::]:99".parse().unwrap();
    assert_eq!(wake_addr(b), "[::1]:99".parse().unwrap());
}
