//! On io_uring a read that comes back short parks the socket on readiness (the next read
//! waits for the kernel instead of trying a `recv` that would fail with EAGAIN); what
//! arrives later, and the end of stream, still wake it; a read that fills its buffer does
//! not park. On epoll a short read does not park (the wait costs more than the `recv`),
//! and the same traffic flows.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use runtime::DriverChoice;
use runtime::net::{TcpListener, TcpStream};

/// Whether `s` would try a read now (`true`) or waits for readiness (`false`).
async fn readable_now(s: &TcpStream) -> bool {
    poll_fn(|cx| Poll::Ready(s.poll_readable(cx).is_ready())).await
}

fn short_reads(driver: DriverChoice, parks: bool) {
    runtime::block_on(driver, async {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener = TcpListener::bind(any).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();

        // A buffer the data fills: no park, the rest is read at once.
        client.write_all(b"0123456789").await.unwrap();
        runtime::time::sleep(Duration::from_millis(20)).await;
        let mut five = [0u8; 5];
        assert_eq!(server.read(&mut five).await.unwrap(), 5);
        assert!(readable_now(&server).await, "a full read does not park");
        assert_eq!(server.read(&mut five).await.unwrap(), 5);
        assert_eq!(&five, b"56789");

        // A short read parks; a later write wakes the reader.
        client.write_all(b"hello").await.unwrap();
        runtime::time::sleep(Duration::from_millis(20)).await;
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), 5);
        assert_eq!(
            !readable_now(&server).await,
            parks,
            "a short read parks: {parks}"
        );
        let late = async {
            runtime::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b" world").await.unwrap();
        };
        let (n, ()) = futures_util::future::join(server.read(&mut buf), late).await;
        assert_eq!(&buf[..n.unwrap()], b" world");

        // The end of stream after a short read wakes it too.
        assert_eq!(!readable_now(&server).await, parks);
        client.shutdown_write().unwrap();
        let n = runtime::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("the end of stream wakes the parked reader")
            .unwrap();
        assert_eq!(n, 0);
    })
    .unwrap();
}

#[test]
fn short_reads_park_on_io_uring() {
    short_reads(DriverChoice::IoUring, true);
}

#[test]
fn short_reads_do_not_park_on_epoll() {
    short_reads(DriverChoice::Epoll, false);
}
