//! The readiness-driven UDP socket on both drivers: a datagram each way between a bound
//! socket and a connected one, the sender's address reported, and no loss when the receive
//! waits first (the readiness path, not only the first try).

use std::net::SocketAddr;

use runtime::DriverChoice;
use runtime::net::{Placement, UdpSocket};

fn round_trip(driver: DriverChoice) {
    runtime::block_on(driver, async {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = UdpSocket::bind_placed(&Placement::default(), any).unwrap();
        let addr = server.local_addr().unwrap();
        let client = UdpSocket::connect_placed(&Placement::default(), addr).unwrap();
        let serve = async {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).await.unwrap();
            server.send_to(&buf[..n], from).await.unwrap();
            from
        };
        let ask = async {
            // Let the server park on readiness before anything arrives.
            runtime::time::sleep(std::time::Duration::from_millis(20)).await;
            client.send(b"ping").await.unwrap();
            let mut buf = [0u8; 64];
            let n = client.recv(&mut buf).await.unwrap();
            buf[..n].to_vec()
        };
        let (from, back) = futures_util::future::join(serve, ask).await;
        assert_eq!(back, b"ping");
        assert_eq!(from, client.local_addr().unwrap());
    })
    .unwrap();
}

#[test]
fn datagrams_round_trip_on_io_uring() {
    round_trip(DriverChoice::IoUring);
}

#[test]
fn datagrams_round_trip_on_epoll() {
    round_trip(DriverChoice::Epoll);
}
